"""Peak memory of reading a dataset, by how the parquet file was written (issue 17, item 3).

    python benchmarks/ingest_memory.py [--rows 2000] [--work DIR]

Writes the same rows (a question and a ~100 KB PNG of noise each) twice, as one row group and
in row groups of 64, and runs ``dpo-engine validate`` (which reads every row as a run's ingest
does) on each in a process of its own. Prints each peak RSS and, as the last line, a JSON object
with ``ingest_rss_one_group_mb``, ``ingest_rss_groups_of_64_mb`` and ``ingest_rss_rowgroup_ratio``
(one row group over groups of 64; the issue's target is <= 1.2).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def write(path: Path, rows: int, group: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(rows):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (180, 180, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    table = pa.table({"idx": [f"r{i}" for i in range(rows)], "question": ["Describe the image."] * rows,
                      "image": images})
    pq.write_table(table, path, row_group_size=group)


def peak_mb(path: Path) -> float:
    # VmHWM, not ru_maxrss: the latter carries the parent's peak over exec.
    code = ("import sys; from dpo_engine.cli import main; sys.argv = ['dpo-engine', 'validate', "
            f"{str(path)!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(int(hwm.split()[1]) / 1024, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpo-ingest-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        figures = {}
        for name, group in (("one_group", args.rows), ("groups_of_64", 64)):
            path = root / f"{name}.parquet"
            if not path.exists():
                write(path, args.rows, group)
            figures[name] = peak_mb(path)
            print(f"{name}: peak RSS {figures[name]:.0f} MB ({path.stat().st_size / 1e6:.0f} MB file)",
                  file=sys.stderr, flush=True)
    print(json.dumps({"ingest_rss_one_group_mb": round(figures["one_group"], 1),
                      "ingest_rss_groups_of_64_mb": round(figures["groups_of_64"], 1),
                      "ingest_rss_rowgroup_ratio": round(figures["one_group"] / figures["groups_of_64"], 3)}))


if __name__ == "__main__":
    main()
