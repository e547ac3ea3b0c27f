"""This process as a lease holder on a work dir (see ``store.leases``).

A ``Holder`` names the process (host, pid and a start stamp, so a reused pid is a new name) and
runs a heartbeat thread on its own store connection: every beat it renews the process's leases
and writes its workers' rows. ``gone`` tells whether another holder is certainly dead (same host,
pid gone), so its records need not wait for its leases to lapse.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .executors import WorkerView
from .monitor import identity, pid_alive
from .store import Store, WorkerRow


def gone(holder: str) -> bool:
    """Whether the process named ``holder`` is certainly dead: it ran on this host and its pid
    is gone. A holder on another host, or a live pid, is left to its leases' expiry."""
    host, _, rest = holder.rpartition("@")
    pid = rest.split(":", 1)[0]
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


class Holder:
    def __init__(self, db_path: str | Path, lease: float,
                 workers: Callable[[], Sequence[WorkerView]] = tuple):
        pid, host = identity()
        self.token = f"{host}@{pid}:{time.time_ns()}"
        self.lease = lease
        self.db_path = Path(db_path)
        self.workers = workers
        self.interval = min(2.0, lease / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dpo-engine-holder", daemon=True)

    def start(self) -> Holder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating, give back the leases still held and leave the workers' last rows."""
        self._stop.set()
        self._thread.join(timeout=10)
        store = Store(self.db_path)
        try:
            store.release(self.token)
            self._save_workers(store)
        finally:
            store.close()

    def _save_workers(self, store: Store) -> None:
        now = time.time()
        store.save_workers(self.token, [
            WorkerRow(f"{w.pid}/{w.name}", self.token, w.host, w.pid, w.device, w.state, w.stage, w.started,
                      now, w.items, w.busy) for w in self.workers()])

    def _loop(self) -> None:
        store = Store(self.db_path)
        try:
            while True:  # a first beat at once: status shows a new process's workers without delay
                store.renew(self.token, self.lease)
                self._save_workers(store)
                if self._stop.wait(self.interval):
                    return
        finally:
            store.close()
