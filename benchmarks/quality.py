"""Data quality of each pipeline in ShapesWorld, where the truth is known, per CPU kernel path.

    python benchmarks/quality.py [--records N] [--work DIR] [--paths default,avx2,native] [--backend vllm]
    python benchmarks/quality.py --iterate 2 [--paths ...]     # the trained rounds (demo --iterate)

Runs ``dpo-engine demo`` (which trains the ShapesWorld models once per work dir) for each
pipeline under each of torch's CPU kernel paths (``ATEN_CPU_CAPABILITY``; ``native`` leaves it
unset, so the machine's best path runs) and prints each quality report. Training follows
slightly different floating-point paths on each, so the trained models, and the datasets,
differ between paths; the quality figures are what must hold on all of them. The last stdout
line is a JSON object keyed by path, then pipeline: pair_accuracy, tie_share, chosen/rejected
hallucination rates, random_baseline, pairs.

With ``--iterate N`` it runs ``dpo-engine demo --iterate N`` instead and checks issue 12's
targets on each path and pipeline: the held-out hallucination rate falls by at least 40 %
(relative) after round 1, is lower still after the last round, and the random-pair control
falls by less than a third as much (after round 1 and after the last round). The JSON holds
each ``iterate.json`` entry with a ``targets`` object of those checks.
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


def demo(work: Path, pipeline: str, path: str, *options: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if path != "native":
        env["ATEN_CPU_CAPABILITY"] = path
    proc = subprocess.run([sys.executable, "-m", "dpo_engine", "demo", str(work), "--pipeline", pipeline, *options,
                           "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{pipeline} demo on the {path} path failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_demo(work: Path, pipeline: str, records: int, path: str, backend: str) -> dict:
    return demo(work, pipeline, path, "--records", str(records), "--backend", backend)["quality"]


def targets(entry: dict) -> dict:
    """Issue 12's targets for one pipeline's iterate.json entry."""
    ours = [r["hallucination_rate"] for r in entry["rounds"]]
    control = [r["hallucination_rate"] for r in entry["control"]]
    fall = [ours[0] - x for x in ours]
    control_fall = [control[0] - x for x in control]
    return {"round1_relative_fall": round(fall[1] / ours[0], 3) if ours[0] else None,
            "round1_fall_at_least_40pct": ours[1] <= 0.6 * ours[0],
            "last_round_lower_still": ours[-1] < ours[1],
            "control_falls_under_a_third_round1": control_fall[1] < fall[1] / 3,
            "control_falls_under_a_third_last": control_fall[-1] < fall[-1] / 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, help="ShapesWorld records per pipeline (default 60, the README's demo; "
                        "with --iterate: per round, default the demo's)")
    parser.add_argument("--work", type=Path, help="keep models and runs here (default: a temp dir)")
    parser.add_argument("--paths", default="native", help="comma-separated kernel paths: default, avx2, "
                        "avx512, native (the machine's own)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--backend", default="hf", help="hf or vllm (vllm: in the vllm extra's environment)")
    parser.add_argument("--iterate", type=int, default=0, help="rounds of demo --iterate to measure instead")
    parser.add_argument("--held-out", type=int, help="--iterate: held-out (and validation) images, default the demo's")
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
                if args.iterate:
                    sizes = [*(["--records", str(args.records)] if args.records else []),
                             *(["--held-out", str(args.held_out)] if args.held_out else [])]
                    entry = demo(work, pipeline, path, "--iterate", str(args.iterate), *sizes)[pipeline]
                    entry["targets"] = targets(entry)
                    results.setdefault(path, {})[pipeline] = entry
                    print(f"{path:8} {pipeline}: held-out hallucination per round "
                          f"{[r['hallucination_rate'] for r in entry['rounds']]}, control "
                          f"{[r['hallucination_rate'] for r in entry['control']]}, {entry['targets']}",
                          file=sys.stderr, flush=True)
                    continue
                q = run_demo(work, pipeline, args.records or 60, path, args.backend)
                results.setdefault(path, {})[pipeline] = q
                print(f"{path:8} {pipeline}: pair accuracy {q['pair_accuracy']:.3f} (random "
                      f"{q['random_baseline']:.3f}), ties {q['tie_share']:.3f}, chosen hallucinating "
                      f"{q['chosen_hallucination_rate']:.3f}, rejected hallucinating "
                      f"{q['rejected_hallucination_rate']:.3f}, {q['pairs']} pairs", file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
