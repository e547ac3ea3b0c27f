"""What the store costs per record, besides the answers, and the run's wall time (issue 13, item 7).

    python benchmarks/store_size.py [--rows 2000] [--copy-images] [--work DIR]

Writes 2,000 rows of a question and a ~100 KB PNG of noise (parquet, row groups of 64; the
same file as benchmarks/ingest_memory.py), runs a full ``dpo_reward`` run on it with a tiny
LLaVA (k=2, 8 new tokens) and measures engine.db page by page (SQLite's ``dbstat``):
``store_bytes_per_record_excl_samples`` counts every page but those of the answers and what is
computed from them (samples, log-probs, rewards, pairs, kept pairs, and their indexes), over
the records. ``--copy-images`` runs with the images copied into the store, as every run did
before images were kept by reference. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ANSWER_TABLES = {"sample", "logprob", "reward", "pair", "kept_pair", "fact", "check_question", "judgment",
                 "score", "note"}


def store_bytes(db: Path) -> tuple[int, int, int]:
    """(all pages' bytes, the answer tables' bytes, records)."""
    with sqlite3.connect(db) as c:
        owner = {name: table for name, table in c.execute("SELECT name, tbl_name FROM sqlite_master")}
        total = answers = 0
        for name, size in c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            total += size
            if owner.get(name, name) in ANSWER_TABLES:
                answers += size
        records = c.execute("SELECT COUNT(*) FROM record").fetchone()[0]
    return total, answers, records


def main() -> dict:
    from ingest_memory import write

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--copy-images", action="store_true", help="store the images' bytes too")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpo-store-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        data = root / f"rows-{args.rows}.parquet"
        if not data.exists():
            write(data, args.rows, 64, 8)
        model = root / "model"
        if not model.exists():
            from dpo_engine.models.tiny import build_tiny_llava

            build_tiny_llava(model, seed=0)
        work = root / ("work-copy" if args.copy_images else "work")
        cmd = [sys.executable, "-m", "dpo_engine", "run", "--dataset", str(data), "--work-dir", str(work), "--restart",
               "--instruct-model", str(model), "--reward-model", str(model), "--sample-k", "2",
               "--max-new-tokens", "8", "--batch-size", "16", "--device", "cpu"]
        if args.copy_images:
            cmd.append("--copy-images")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        total, answers, records = store_bytes(work / "engine.db")
    out = {"store_rows": records, "store_copy_images": args.copy_images,
           "store_bytes_per_record_excl_samples": round((total - answers) / records),
           "store_bytes_per_record": round(total / records), "store_run_seconds": round(seconds, 1)}
    print(f"{records} records: {total / 1e6:.1f} MB store, {(total - answers) / records:,.0f} bytes per record "
          f"besides the answers; run {seconds:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
