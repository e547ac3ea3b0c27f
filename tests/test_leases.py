"""Leases on a real store: two holders never hold one record, a lapsed or dead holder's records
are taken over, and a batch whose lease was taken over is not committed."""

import os
import socket
import subprocess
import sys
import time

from conftest import shapes_rows, write_parquet
from dpo_engine.dataset import open_dataset
from dpo_engine.holder import Holder, gone
from dpo_engine.ingest import ingest
from dpo_engine.stage import Outputs, SampleRow
from dpo_engine.store import Store


def store_with(tmp_path, n=6) -> Store:
    store = Store.in_work_dir(tmp_path / "work")
    ingest(store, open_dataset(write_parquet(tmp_path / "d.parquet", shapes_rows(n))))
    return store


def samples(rids) -> Outputs:
    return Outputs(samples=[SampleRow(rid, 0, f"answer {rid}", 2, 2, rid) for rid in rids])


def claim(store, holder, limit=2, lease=60.0, since=float("inf"), **kw):
    return store.claim("sample", "h", [], holder, limit=limit, lease=lease, failed_since=since, gone=gone, **kw)


def commit(store, holder, rids) -> bool:
    return store.commit("sample", "h", rids, samples(rids), writes=["samples"], downstream=[], seconds=0.1,
                        holder=holder)


def test_holders_share_out_the_records_and_commits_release_them(tmp_path):
    store = store_with(tmp_path)
    me = f"{socket.gethostname()}@{os.getpid()}"
    a, b = f"{me}:1", f"{me}:2"
    assert claim(store, a) == [0, 1]
    assert claim(store, b) == [2, 3]
    assert claim(store, a, limit=10) == [4, 5]
    assert claim(store, b) == []  # everything is held
    assert store.lease_holders() == {a: 4, b: 2}
    assert commit(store, a, [0, 1])
    assert store.lease_holders() == {a: 2, b: 2}
    assert store.count_pending("sample", "h", []) == 4
    store.release(a)
    assert claim(store, b, limit=10) == [4, 5]  # released records are free again
    assert store.duplicate_keys("sample") == 0


def test_a_lapsed_lease_is_taken_over_and_the_late_commit_is_refused(tmp_path):
    store = store_with(tmp_path, n=3)
    me = f"{socket.gethostname()}@{os.getpid()}"  # alive: only expiry frees its records
    slow, fast = f"{me}:1", f"{me}:2"
    assert claim(store, slow, limit=3, lease=0.3) == [0, 1, 2]
    assert store.renew(slow, 0.3) == 3  # a heartbeat pushes expiry on
    assert claim(store, fast, limit=3) == []
    time.sleep(0.4)
    # Lapsed while held: each counts a death of its holder, so each is retried alone.
    assert [claim(store, fast, limit=3) for _ in range(4)] == [[0], [1], [2], []]
    assert not commit(store, slow, [0, 1])  # it lost them: nothing written
    assert store.count("sample") == 0 and store.count_pending("sample", "h", []) == 3
    assert commit(store, fast, [0, 1, 2]) and store.count("sample") == 3


def test_a_dead_holders_records_are_taken_over_at_once(tmp_path):
    store = store_with(tmp_path, n=2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ghost = f"{socket.gethostname()}@{int(dead.stdout)}:1"
    far = f"elsewhere@{os.getpid()}:1"  # another host: only its lease's expiry counts
    assert gone(ghost) and not gone(far)
    assert claim(store, far, limit=1) == [0]
    assert claim(store, ghost, limit=1) == [1]
    assert claim(store, f"{socket.gethostname()}@{os.getpid()}:9", limit=5) == [1]


def dead_holder() -> str:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{socket.gethostname()}@{int(dead.stdout)}:{time.time_ns()}"


def test_a_dead_holders_records_are_retried_alone_and_one_in_flight_at_two_deaths_is_set_aside(tmp_path):
    store = store_with(tmp_path, n=3)
    me = f"{socket.gethostname()}@{os.getpid()}:1"
    assert claim(store, dead_holder(), limit=3) == [0, 1, 2]  # killed with all three in flight
    assert claim(store, dead_holder(), limit=3) == [0]  # one death each: alone now, and killed again
    aside = []
    assert claim(store, me, limit=3, set_aside=aside) == [1]
    ((rid, idx, reason),) = aside
    assert rid == 0 and "died twice while this record was in flight in sample" in reason
    assert "dpo-engine retry" in reason
    assert commit(store, me, [1]) and claim(store, me, limit=3) == [2]  # 2 still alone: it died once too
    assert commit(store, me, [2]) and claim(store, me, limit=3) == []  # 0 stays aside, across runs
    assert claim(store, me, limit=3, since=time.time() + 1) == []
    assert store.count_pending("sample", "h", [], failed_since=-1) == 0
    assert store.quarantined() == [("sample", idx, reason)] and store.set_aside_records("sample", "h") == aside
    assert store.requeue_failed() == 1 and store.quarantined() == []
    assert claim(store, me, limit=3) == [0] and commit(store, me, [0])  # back, and its deaths forgotten
    assert store.conn.execute("SELECT COUNT(*) FROM death").fetchone()[0] == 0


def test_failed_records_are_not_retried_in_the_pass_that_failed_them(tmp_path):
    store = store_with(tmp_path, n=2)
    holder = f"{socket.gethostname()}@{os.getpid()}:1"
    started = time.time()
    assert claim(store, holder, since=started) == [0, 1]
    store.commit("sample", "h", [0, 1], Outputs(failed={1: "boom"}), writes=["samples"], downstream=[],
                 seconds=0.1, holder=holder)
    assert claim(store, holder, since=started) == []  # this pass is done with record 1
    assert claim(store, holder, since=time.time() + 1) == [1]  # the next run retries it


def test_the_heartbeat_renews_leases_and_reports_workers_then_gives_everything_back(tmp_path):
    from dpo_engine.executors import WorkerView

    store = store_with(tmp_path, n=2)
    view = WorkerView("w0", "cpu", 123, state="working", stage="sample", items=4, busy=2.0)
    holder = Holder(store.path, lease=0.3, workers=lambda: [view]).start()
    try:
        assert claim(store, holder.token, lease=0.3) == [0, 1]
        time.sleep(0.8)  # longer than the lease: only renewal keeps them
        other = f"{socket.gethostname()}@{os.getpid()}:other"
        assert claim(store, other) == []
        (row,) = store.workers()
        assert (row.id, row.state, row.stage, row.items_per_s) == ("123/w0", "working", "sample", 2.0)
        assert time.time() - row.heartbeat < 0.5
    finally:
        holder.stop()
    assert store.lease_holders() == {}
