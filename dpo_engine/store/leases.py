"""Leases: which process holds which records of a stage, until when, and each process's workers.

Several processes may work on one work dir: the run, and processes that ``--join`` it. Each
takes pending records with ``claim``, which writes a lease per record in the transaction that
picks them, so two processes never hold one record. A holder renews its leases while it lives
(``renew``, from a heartbeat thread) and a batch's commit drops them. A holder that dies
stops renewing: its leases lapse after the lease time and the records are pending again. A
holder known to be dead sooner (its pid is gone) is cleared at once by ``claim``.

Each holder also keeps one ``worker`` row per worker it drives (the process itself, its worker
processes, or its Ray actors) for ``status`` and the dashboard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from .rows import WorkerRow
from .schema import StoreBase


class StoreLeases(StoreBase):
    def claim(self, stage: str, settings_hash: str, upstream: list[tuple[str, str]], holder: str, *,
              limit: int, lease: float, failed_since: float,
              gone: Callable[[str], bool] | None = None) -> list[int]:
        """Lease up to ``limit`` pending records of ``stage`` that nobody holds, in rid order.

        Leases that lapsed, and those of holders that ``gone`` says are dead, are dropped first."""
        now = time.time()
        with self.transaction() as c:
            c.execute("DELETE FROM lease WHERE expires < ?", (now,))
            if gone is not None:
                for (other,) in c.execute("SELECT DISTINCT holder FROM lease WHERE holder != ?",
                                          (holder,)).fetchall():
                    if gone(other):
                        c.execute("DELETE FROM lease WHERE holder = ?", (other,))
            sql = (self._pending_sql(upstream)
                   + " AND NOT EXISTS (SELECT 1 FROM lease l WHERE l.stage = ? AND l.rid = r.rid)"
                   + " ORDER BY r.rid LIMIT ?")
            params = self._pending_params(stage, settings_hash, upstream, failed_since) + [stage, limit]
            rids = [row[0] for row in c.execute(sql, params)]
            c.executemany("INSERT INTO lease (stage, rid, holder, expires) VALUES (?, ?, ?, ?)",
                          [(stage, rid, holder, now + lease) for rid in rids])
        return rids

    def renew(self, holder: str, lease: float) -> int:
        """Push ``holder``'s leases ``lease`` seconds into the future; how many it holds."""
        with self.transaction() as c:
            return c.execute("UPDATE lease SET expires = ? WHERE holder = ?",
                             (time.time() + lease, holder)).rowcount

    def release(self, holder: str) -> None:
        """Give back everything ``holder`` still holds (a process that stops cleanly)."""
        with self.transaction() as c:
            c.execute("DELETE FROM lease WHERE holder = ?", (holder,))

    def lease_holders(self) -> dict[str, int]:
        """Who holds leases now, and how many (lapsed ones not counted)."""
        return dict(self.conn.execute("SELECT holder, COUNT(*) FROM lease WHERE expires >= ?"
                                      " GROUP BY holder ORDER BY holder", (time.time(),)).fetchall())

    # ------------------------------------------------------------------ workers
    def save_workers(self, holder: str, rows: Iterable[WorkerRow]) -> None:
        """Replace ``holder``'s worker rows with ``rows`` (a heartbeat of each)."""
        with self.transaction() as c:
            c.execute("DELETE FROM worker WHERE holder = ?", (holder,))
            c.executemany(
                "INSERT INTO worker (id, holder, host, pid, device, state, stage, started, heartbeat, items, busy)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(w.id, holder, w.host, w.pid, w.device, w.state, w.stage, w.started, w.heartbeat,
                  w.items, w.busy) for w in rows])

    def forget_workers(self, gone: Callable[[str], bool]) -> None:
        """Drop the rows of holders that stopped (every worker stopped) or that ``gone`` says died."""
        with self.transaction() as c:
            holders = [h for (h,) in c.execute("SELECT DISTINCT holder FROM worker").fetchall()]
            for holder in holders:
                states = {s for (s,) in c.execute("SELECT state FROM worker WHERE holder = ?", (holder,))}
                if states <= {"stopped"} or gone(holder):
                    c.execute("DELETE FROM worker WHERE holder = ?", (holder,))

    def workers(self) -> list[WorkerRow]:
        return [WorkerRow(*row) for row in self.conn.execute(
            "SELECT id, holder, host, pid, device, state, stage, started, heartbeat, items, busy"
            " FROM worker ORDER BY started, id")]
