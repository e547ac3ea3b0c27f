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


def cli(*args: str, check: bool = True, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (``env``: variables to set for it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "dpo_engine", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=kw.pop("cwd", REPO), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


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
    facts are often wrong, but the text models already write ``- `` lists."""
    from dpo_engine.demo.trainers import train_instruct, train_labeler, train_text_roles

    root = tmp_path_factory.mktemp("world")
    quiet = lambda line: None  # noqa: E731
    instruct = train_instruct(root / "instruct", seed=0, log=quiet, steps=80, pool=200, pretrain_steps=60)
    labeler = train_labeler(instruct, root / "labeler", seed=0, log=quiet, steps=20, pool=64)
    split, question = train_text_roles(root / "split", root / "question", seed=0, log=quiet, steps=200)
    return {"instruct": instruct, "labeler": labeler, "split": split, "question": question}


def dnc_args(models: dict, dataset: Path, work: Path, *extra: str) -> list[str]:
    return ["run", "--pipeline", "divide_and_conquer", "--dataset", str(dataset),
            "--instruct-model", str(models["instruct"]), "--labeler-model", str(models["labeler"]),
            "--split-model", str(models["split"]), "--question-model", str(models["question"]),
            "--work-dir", str(work), "--sample-k", "4", "--max-new-tokens", "24", *extra]
