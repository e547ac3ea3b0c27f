"""Several processes on one work dir, for real: a second `run` is refused and told about
--join; a joiner shares the records out by leases; a killed joiner's records are taken over;
a whole run killed with its workers resumes; export never mixes two settings' pairs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli, run_args, shapes_rows, write_parquet
from test_resume import done_count

from dpo_engine.store import Store

EXTRA = ("--batch-size", "1", "--max-new-tokens", "48")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same float paths in every process of every run


@pytest.fixture(scope="module")
def rows40(tmp_path_factory) -> Path:
    return write_parquet(tmp_path_factory.mktemp("join") / "d.parquet", shapes_rows(40, seed=3))


@pytest.fixture(scope="module")
def alone(tiny_models, rows40, tmp_path_factory) -> bytes:
    """The dataset one process writes."""
    work = tmp_path_factory.mktemp("alone")
    proc = start(run_args(tiny_models, rows40, work, *EXTRA, "--json"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    return Path(json.loads(out.splitlines()[-1])["output"]).read_bytes()


def start(args, *, group: bool = False) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    return subprocess.Popen([sys.executable, "-m", "dpo_engine", *map(str, args)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=group)


def wait_for(condition, what: str, procs=(), timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        for p in procs:
            assert p.poll() is None, f"a process ended while waiting for {what}: {p.communicate()}"
        time.sleep(0.05)


def request(work: Path, action: str) -> None:
    store = Store.in_work_dir(work, create=False)
    store.request(action)
    store.close()


def status(work: Path) -> dict:
    return json.loads(cli("status", work, "--json").stdout)


def no_duplicates(db: Path) -> None:
    con = sqlite3.connect(db)
    for table, key in (("sample", "rid, inner_idx"), ("logprob", "role, rid, inner_idx"), ("reward", "rid, inner_idx")):
        assert con.execute(f"SELECT COUNT(*) FROM (SELECT {key} FROM {table} GROUP BY {key}"
                           " HAVING COUNT(*) > 1)").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM lease").fetchone()[0] == 0  # everything given back


def fifth_answers(db: Path) -> int:
    """Records with a fifth answer: sampled by a run with --sample-k 5."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    try:
        return con.execute("SELECT COUNT(*) FROM sample WHERE inner_idx = 4").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1])


def test_a_second_run_is_refused_and_a_joiner_shares_the_work(tiny_models, rows40, alone, tmp_path):
    work = tmp_path / "W"
    args = run_args(tiny_models, rows40, work, *EXTRA, "--json")
    main = start(args)
    try:
        wait_for(lambda: done_count(work / "engine.db", "sample") >= 1, "the first sample", [main])
        request(work, "pause")  # the run waits; only the joiner can make progress now
        wait_for(lambda: Store.in_work_dir(work, create=False).process_info().state == "paused", "the pause", [main])
        refused = cli(*args, check=False)
        assert refused.returncode == 2
        assert f"live run (pid {main.pid}" in refused.stderr and "--join" in refused.stderr
        before = done_count(work / "engine.db", "sample")
        joiner = start([*args, "--join"])
        wait_for(lambda: done_count(work / "engine.db", "sample") >= before + 3, "the joiner's work", [main, joiner])
        live = status(work)
        assert len({w["holder"] for w in live["workers"]}) == 2  # both processes list their workers
        assert {w["pid"] for w in live["workers"]} == {main.pid, joiner.pid}
        request(work, "resume")
        ran, joined = finish(main), finish(joiner)
    finally:
        for p in (main, locals().get("joiner")):
            if p is not None and p.poll() is None:
                p.kill()
    computed = {s["name"]: s["computed"] for s in joined["stages"]}
    assert computed["sample"] >= 3 and sum(computed.values()) > 0
    assert sum(s["computed"] for s in ran["stages"] if s["name"] == "sample") + computed["sample"] == 40
    assert Path(ran["output"]).read_bytes() == alone
    no_duplicates(work / "engine.db")


def test_a_killed_joiners_records_are_taken_over(tiny_models, rows40, alone, tmp_path):
    work = tmp_path / "W"
    args = run_args(tiny_models, rows40, work, *EXTRA, "--json", "--lease-seconds", "2")
    main = start(args)
    joiner = None
    try:
        wait_for(lambda: done_count(work / "engine.db", "sample") >= 1, "the first sample", [main])
        request(work, "pause")
        joiner = start([*args, "--join"])
        wait_for(lambda: any(h.split("@")[1].startswith(f"{joiner.pid}:") for h in status(work)["leases"]),
                 "the joiner to hold records", [main, joiner])
        joiner.send_signal(signal.SIGKILL)
        joiner.wait()
        killed = time.time()
        request(work, "resume")
        ran = finish(main)
    finally:
        for p in (main, joiner):
            if p is not None and p.poll() is None:
                p.kill()
    assert time.time() - killed < 300
    assert Path(ran["output"]).read_bytes() == alone
    no_duplicates(work / "engine.db")


def test_the_whole_run_killed_with_its_workers_resumes(tiny_models, rows40, alone, tmp_path):
    work = tmp_path / "W"
    args = run_args(tiny_models, rows40, work, *EXTRA, "--json", "--workers", "2")
    group = start(args, group=True)
    try:
        wait_for(lambda: done_count(work / "engine.db", "sample") >= 5, "samples", [group])
        os.killpg(group.pid, signal.SIGKILL)  # the driver and both workers at once
        group.wait()
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
    assert Store.in_work_dir(work, create=False).lease_holders()  # the dead run's leases are still there
    again = finish(start(args))
    assert Path(again["output"]).read_bytes() == alone
    no_duplicates(work / "engine.db")


def test_export_after_an_unfinished_rerun_with_other_settings_writes_the_finished_pairs(
        tiny_models, demo_parquet, tmp_path):
    work = tmp_path / "W"
    first = finish(start(run_args(tiny_models, demo_parquet, work, "--json")))
    finished = Path(first["output"]).read_bytes()
    rerun = start(run_args(tiny_models, demo_parquet, work, "--sample-k", "5", *EXTRA))
    try:
        wait_for(lambda: fifth_answers(work / "engine.db") >= 3, "the rerun's samples", [rerun])
        rerun.send_signal(signal.SIGKILL)
        rerun.wait()
    finally:
        if rerun.poll() is None:
            rerun.kill()
    out = tmp_path / "out.parquet"
    said = cli("export", work, "--out", out).stdout
    assert "is unfinished" in said and "wrote the pairs of the last finished run" in said
    assert out.read_bytes() == finished
    trl = cli("export", work, "--format", "trl", "--out", tmp_path / "trl.parquet", check=False)
    assert trl.returncode == 1 and "rlaif-v only" in trl.stderr
    assert not (tmp_path / "trl.parquet").exists()
    again = finish(start(run_args(tiny_models, demo_parquet, work, "--sample-k", "5", *EXTRA, "--json")))
    said = cli("export", work, "--out", out).stdout
    assert "unfinished" not in said and out.read_bytes() == Path(again["output"]).read_bytes() != finished
