"""The dashboard: Textual pilots on stores written by real runs, frozen-time SVG snapshots,
a live run seen moving, pause/resume honoured, and a crashed run told apart."""

import asyncio
import html
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, cli, run_args
from dpo_engine.store import Store
from test_resume import done_count

SNAPSHOTS = Path(__file__).parent / "snapshots"
FROZEN = 1_800_000_000.0


def svg_text(path: Path) -> str:
    """The text of a Textual SVG screenshot, one line per row."""
    rows: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text[^>]*?x="([\d.]+)"[^>]*?y="([\d.]+)"[^>]*>(.*?)</text>', path.read_text()):
        rows.setdefault(float(m.group(2)), []).append((float(m.group(1)), html.unescape(m.group(3))))
    return "\n".join("".join(t for _, t in sorted(rows[y])) for y in sorted(rows)).replace("\xa0", " ")


def start_run(args) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "dpo_engine", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def finished_run(tiny_models, demo_parquet, tmp_path_factory):
    work = tmp_path_factory.mktemp("dash") / "W"
    cli(*run_args(tiny_models, demo_parquet, work))
    return work


def test_screenshot_of_a_finished_run_shows_every_stage_with_its_counts(finished_run, tmp_path):
    out = tmp_path / "s.svg"
    cli("dashboard", finished_run, "--screenshot", out)
    text = svg_text(out)
    assert "FINISHED" in text and "dpo_reward" in text
    for stage in ("sample", "logps_instruct", "logps_reward", "reward", "pair", "filter"):
        row = next(line for line in text.splitlines() if re.search(rf"\b{stage}\s+\d", line))
        assert re.search(rf"{stage}\s+12\s+0\s+0\s+0", row), row
    assert "run (CPU %, RSS)" in text  # the run recorded device samples


def test_pilot_keys_open_the_record_browser_and_refuse_pause_on_a_finished_run(finished_run):
    from dpo_engine.tui.app import Dashboard
    from dpo_engine.tui.widgets.browser import RecordBrowser

    async def scenario():
        app = Dashboard(finished_run, interval=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await asyncio.wait_for(app.first_snapshot.wait(), 30)
            snap = app.snapshot
            assert snap.state == "finished"
            assert [(s.name, s.done, s.pending) for s in snap.stages][:2] == [("sample", 12, 0), ("logps_instruct", 12, 0)]
            await pilot.press("p")
            await pilot.pause()
            assert Store(finished_run / "engine.db", create=False).pending_requests() == []  # nothing sent
            await pilot.press("o")
            await pilot.pause()
            browser = app.screen
            assert isinstance(browser, RecordBrowser) and len(browser.rids) == 12
            first = browser.position
            await pilot.press("n")
            assert browser.position == (first + 1) % 12
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, RecordBrowser)
            await asyncio.sleep(0.5)
            assert app.polls >= 3  # polling goes on, one poll at a time

    asyncio.run(scenario())


def test_record_browser_shows_image_question_answers_scores_and_pairs(finished_run):
    from rich.console import Console

    from dpo_engine.tui.widgets.browser import render_record

    store = Store(finished_run / "engine.db", create=False)
    rid = store.conn.execute("SELECT rid FROM kept_pair ORDER BY position LIMIT 1").fetchone()[0]
    detail = store.record_detail(rid)
    image, body = render_record(detail)
    console = Console(width=120, record=True, color_system="truecolor")
    console.print(image)
    console.print(body)
    text = console.export_text()
    assert detail.question in text and "4 answers" in text and "chosen" in text
    assert text.count("▀") == 32 * 16  # a 64x64 image as 32 columns of half blocks
    assert all(a.reward is not None for a in detail.answers)
    assert f"{detail.answers[0].reward[0]:+.3f}" in text


