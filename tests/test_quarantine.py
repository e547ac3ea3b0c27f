"""A record that kills the process holding it cannot stall a run (issue 17): it is retried
alone, set aside after two deaths, named in `status`, and `retry` puts it back.

The "poison" is a real SIGKILL sent by a watchdog whenever the record is in flight (its lease
is in the store), the way the OOM killer ends a run on a record that eats all memory."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, cli, run_args, shapes_rows, write_parquet

EXTRA = ("--batch-size", "4", "--json")
POISON = "shapes-00005"  # the 6th of 12 records: in the second batch of four


def in_flight(db: Path, idx: str, pid: int) -> bool:
    """Whether process ``pid`` holds record ``idx`` of the sample stage (a dead run's lease on it
    stays in the store until the next run clears it; holders are named host@pid:nonce)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT 1 FROM lease l JOIN record r USING (rid) WHERE l.stage = 'sample'"
                               " AND r.idx = ? AND l.holder LIKE ?", (idx, f"%@{pid}:%")).fetchone() is not None
        finally:
            con.close()
    except sqlite3.Error:  # not created yet, or busy for a moment
        return False


def done_count(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    try:
        return con.execute("SELECT COUNT(*) FROM stage_state WHERE stage = 'sample' AND status = 'done'").fetchone()[0]
    finally:
        con.close()


def run_with_poison(args, db: Path, victim=lambda proc, db, kills: proc.pid, timeout: float = 300):
    """Run ``dpo-engine *args``; while the poison is in flight, SIGKILL the pid that
    ``victim(proc, db, kills)`` names (None: not now). Returns (exit code, stdout, kills)."""
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *map(str, args)], cwd=REPO, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    kills, deadline = 0, time.time() + timeout
    try:
        while proc.poll() is None:
            assert time.time() < deadline, "the run neither finished nor died"
            if in_flight(db, POISON, proc.pid):
                pid = victim(proc, db, kills)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                    if pid == proc.pid:
                        proc.wait()
            time.sleep(0.002)
        return proc.returncode, proc.stdout.read(), kills
    finally:
        if proc.poll() is None:
            proc.kill()


def deaths(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT r.idx, d.deaths FROM death d JOIN record r USING (rid)"
                                " WHERE d.stage = 'sample'").fetchall())
    finally:
        con.close()


def test_a_record_that_kills_the_run_twice_is_set_aside_and_retry_puts_it_back(tiny_models, demo_parquet,
                                                                                tmp_path):
    clean = json.loads(cli(*run_args(tiny_models, demo_parquet, tmp_path / "A", *EXTRA)).stdout.splitlines()[-1])
    work = tmp_path / "B"
    db = work / "engine.db"
    args = run_args(tiny_models, demo_parquet, work, *EXTRA)

    # 1st death: the poison dies in a batch of four; the store cannot tell which one did it.
    code, _, kills = run_with_poison(args, db)
    assert code == -signal.SIGKILL and kills == 1
    # 2nd death: the four are retried one at a time, so the poison now dies alone.
    code, _, kills = run_with_poison(args, db)
    assert code == -signal.SIGKILL and kills == 1
    # (A death is counted when the next run finds the dead run's leases.) The batch-mate before
    # the poison was done alone, which cleared its count; the two after it wait their turn.
    counted = deaths(db)
    assert counted[POISON] == 1 and sorted(counted.values()) == [1, 1, 1]

    # 3rd run: the poison is set aside with the reason, everything else finishes.
    code, out, kills = run_with_poison(args, db)
    assert code == 3 and kills == 0
    summary = json.loads(out.splitlines()[-1])
    assert {s["name"]: s["failed"] for s in summary["stages"]}["sample"] == 1
    assert deaths(db) == {POISON: 2}
    status = json.loads(cli("status", work, "--json").stdout)
    (aside,) = status["set_aside"]
    assert aside["stage"] == "sample" and aside["idx"] == POISON and "died twice" in aside["reason"]
    assert {s["name"]: s for s in status["stages"]}["sample"]["failed"] == 1
    # A plain rerun does not pick it up again (it would die again): it stays aside.
    code, out, kills = run_with_poison(args, db)
    assert code == 3 and kills == 0
    assert "set aside" in cli("status", work).stdout

    # `retry` puts it back; the next run (the poison cured) makes the clean run's dataset.
    assert "put back 1" in cli("retry", work).stdout
    final = json.loads(cli(*args).stdout.splitlines()[-1])
    assert Path(final["output"]).read_bytes() == Path(clean["output"]).read_bytes()
    assert deaths(db) == {} and json.loads(cli("status", work, "--json").stdout)["set_aside"] == []


