"""How fast ``dpo-engine status`` answers on a finished work dir. The last stdout line is JSON.

    python benchmarks/status_start.py [--records N] [--runs R]

A store of N records x 10 samples is filled synthetically and finished (reward, pair and
filter run through the engine); then ``python -m dpo_engine status WORK_DIR`` runs R times in
fresh processes, as a user's shell would start it. Figures, in seconds:

* status_seconds_median / status_seconds_best: wall time of one ``status`` process;
* python_startup_seconds: ``python -c pass`` on the same machine, for scale;
* status_json_seconds_median: the same with ``--json``.

Target: under 0.3 s on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    from run import bench_config, populate

    from dpo_engine import engine

    with tempfile.TemporaryDirectory(prefix="dpo-status-") as tmp:
        work = str(Path(tmp) / "work")
        populate(work, args.records)
        engine.run_stages(bench_config(work))
        status = [sys.executable, "-m", "dpo_engine", "status", work]
        timed(status, 2)  # warm the page cache
        plain = timed(status, args.runs)
        as_json = timed(status + ["--json"], args.runs)
        bare = timed([sys.executable, "-c", "pass"], args.runs)
    figures = {
        "records": args.records,
        "status_seconds_median": round(statistics.median(plain), 3),
        "status_seconds_best": round(min(plain), 3),
        "status_json_seconds_median": round(statistics.median(as_json), 3),
        "python_startup_seconds": round(statistics.median(bare), 3),
    }
    print(f"status on {args.records} finished records: median {figures['status_seconds_median']} s, "
          f"best {figures['status_seconds_best']} s (python alone {figures['python_startup_seconds']} s)",
          file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
