"""Data quality of each pipeline in ShapesWorld, where the truth is known.

    python benchmarks/quality.py [--records N] [--work DIR]

Runs ``dpo-engine demo`` (which trains the ShapesWorld models once per work dir) for each
pipeline and prints its quality report; the last stdout line is a JSON object keyed by
pipeline: pair_accuracy, tie_share, chosen/rejected hallucination rates, random_baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("dpo_reward", "divide_and_conquer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100, help="ShapesWorld records per pipeline")
    parser.add_argument("--work", type=Path, help="keep models and runs here (default: a temp dir)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="dpo-quality-") as tmp:
        root = args.work or Path(tmp)
        for pipeline in PIPELINES:
            work = root / pipeline
            proc = subprocess.run([sys.executable, "-m", "dpo_engine", "demo", str(work), "--pipeline", pipeline,
                                   "--records", str(args.records), "--json"], cwd=REPO, env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{pipeline} demo failed:\n{proc.stderr[-2000:]}")
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            results[pipeline] = summary["quality"]
            q = summary["quality"]
            print(f"{pipeline}: pair accuracy {q['pair_accuracy']:.3f} (random {q['random_baseline']:.3f}), "
                  f"ties {q['tie_share']:.3f}, chosen hallucinating {q['chosen_hallucination_rate']:.3f}, "
                  f"rejected hallucinating {q['rejected_hallucination_rate']:.3f}, {q['pairs']} pairs",
                  file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
