"""Data quality of each pipeline in ShapesWorld, where the truth is known, per CPU kernel path.

    python benchmarks/quality.py [--records N] [--work DIR] [--paths default,avx2,native] [--backend vllm]

Runs ``dpo-engine demo`` (which trains the ShapesWorld models once per work dir) for each
pipeline under each of torch's CPU kernel paths (``ATEN_CPU_CAPABILITY``; ``native`` leaves it
unset, so the machine's best path runs) and prints each quality report. Training follows
slightly different floating-point paths on each, so the trained models, and the datasets,
differ between paths; the quality figures are what must hold on all of them. The last stdout
line is a JSON object keyed by path, then pipeline: pair_accuracy, tie_share, chosen/rejected
hallucination rates, random_baseline, pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("dpo_reward", "divide_and_conquer")


def run_demo(work: Path, pipeline: str, records: int, path: str, backend: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if path != "native":
        env["ATEN_CPU_CAPABILITY"] = path
    proc = subprocess.run([sys.executable, "-m", "dpo_engine", "demo", str(work), "--pipeline", pipeline,
                           "--records", str(records), "--backend", backend, "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{pipeline} demo on the {path} path failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["quality"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=60, help="ShapesWorld records per pipeline (60: the README's demo)")
    parser.add_argument("--work", type=Path, help="keep models and runs here (default: a temp dir)")
    parser.add_argument("--paths", default="native", help="comma-separated kernel paths: default, avx2, "
                        "avx512, native (the machine's own)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--backend", default="hf", help="hf or vllm (vllm: in the vllm extra's environment)")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dpo-quality-") as tmp:
        root = args.work or Path(tmp)
        for path in args.paths.split(","):
            for pipeline in args.pipelines.split(","):
                work = root / path / pipeline
                trained = root / path / PIPELINES[0] / "models" / "instruct"
                if trained.is_dir() and not (work / "models" / "instruct").exists():
                    shutil.copytree(trained, work / "models" / "instruct")  # one instruct model per path
                q = run_demo(work, pipeline, args.records, path, args.backend)
                results.setdefault(path, {})[pipeline] = q
                print(f"{path:8} {pipeline}: pair accuracy {q['pair_accuracy']:.3f} (random "
                      f"{q['random_baseline']:.3f}), ties {q['tie_share']:.3f}, chosen hallucinating "
                      f"{q['chosen_hallucination_rate']:.3f}, rejected hallucinating "
                      f"{q['rejected_hallucination_rate']:.3f}, {q['pairs']} pairs", file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