def test_a_record_that_kills_its_worker_fails_alone_and_the_run_goes_on(tiny_models, demo_parquet, tmp_path):
    work = tmp_path / "W"
    db = work / "engine.db"

    seen: dict[str, int] = {}

    def the_worker(proc, db, kills):
        """The one worker process (`--devices cpu`): when the poison's batch of four is handed to it, and again
        when the poison runs alone (after the record before it, redone alone, is done)."""
        found = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
        if len(pids) != 1 or pids[0] == seen.get("killed"):
            return None
        done = done_count(db)
        if kills == 0 or (kills == 1 and done > seen["done"]):
            seen.update(killed=pids[0], done=done)
            return pids[0]
        return None

    # Long answers, so that each record takes a while and the poison is caught while it runs.
    args = run_args(tiny_models, demo_parquet, work, *EXTRA, "--devices", "cpu", "--max-new-tokens", "200")
    code, out, kills = run_with_poison(args, db, victim=the_worker)
    # Its batch of four is redone one record at a time; alone, the poison kills the worker again.
    assert code == 3 and kills == 2, (code, kills, out[-2000:])
    summary = json.loads(out.splitlines()[-1])
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["sample"]["failed"] == 1 and stages["sample"]["computed"] == 11
    con = sqlite3.connect(db)
    (error,) = con.execute("SELECT s.error FROM stage_state s JOIN record r USING (rid) WHERE s.stage = 'sample'"
                           " AND s.status = 'failed'").fetchone()
    assert "died while this record was in flight, 2 times, the last time alone" in error


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


def test_a_row_that_runs_its_batch_out_of_memory_is_retried_alone_and_the_run_finishes(tiny_models, tmp_path):
    """The issue's case: one row's question (100,000 characters, let through by raising
    --max-question-chars) grows a batch of four past a memory watchdog, which kills the run as
    the OOM killer would. The rerun retries that batch's records one at a time; alone, the row
    stays far under the limit (about 1 GB, as any record), so the run finishes with every row."""
    rows = shapes_rows(12)
    rows[5]["question"] = "Describe the image. " + "what shapes do you see " * 4300
    data = write_parquet(tmp_path / "d.parquet", rows)
    work = tmp_path / "W"
    args = run_args(tiny_models, data, work, "--batch-size", "4", "--max-question-chars", "200000", "--json")
    codes, peaks = [], []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *map(str, args)], cwd=REPO, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        deadline, peak = time.time() + 600, 0.0
        try:
            while proc.poll() is None:
                assert time.time() < deadline, "the run neither finished nor went past the watchdog"
                peak = max(peak, rss_mb(proc.pid))
                if peak > 3000:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
        codes.append(proc.returncode)
        peaks.append(round(peak))
        if proc.returncode >= 0:
            break
    assert codes == [-signal.SIGKILL, 0], peaks
    summary = json.loads(proc.stdout.read().splitlines()[-1])
    assert all(s["failed"] == 0 for s in summary["stages"]) and summary["pairs"] > 0
    con = sqlite3.connect(work / "engine.db")
    assert con.execute("SELECT COUNT(*) FROM sample JOIN record USING (rid) WHERE idx = 'r5'").fetchone()[0] == 4
    assert con.execute("SELECT COUNT(*) FROM death").fetchone()[0] == 0
