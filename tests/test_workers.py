"""Worker processes (``--workers N``): the same dataset as one process, and a killed worker's
batch is redone by a fresh one without losing or duplicating a record."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, cli, dnc_args, run_args
from test_resume import done_count

EXTRA = ("--batch-size", "2", "--max-new-tokens", "24", "--json")


def output_of(proc) -> Path:
    return Path(json.loads(proc.stdout.splitlines()[-1])["output"])


def worker_pids(parent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(parent), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_two_workers_write_the_dataset_one_process_writes(tiny_models, demo_parquet, tmp_path, monkeypatch):
    # One torch thread per process in both runs: a different thread count may move float sums
    # in the last bit on some CPUs.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = output_of(cli(*run_args(tiny_models, demo_parquet, tmp_path / "one", *EXTRA)))
    two = output_of(cli(*run_args(tiny_models, demo_parquet, tmp_path / "two", *EXTRA, "--workers", "2")))
    assert two.read_bytes() == one.read_bytes()


def test_a_worker_killed_mid_sample_is_replaced_and_nothing_is_lost(tiny_models, demo_parquet, tmp_path):
    alone = output_of(cli(*run_args(tiny_models, demo_parquet, tmp_path / "A", *EXTRA, "--workers", "2")))
    work = tmp_path / "B"
    args = run_args(tiny_models, demo_parquet, work, *EXTRA, "--workers", "2")
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *args], cwd=REPO, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while done_count(work / "engine.db", "sample") < 2:
            assert proc.poll() is None and time.time() < deadline, "no progress to interrupt"
            time.sleep(0.05)
        victims = worker_pids(proc.pid)
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    summary = json.loads(out.splitlines()[-1])
    assert all(s["failed"] == 0 for s in summary["stages"])
    assert Path(summary["output"]).read_bytes() == alone.read_bytes()
    con = sqlite3.connect(work / "engine.db")
    for table, key in (("sample", "rid, inner_idx"), ("logprob", "role, rid, inner_idx"), ("reward", "rid, inner_idx")):
        assert con.execute(f"SELECT COUNT(*) FROM (SELECT {key} FROM {table} GROUP BY {key}"
                           " HAVING COUNT(*) > 1)").fetchone()[0] == 0


def test_divide_and_conquer_on_two_workers_with_one_killed_mid_check_writes_the_same_dataset(
        world_models, demo_parquet, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    extra = ("--batch-size", "1", "--json")
    alone = output_of(cli(*dnc_args(world_models, demo_parquet, tmp_path / "one", *extra)))
    work = tmp_path / "two"
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *dnc_args(world_models, demo_parquet, work, *extra,
                                                                            "--workers", "2")],
                            cwd=REPO, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while done_count(work / "engine.db", "check") < 2:
            assert proc.poll() is None and time.time() < deadline, "no progress to interrupt"
            time.sleep(0.05)
        victims = worker_pids(proc.pid)
        assert len(victims) == 2
        os.kill(victims[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert Path(json.loads(out.splitlines()[-1])["output"]).read_bytes() == alone.read_bytes()
    con = sqlite3.connect(work / "engine.db")
    for table, key in (("fact", "rid, inner_idx, ord"), ("judgment", "rid, inner_idx, ord"), ("score", "rid, inner_idx")):
        assert con.execute(f"SELECT COUNT(*) FROM (SELECT {key} FROM {table} GROUP BY {key}"
                           " HAVING COUNT(*) > 1)").fetchone()[0] == 0


def test_a_worker_killed_while_writing_its_answer_is_replaced_and_the_run_does_not_hang():
    """The worker is killed halfway through sending a 4 MB answer that the driver is not reading
    yet. Through one queue shared by all workers this hung the driver for good (the cut message
    was never completed, and the queue's write lock died held); each worker's own pipe ends in an
    end of file instead, and the batch goes to a fresh worker."""
    import threading

    from bulky_stage import ANSWER_CHARS, BulkyAnswer

    from dpo_engine.config import RunConfig
    from dpo_engine.executors.workers import WorkerPoolExecutor
    from dpo_engine.stage import Batch

    config = RunConfig(pipeline="dpo_reward", dataset="-", work_dir="-")
    pool = WorkerPoolExecutor(config, (), ["cpu", "cpu"], threads=1)
    try:
        results = pool.map(BulkyAnswer(), iter([Batch([rid]) for rid in range(6)]), config)
        got = [next(results)]
        time.sleep(3)  # the other worker's answer now sits half-written in its pipe
        writing = [view.pid for view in pool.workers if view.state == "working"]
        assert len(writing) == 1
        os.kill(writing[0], signal.SIGKILL)
        rest = threading.Thread(target=lambda: got.extend(results), daemon=True)
        rest.start()
        rest.join(timeout=120)
        assert not rest.is_alive(), "the driver hung on the killed worker's answer"
    finally:
        pool.close()
    rids = sorted(rid for result in got for rid in result.batch.rids)
    assert rids == list(range(6))
    assert all(len(s.text) == ANSWER_CHARS for result in got for s in result.outputs.samples)