def frozen_store(path: Path) -> Path:
    """A small store written through the store API at fixed times (for pixel-stable snapshots)."""
    import time

    from dpo_engine.demo.world import write_dataset
    from dpo_engine.dataset import open_dataset
    from dpo_engine.ingest import ingest
    from dpo_engine.stage import Outputs, SampleRow
    from dpo_engine.store import WorkerRow

    clock = iter(FROZEN - 100 + i for i in range(1000))
    real = time.time  # the store stamps rows with time.time()
    time.time = lambda: next(clock)
    try:
        data = write_dataset(path.parent / "frozen.parquet", n=6, seed=1)
        store = Store.in_work_dir(path)
        ingest(store, open_dataset(data))
        store.save_run("dpo_reward", "frozen.parquet", {}, {"sample": "h1", "logps_instruct": "h2"}, {})
        store.process_started(4242, "elsewhere", {"instruct": "/m/instruct", "reward": "/m/reward"})
        for rid in range(4):
            rows = [SampleRow(rid, j, f"there is a red circle number {j}", 7, 6, j) for j in range(2)]
            store.commit("sample", "h1", [rid], Outputs(samples=rows, tokens=14), writes=("samples",),
                         downstream=(), seconds=0.5)
        store.commit("logps_instruct", "h2", [0, 1], Outputs(failed={1: "RuntimeError: out of memory"}),
                     writes=(), downstream=(), seconds=0.25)
        store.add_device_samples([("cpu", 97.0, 512e6, 8e9)])
        store.save_workers("elsewhere@4242:1", [WorkerRow("4243/w0", "elsewhere@4242:1", "elsewhere", 4243, "cuda:0",
                                                          "working", "logps_instruct", FROZEN - 100, FROZEN - 95,
                                                          6, 1.5)])
        store.heartbeat()
        store.close()
    finally:
        time.time = real
    return path


def test_svg_snapshot_with_time_frozen_matches_the_stored_one(tmp_path):
    from dpo_engine.tui.app import screenshot

    work = frozen_store(tmp_path / "W")
    out = screenshot(work, tmp_path / "frozen.svg", size=(120, 30), clock=lambda: FROZEN - 90)
    # Textual names its CSS classes after the terminal's id; make that stable.
    got = re.sub(r"terminal-\d+", "terminal", out.read_text())
    golden = SNAPSHOTS / "dashboard_frozen.svg"
    if os.environ.get("UPDATE_SNAPSHOTS") or not golden.exists():
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
        if not os.environ.get("UPDATE_SNAPSHOTS"):
            pytest.fail("no stored snapshot: wrote it; check it in and rerun")
    assert got == golden.read_text()
    text = svg_text(out)
    assert "RUNNING" in text  # another host, heartbeat 10 s old: still counted live
    assert "out of memory" in text and "97%" in text
    assert "4243/w0" in text and "cuda:0" in text and "4.00" in text  # the worker, 6 items in 1.5 s


