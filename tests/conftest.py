"""Shared fixtures: tiny real checkpoints and small real datasets, built once per session."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["COLUMNS"] = "200"  # the CLI's consoles, in this process and in subprocesses
# The suite runs on pytest-xdist workers (pyproject: -n auto). Each worker, and every process it
# starts, gets an equal share of the cores: torch processes that each take every core thrash
# (two such on two cores ran about 4x slower than one).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

from dpo_engine.demo import world as shapesworld  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from dpo_engine.models.tiny import build_tiny_llava

    root = tmp_path_factory.mktemp("models")
    instruct = build_tiny_llava(root / "instruct", seed=0)
    reward = build_tiny_llava(root / "reward", seed=1, base=instruct, noise=0.05)
    return {"instruct": instruct, "reward": reward}


@pytest.fixture(scope="session")
def demo_parquet(tmp_path_factory) -> Path:
    return shapesworld.write_dataset(tmp_path_factory.mktemp("data") / "demo.parquet", n=12)


def shapes_rows(n: int, seed: int = 0, prefix: str = "r") -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        data = shapesworld.render(shapesworld.random_scene(rng), rng)
        rows.append({"idx": f"{prefix}{i}", "question": "Describe the image.",
                     "image": {"bytes": data, "path": f"{prefix}{i}.png"}, "ds_name": "t"})
    return rows


# CI sets this so that the ShapesWorld models train once for both suites (the main one and the
# vllm one, which runs after it): a demo's work dir starts with the models found there, and
# what it trains is left there. Unset, every demo test trains its own.
DEMO_MODELS = os.environ.get("DPO_ENGINE_TEST_DEMO_MODELS")


def reuse_demo_models(work: Path) -> None:
    """Put the shared ShapesWorld models (if any) into ``work/models``; the demo keeps a role
    that is already there and trains the others."""
    if DEMO_MODELS and Path(DEMO_MODELS).is_dir():
        for role in Path(DEMO_MODELS).iterdir():
            if not (work / "models" / role.name).exists():
                shutil.copytree(role, work / "models" / role.name)


def share_demo_models(work: Path) -> None:
    """Leave the models a demo trained in ``work/models`` for the demos that come after."""
    if not DEMO_MODELS:
        return
    for role in (work / "models").iterdir():
        target = Path(DEMO_MODELS) / role.name
        if not target.exists():
            staging = Path(DEMO_MODELS) / f".{role.name}.{os.getpid()}"
            shutil.copytree(role, staging)
            staging.rename(target)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def cli(*args: str, check: bool = True, env: dict | None = None, process: bool = False,
        **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point (``dpo_engine.cli.main``) on ``args``.

    In this process by default: the same code, without a fresh interpreter's imports (torch and
    transformers take about 10 s on the 2-core build machine, most of a small run). In a
    subprocess of its own when ``process`` is set or ``env`` (variables to set) or other
    ``subprocess.run`` arguments are given."""
    argv = [str(a) for a in args]
    if process or env or kw:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "dpo_engine", *argv], capture_output=True,
                              text=True, env=env, cwd=kw.pop("cwd", REPO), **kw)
    else:
        proc = _in_process(argv)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _in_process(argv: list[str]) -> subprocess.CompletedProcess:
    import contextlib
    import io

    from dpo_engine.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_argv, sys.argv = sys.argv, ["dpo-engine", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = saved_argv
    return subprocess.CompletedProcess(["dpo-engine", *argv], code, out.getvalue(), err.getvalue())


def run_args(models: dict, dataset: Path, work: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", str(dataset), "--instruct-model", str(models["instruct"]),
            "--reward-model", str(models["reward"]), "--work-dir", str(work), "--sample-k", "4",
            "--max-new-tokens", "24", *extra]


@pytest.fixture
def copy_models(tiny_models, tmp_path):
    def make(role: str) -> Path:
        dst = tmp_path / f"copy-{role}"
        shutil.copytree(tiny_models[role], dst)
        return dst

    return make


@pytest.fixture(scope="session")
def world_models(tmp_path_factory) -> dict[str, Path]:
    """Briefly trained ShapesWorld models for the divide_and_conquer roles: their answers and
    facts are often wrong, but the text models already write ``- `` lists. Trained once for
    the whole run: the first xdist worker that needs them trains, the others wait and reuse."""
    from filelock import FileLock

    from dpo_engine.demo.trainers import train_instruct, train_labeler, train_text_roles

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder every worker's own temp folder is in
    root = shared / "world-models"
    paths = {role: root / role for role in ("instruct", "labeler", "split", "question")}
    with FileLock(str(shared / "world-models.lock")):
        if not (root / "done").exists():
            quiet = lambda line: None  # noqa: E731
            train_instruct(paths["instruct"], seed=0, log=quiet, steps=80, pool=200, pretrain_steps=60)
            train_labeler(paths["instruct"], paths["labeler"], seed=0, log=quiet, steps=20, pool=64,
                          extra_steps=0)
            train_text_roles(paths["split"], paths["question"], seed=0, log=quiet, steps=200)
            (root / "done").touch()
    return paths


def dnc_args(models: dict, dataset: Path, work: Path, *extra: str) -> list[str]:
    return ["run", "--pipeline", "divide_and_conquer", "--dataset", str(dataset),
            "--instruct-model", str(models["instruct"]), "--labeler-model", str(models["labeler"]),
            "--split-model", str(models["split"]), "--question-model", str(models["question"]),
            "--work-dir", str(work), "--sample-k", "4", "--max-new-tokens", "24", *extra]


def pytest_collection_modifyitems(config, items):
    """pytest-xdist (``--dist loadfile``) hands out whole test modules in this order: the long
    ShapesWorld demo modules (marked ``demo``) go first, so that they start at once, each on a
    worker of its own, and the short modules fill the time beside them."""
    items.sort(key=lambda item: item.get_closest_marker("demo") is None)
