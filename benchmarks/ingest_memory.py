"""Peak memory of reading a dataset, by how the parquet file was written (issue 17, item 3).

    python benchmarks/ingest_memory.py [--rows 2000] [--work DIR]

Writes the same rows (a question and a ~100 KB PNG of noise each) as one row group and in row
groups of 64, and runs ``dpo-engine validate`` (which reads every row as a run's ingest does) on
each in a process of its own. Prints each peak RSS; the last line is a JSON object with
``ingest_rss_rowgroup_ratio`` (one row group over groups of 64; the issue's target is <= 1.2),
``ingest_rss_rowgroup_ratio_big_pages`` and each peak in MB.

Pages, not row groups, bound what a reader must hold: a parquet page is read, decompressed and
decoded whole. pyarrow's writer closes a page (and checks its dictionary's 1 MB limit) only
after each batch of ``write_batch_size`` values, 1,024 by default, so a column of 100 KB images
written with the defaults from one array gets pages, and a dictionary page, of about 100 MB.
The main files are written with 8 values per batch (pages near parquet's 1 MB); the
``big_pages`` figure reads the same rows written with pyarrow's defaults as one row group, and
no batch size on the reading side makes it smaller.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def write(path: Path, rows: int, group: int, page_values: int) -> None:
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
    pq.write_table(table.combine_chunks(), path, row_group_size=group, write_batch_size=page_values)


def peak_mb(path: Path) -> float:
    # VmHWM, not ru_maxrss: the latter carries the parent's peak over exec.
    code = ("import sys; from dpo_engine.cli import main; sys.argv = ['dpo-engine', 'validate', "
            f"{str(path)!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(int(hwm.split()[1]) / 1024, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stderr.strip().splitlines()[-1])


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpo-ingest-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        figures = {}
        for name, group, page_values in (("one_group", args.rows, 8), ("groups_of_64", 64, 8),
                                         ("one_group_big_pages", args.rows, 1024)):
            path = root / f"{name}.parquet"
            if not path.exists():
                write(path, args.rows, group, page_values)
            figures[name] = peak_mb(path)
            print(f"{name}: peak RSS {figures[name]:.0f} MB ({path.stat().st_size / 1e6:.0f} MB file)",
                  file=sys.stderr, flush=True)
    out = {f"ingest_rss_{name}_mb": round(mb, 1) for name, mb in figures.items()}
    out["ingest_rss_rowgroup_ratio"] = round(figures["one_group"] / figures["groups_of_64"], 3)
    out["ingest_rss_rowgroup_ratio_big_pages"] = round(figures["one_group_big_pages"] / figures["groups_of_64"], 3)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