@pytest.mark.timeout(600)
def test_live_run_counts_move_pause_holds_it_and_resume_finishes_it(tiny_models, demo_parquet, tmp_path):
    from dpo_engine.tui.app import Dashboard, screenshot

    work = tmp_path / "W"
    db = work / "engine.db"
    proc = start_run(run_args(tiny_models, demo_parquet, work, "--batch-size", "1", "--max-new-tokens", "48"))
    try:
        wait_for(lambda: done_count(db, "sample") >= 1, what="the first batch")
        first = svg_text(screenshot(work, tmp_path / "a.svg"))
        wait_for(lambda: done_count(db, "sample") >= 4, what="more batches")
        second = svg_text(screenshot(work, tmp_path / "b.svg"))

        def sample_done(text):
            return int(re.search(r"sample\s+(\d+)", text).group(1))

        assert "RUNNING" in first and sample_done(second) > sample_done(first)

        async def press_p(expect: str):
            app = Dashboard(work, interval=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await asyncio.wait_for(app.first_snapshot.wait(), 30)
                await pilot.press("p")
                await pilot.pause()
                deadline = time.time() + 60
                while app.snapshot.state != expect and time.time() < deadline:
                    await asyncio.sleep(0.1)
                return app.snapshot.state

        assert asyncio.run(press_p("paused")) == "paused"
        held = sum(done_count(db, s) for s in ("sample", "logps_instruct", "logps_reward"))
        time.sleep(3)
        assert proc.poll() is None
        assert sum(done_count(db, s) for s in ("sample", "logps_instruct", "logps_reward")) == held
        assert asyncio.run(press_p("running")) in ("running", "finished")
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    final = json.loads(cli("status", work, "--json").stdout)
    assert all(s["done"] == 12 for s in final["stages"])


def test_a_killed_run_shows_as_crashed(tiny_models, demo_parquet, tmp_path):
    from dpo_engine.tui.snapshot import take_snapshot

    work = tmp_path / "W"
    db = work / "engine.db"
    proc = start_run(run_args(tiny_models, demo_parquet, work, "--batch-size", "1", "--max-new-tokens", "48"))
    wait_for(lambda: done_count(db, "sample") >= 1, what="the first batch")
    store = Store(db, create=False)
    assert take_snapshot(store, time.time()).state == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert take_snapshot(store, time.time()).state == "crashed"
    con = sqlite3.connect(db)
    assert con.execute("SELECT finished FROM process").fetchone()[0] is None


def test_retry_key_queues_a_request_that_requeues_the_failed_items(tmp_path):
    from dpo_engine.tui.app import Dashboard

    work = frozen_store(tmp_path / "W")

    async def scenario():
        app = Dashboard(work, interval=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await asyncio.wait_for(app.first_snapshot.wait(), 30)
            assert [f.error for f in app.snapshot.failures] == ["RuntimeError: out of memory"]
            await pilot.press("r")
            await pilot.pause()

    asyncio.run(scenario())
    store = Store(work / "engine.db", create=False)
    assert store.pending_requests() == ["retry"]
    assert store.take_requests() == ["retry"] and store.take_requests() == []
    assert store.requeue_failed() == 1
    assert store.recent_failures() == []
    assert {s.name: s.pending for s in store.status().stages}["logps_instruct"] == 5


def run_gone(work: Path) -> bool:
    from dpo_engine.monitor import pid_alive

    if done_count(work / "engine.db", "filter") < 12:
        return False
    store = Store(work / "engine.db", create=False)
    info = store.process_info()
    store.close()
    return info is not None and info.finished is not None and not pid_alive(info.pid)


@pytest.mark.timeout(300)
def test_run_with_dashboard_in_a_real_terminal(tiny_models, demo_parquet, tmp_path):
    import pty
    import select

    work = tmp_path / "W"
    args = [sys.executable, "-m", "dpo_engine", *map(str, run_args(tiny_models, demo_parquet, work)), "--dashboard"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of 120 x 40
        os.chdir(REPO)
        os.environ.update(TERM="xterm-256color", COLUMNS="120", LINES="40", HF_HUB_OFFLINE="1")
        os.execv(sys.executable, args)
    screen, sent, started = b"", False, time.time()
    while time.time() - started < 240:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        if not sent and b"logps_instruct" in screen and run_gone(work):
            os.write(fd, b"q")  # quit once the dashboard has drawn and the run's process has ended
            sent = True
    _, status = os.waitpid(pid, 0)
    text = screen.decode("utf-8", "replace")
    assert sent and os.waitstatus_to_exitcode(status) == 0
    assert "the run ended with exit code 0" in text
    assert (work / "run.log").read_text().count("done in") == 1


@pytest.mark.timeout(600)
def test_retry_request_reruns_failed_items_before_a_live_run_ends(tiny_models, demo_parquet, tmp_path):
    from dpo_engine.monitor import run_state

    work = tmp_path / "W"
    db = work / "engine.db"
    proc = start_run(run_args(tiny_models, demo_parquet, work, "--batch-size", "1", "--max-new-tokens", "48"))

    def state():
        store = Store(db, create=False)
        try:
            return run_state(store.process_info())
        finally:
            store.close()

    def ask(action):
        store = Store(db, create=False)
        store.request(action)
        store.close()

    def sample_status(rid):
        row = con.execute("SELECT status, attempts FROM stage_state WHERE stage = 'sample' AND rid = ?",
                          (rid,)).fetchone()
        return row or (None, 0)

    try:
        wait_for(lambda: done_count(db, "sample") >= 2, what="the first batches")
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        ask("pause")
        wait_for(lambda: state() == "paused", what="the pause")
        # A real failure: the last record's image no longer decodes.
        image = con.execute("SELECT image FROM record WHERE rid = 11").fetchone()[0]
        con.execute("UPDATE record SET image = x'00' WHERE rid = 11")
        ask("resume")
        wait_for(lambda: sample_status(11)[0] == "failed", what="the failure")
        ask("pause")
        wait_for(lambda: state() == "paused", what="the second pause")
        assert proc.poll() is None
        con.execute("UPDATE record SET image = ? WHERE rid = 11", (image,))
        ask("retry")
        ask("resume")
        assert proc.wait(timeout=300) == 0  # no failure left: the retry pass ran before the end
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sample_status(11) == ("done", 1)  # the failed state was dropped, then done once
    final = json.loads(cli("status", work, "--json").stdout)
    assert all(s["done"] == 12 and s["failed"] == 0 for s in final["stages"])
