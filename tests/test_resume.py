"""Crash and resume with real subprocesses killed by SIGKILL, and settings invalidation."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import REPO, cli, run_args, shapes_rows, write_parquet


def done_count(db, stage):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM stage_state WHERE stage = ? AND status = 'done'",
                               (stage,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def run_and_kill(args, db, stage, at_least, below):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            n = done_count(db, stage)
            if n >= at_least:
                # Freeze the run (possibly inside a write transaction): status must still answer.
                proc.send_signal(signal.SIGSTOP)
                live = json.loads(cli("status", db.parent, "--json").stdout)
                counts = {x["name"]: x for x in live["stages"]}[stage]
                assert counts["done"] >= at_least and counts["pending"] > 0
                assert counts["done"] + counts["pending"] + counts["failed"] == live["records"]["valid"]
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return n
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        raise AssertionError("timed out waiting for progress")
    finally:
        if proc.poll() is None:
            proc.kill()


def summary(proc):
    return json.loads(proc.stdout.splitlines()[-1])


def test_kill_9_in_sample_and_logps_reward_then_resume_gives_the_same_dataset(tiny_models, demo_parquet, tmp_path):
    extra = ("--batch-size", "1", "--max-new-tokens", "48")
    a = summary(cli(*run_args(tiny_models, demo_parquet, tmp_path / "A", *extra, "--json")))
    b_args = run_args(tiny_models, demo_parquet, tmp_path / "B", *extra)
    db = tmp_path / "B" / "engine.db"
    killed_sample = run_and_kill(b_args, db, "sample", 2, 12)
    killed_reward = run_and_kill(b_args, db, "logps_reward", 2, 12)
    assert 2 <= killed_sample < 12 and 2 <= killed_reward < 12
    b = summary(cli(*b_args, "--json"))
    stages = {s["name"]: s for s in b["stages"]}
    assert stages["sample"]["computed"] == 0 and stages["sample"]["reused"] == 12
    assert 0 < stages["logps_reward"]["computed"] < 12
    assert (tmp_path / "A/dataset/dpo_dataset.parquet").read_bytes() == \
        (tmp_path / "B/dataset/dpo_dataset.parquet").read_bytes()
    assert a["pairs"] == b["pairs"]
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT rid * 1000 + inner_idx) FROM sample").fetchone() == (48, 48)
    assert con.execute("SELECT COUNT(*) FROM logprob").fetchone()[0] == 96


def test_appended_rows_are_picked_up_and_changed_rows_refused(tiny_models, tmp_path):
    data = tmp_path / "d.parquet"
    rows = shapes_rows(4)
    write_parquet(data, rows)
    work = tmp_path / "W"
    cli(*run_args(tiny_models, data, work))
    write_parquet(data, rows + shapes_rows(2, seed=9, prefix="new"))
    grown = summary(cli(*run_args(tiny_models, data, work, "--json")))
    assert {s["name"]: s["computed"] for s in grown["stages"]}["sample"] == 2
    assert grown["records"]["total"] == 6

    rows[1]["question"] = "A different question?"
    write_parquet(data, rows + shapes_rows(2, seed=9, prefix="new"))
    changed = cli(*run_args(tiny_models, data, work), check=False)
    assert changed.returncode == 2 and "row 1" in changed.stderr and "--restart" in changed.stderr
    fresh = summary(cli(*run_args(tiny_models, data, work, "--restart", "--json")))
    assert {s["name"]: s["computed"] for s in fresh["stages"]}["sample"] == 6


def test_new_reward_model_recomputes_from_logps_reward_only(tiny_models, demo_parquet, tmp_path):
    from dpo_engine.models.tiny import build_tiny_llava

    work = tmp_path / "W"
    cli(*run_args(tiny_models, demo_parquet, work))
    other = build_tiny_llava(tmp_path / "reward2", seed=7, base=tiny_models["instruct"], noise=0.1)
    args = run_args(tiny_models, demo_parquet, work, "--json")
    args[args.index("--reward-model") + 1] = str(other)
    computed = {s["name"]: s["computed"] for s in summary(cli(*args))["stages"]}
    assert computed["sample"] == computed["logps_instruct"] == 0
    assert computed["logps_reward"] == computed["reward"] == computed["pair"] == 12


@pytest.mark.parametrize("seed", ["1"])
def test_same_seed_same_bytes_other_seed_other_samples(tiny_models, demo_parquet, tmp_path, seed):
    out = []
    for name, s in (("a", "0"), ("b", "0"), ("c", seed)):
        cli(*run_args(tiny_models, demo_parquet, tmp_path / name, "--seed", s))
        out.append(sqlite3.connect(tmp_path / name / "engine.db").execute(
            "SELECT group_concat(text, '|') FROM (SELECT text FROM sample ORDER BY rid, inner_idx)").fetchone()[0])
    assert out[0] == out[1] and out[0] != out[2]
    assert (tmp_path / "a/dataset/dpo_dataset.parquet").read_bytes() == \
        (tmp_path / "b/dataset/dpo_dataset.parquet").read_bytes()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_the_run_like_ctrl_c(tiny_models, demo_parquet, tmp_path, sig, code):
    args = run_args(tiny_models, demo_parquet, tmp_path / "W", "--batch-size", "1")
    db = tmp_path / "W" / "engine.db"
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *map(str, args)], cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while done_count(db, "sample") < 2:
            assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the signal"
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert f"stopped by {sig.name}" in err and "rerun the same command" in err and "Traceback" not in err
    con = sqlite3.connect(db)
    assert con.execute("SELECT state FROM process").fetchone()[0] == "stopped"
    done = con.execute("SELECT COUNT(*) FROM stage_state WHERE stage = 'sample' AND status = 'done'").fetchone()[0]
    con.close()
    again = summary(cli(*args, "--json"))
    assert {s["name"]: s for s in again["stages"]}["sample"]["reused"] == done >= 2
