"""The seed's flags: `--run_stage S` recomputes S and every later stage for every record, and
`--debug` writes what every stage computed to WORK_DIR/debug/."""

from __future__ import annotations

import json
import sqlite3

from conftest import cli, run_args


def _finished(work) -> dict[str, dict[int, float]]:
    db = sqlite3.connect(work / "engine.db")
    out: dict[str, dict[int, float]] = {}
    for stage, rid, finished in db.execute("SELECT stage, rid, finished FROM stage_state WHERE status = 'done'"):
        out.setdefault(stage, {})[rid] = finished
    return out


def test_run_stage_recomputes_that_stage_and_later_ones_only(tiny_models, demo_parquet, tmp_path):
    work = tmp_path / "run"
    args = run_args(tiny_models, demo_parquet, work)
    cli(*args)
    before = _finished(work)
    dataset = (work / "dataset" / "dpo_dataset.parquet").read_bytes()
    again = cli(*args, "--run_stage", "logps_reward")
    after = _finished(work)
    assert "recomputing logps_reward, reward, pair, filter" in again.stdout
    for stage in ("sample", "logps_instruct"):
        assert after[stage] == before[stage]  # kept
    for stage in ("logps_reward", "reward", "pair", "filter"):
        assert after[stage].keys() == before[stage].keys()
        assert all(after[stage][rid] > before[stage][rid] for rid in after[stage])  # recomputed
    assert (work / "dataset" / "dpo_dataset.parquet").read_bytes() == dataset  # the same results
    wrong = cli(*args, "--run_stage", "judge", check=False)
    assert wrong.returncode == 2 and "logps_instruct" in wrong.stderr


def test_debug_writes_readable_files_of_every_stage(tiny_models, demo_parquet, tmp_path):
    work = tmp_path / "run"
    shown = cli(*run_args(tiny_models, demo_parquet, work, "--debug"))
    assert "debug files:" in shown.stdout
    samples = [json.loads(line) for line in (work / "debug" / "samples.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (work / "debug" / "pairs.jsonl").read_text().splitlines()]
    db = sqlite3.connect(work / "engine.db")
    assert len(samples) == db.execute("SELECT COUNT(*) FROM sample").fetchone()[0]
    assert all(s["reward_sum"] is not None and len(s["logps"]) == 2 for s in samples)
    assert len(pairs) == db.execute("SELECT COUNT(*) FROM pair").fetchone()[0]
    assert sum(p["kept"] for p in pairs) == db.execute("SELECT COUNT(*) FROM kept_pair").fetchone()[0]
