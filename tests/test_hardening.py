"""What a run does on a read-only mount, a full disk and a damaged store: real filesystems
(a read-only bind mount and a small tmpfs, each in a user namespace of its own via
``unshare``), a real store file with garbage written into it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO, cli, run_args, shapes_rows, write_parquet
from dpo_engine.monitor import pid_alive


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs `unshare -rm` (user and mount namespaces)")


def in_namespace(script: str) -> subprocess.CompletedProcess:
    """Run a shell script as root of a new user and mount namespace (its mounts vanish with it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "DPO": f"{shlex.quote(sys.executable)} -m dpo_engine"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    data = write_parquet(root / "d.parquet", shapes_rows(6))
    args = run_args(tiny_models, data, root / "work", "--max-new-tokens", "12")
    cli(*args)
    return root / "work", args


@needs_mounts
def test_a_finished_run_on_a_read_only_mount_can_be_read_but_not_run(finished_run, tmp_path):
    work, args = finished_run
    expected = json.loads(cli("status", work, "--json").stdout)
    out = tmp_path / "pairs.parquet"
    w = shlex.quote(str(work))
    proc = in_namespace(f"mount --bind {w} {w} && mount -o remount,bind,ro {w} || exit 99\n"
                        f"touch {w}/probe 2>/dev/null && exit 98\n"
                        f"$DPO status {w} --json > {tmp_path}/status.json || exit 1\n"
                        f"$DPO export {w} --out {shlex.quote(str(out))} || exit 2\n"
                        f"$DPO {' '.join(shlex.quote(str(a)) for a in args)} 2> {tmp_path}/run.err; "
                        f"echo $? > {tmp_path}/run.rc")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads((tmp_path / "status.json").read_text())
    assert (seen["records"], seen["stages"]) == (expected["records"], expected["stages"])
    assert out.read_bytes() == (work / "dataset" / "dpo_dataset.parquet").read_bytes()
    assert (tmp_path / "run.rc").read_text().strip() == "2"
    err = (tmp_path / "run.err").read_text()
    assert "is read-only" in err and "Traceback" not in err, err


@needs_mounts
def test_a_full_disk_stops_the_run_with_a_clear_message_and_a_rerun_resumes(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "d.parquet", shapes_rows(40))
    reference = tmp_path / "reference"
    cli(*run_args(tiny_models, data, reference, "--max-new-tokens", "12"))
    small = tmp_path / "small"
    small.mkdir()
    args = " ".join(shlex.quote(str(a)) for a in run_args(tiny_models, data, small / "work", "--max-new-tokens", "12"))
    s = shlex.quote(str(small))
    proc = in_namespace(f"mount -t tmpfs -o size=160k none {s} || exit 99\n"
                        f"$DPO {args} > /dev/null 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc\n"
                        f"mount -o remount,size=64m {s} || exit 98\n"
                        f"$DPO {args} --json > {tmp_path}/again.json || exit 3\n"
                        f"cp {s}/work/dataset/dpo_dataset.parquet {tmp_path}/again.parquet")
    assert proc.returncode == 0, proc.stderr
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() != "0"
    assert "disk is full" in err and "rerun the same command" in err and "Traceback" not in err, err
    assert (tmp_path / "again.parquet").read_bytes() == (reference / "dataset" / "dpo_dataset.parquet").read_bytes()


def test_a_damaged_store_left_by_a_crash_is_refused_by_run_and_export(finished_run, tmp_path):
    work, args = finished_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    db = copy / "engine.db"
    # A process that dies with the store open leaves its write-ahead log behind: not closed cleanly.
    subprocess.run([sys.executable, "-c", "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                    "c.execute('SELECT COUNT(*) FROM record').fetchone(); os._exit(0)", str(db)], check=True)
    assert (copy / "engine.db-wal").exists()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'stage_state'").fetchone()[0]
    con.close()
    with open(db, "r+b") as fh:  # garbage over the middle of one table's root page
        fh.seek((root - 1) * page_size + 64)
        fh.write(os.urandom(page_size // 2))
    exported = cli("export", copy, "--out", tmp_path / "pairs.parquet", check=False)
    assert exported.returncode == 2 and "is damaged" in exported.stderr and "--restart" in exported.stderr
    assert not (tmp_path / "pairs.parquet").exists()
    args = [str(copy) if a == str(work) else a for a in args]
    rerun = cli(*args, check=False)
    assert rerun.returncode == 2 and "is damaged" in rerun.stderr, rerun.stderr


@needs_mounts
def test_export_onto_a_full_disk_fails_and_keeps_the_previous_output(finished_run, tmp_path):
    work, _ = finished_run
    disk = tmp_path / "disk"
    disk.mkdir()
    d, out = shlex.quote(str(disk)), shlex.quote(str(disk / "pairs.parquet"))
    proc = in_namespace(f"mount -t tmpfs -o size=1m none {d} || exit 99\n"
                        f"$DPO export {shlex.quote(str(work))} --out {out} > /dev/null || exit 1\n"
                        f"cp {out} {tmp_path}/before.parquet\n"
                        f"dd if=/dev/zero of={d}/filler bs=4k 2> /dev/null\n"  # fills the disk
                        f"$DPO export {shlex.quote(str(work))} --out {out} > /dev/null 2> {tmp_path}/full.err; "
                        f"echo $? > {tmp_path}/full.rc\n"
                        f"cp {out} {tmp_path}/after.parquet && ls -a {d} > {tmp_path}/left.txt")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "full.rc").read_text().strip() == "1"
    err = (tmp_path / "full.err").read_text()
    assert "disk is full" in err and "Traceback" not in err, err
    assert (tmp_path / "after.parquet").read_bytes() == (tmp_path / "before.parquet").read_bytes()
    assert sorted((tmp_path / "left.txt").read_text().split()) == [".", "..", "filler", "pairs.parquet"]


def _children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: {pid: command line}."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry)] = cmdline
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
def test_killing_the_demo_with_kill_9_takes_its_training_process_with_it(tmp_path):
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}  # 2 threads: text models train apart
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", "demo", str(tmp_path / "w"), "--pipeline",
                             "divide_and_conquer"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        lane = []
        while not lane:
            assert proc.poll() is None and time.time() < deadline, "the demo never started its training process"
            lane = [pid for pid, cmd in _children(proc.pid).items() if "spawn_main" in cmd]
            time.sleep(0.2)
        time.sleep(2)  # the child is past its start and training
        assert pid_alive(lane[0])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while pid_alive(lane[0]) and time.time() < deadline:
            time.sleep(0.1)
        assert not pid_alive(lane[0]), "the training process outlived the demo"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_damaged_weights_file_is_named_before_any_stage_runs(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "d.parquet", shapes_rows(2))
    for damage in ("truncate", "garbage"):
        reward = tmp_path / f"reward-{damage}"
        shutil.copytree(tiny_models["reward"], reward)
        weights = next(reward.glob("*.safetensors"))
        blob = weights.read_bytes()
        weights.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else os.urandom(len(blob)))
        models = {**tiny_models, "reward": reward}
        proc = cli(*run_args(models, data, tmp_path / damage), check=False)
        assert proc.returncode != 0 and str(weights) in proc.stderr.replace("\n", ""), proc.stderr
        assert not (tmp_path / damage / "engine.db").exists()  # refused before the run began


def test_export_during_a_live_run_says_so_and_writes_nothing(tiny_models, tmp_path):
    import signal
    import time

    from test_resume import done_count

    data = write_parquet(tmp_path / "d.parquet", shapes_rows(6))
    work = tmp_path / "work"
    args = run_args(tiny_models, data, work, "--batch-size", "1", "--max-new-tokens", "48")
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *args], cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while done_count(work / "engine.db", "sample") < 1:
            assert proc.poll() is None and time.time() < deadline, "the run ended or stalled"
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)  # live, and holding still
        out = tmp_path / "pairs.parquet"
        exported = cli("export", work, "--out", out, check=False)
        assert exported.returncode != 0 and f"is live (pid {proc.pid}" in exported.stderr, exported.stderr
        assert "dpo-engine status" in exported.stderr and not out.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
