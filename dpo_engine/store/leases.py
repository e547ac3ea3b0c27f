"""Leases: which process holds which records of a stage, until when, and each process's workers.

Several processes may work on one work dir: the run, and processes that ``--join`` it. Each
takes pending records with ``claim``, which writes a lease per record in the transaction that
picks them, so two processes never hold one record. A holder renews its leases while it lives
(``renew``, from a heartbeat thread) and a batch's commit drops them. A holder that dies
stops renewing: its leases lapse after the lease time and the records are pending again. A
holder known to be dead sooner (its pid is gone) is cleared at once by ``claim``.

A record whose holder died holding it counts a death (``death`` table): a record that kills
its process (a question that eats all memory, an image that crashes native code) would
otherwise be picked up by every rerun and kill it again. Such a record is retried alone, and
one in flight at two deaths is set aside with the reason, so the run goes on without it.

Each holder also keeps one ``worker`` row per worker it drives (the process itself, its worker
processes, or its Ray actors) for ``status`` and the dashboard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from .rows import WorkerRow
from .schema import StoreBase


# A record in flight at this many deaths of the process holding it is set aside.
DEATHS_TO_SET_ASIDE = 2


class StoreLeases(StoreBase):
    def claim(self, stage: str, settings_hash: str, upstream: list[tuple[str, str]], holder: str, *,
              limit: int, lease: float, failed_since: float,
              gone: Callable[[str], bool] | None = None,
              set_aside: list[tuple[int, str, str]] | None = None) -> list[int]:
        """Lease up to ``limit`` pending records of ``stage`` that nobody holds, in rid order.

        Leases that lapsed, and those of holders that ``gone`` says are dead, are dropped first,
        and each of their records counts as in flight at a death: the process holding it was
        killed (kill -9, the OOM killer) or crashed. A pending record with one such death is
        leased alone, before any other, so that if it is what kills the process it dies alone;
        one in flight at ``DEATHS_TO_SET_ASIDE`` deaths is set aside (status 'quarantined', kept
        across runs until ``requeue_failed``) and (rid, idx, reason) appended to ``set_aside``."""
        now = time.time()
        with self.transaction() as c:
            dead = c.execute("SELECT stage, rid, holder FROM lease WHERE expires < ? AND holder != ?",
                             (now, holder)).fetchall()
            c.execute("DELETE FROM lease WHERE expires < ?", (now,))
            if gone is not None:
                for (other,) in c.execute("SELECT DISTINCT holder FROM lease WHERE holder != ? AND expires >= ?",
                                          (holder, now)).fetchall():
                    if gone(other):
                        dead += c.execute("SELECT stage, rid, holder FROM lease WHERE holder = ?",
                                          (other,)).fetchall()
            if dead:
                c.executemany("INSERT INTO death (stage, rid, deaths, last, holder) VALUES (?, ?, 1, ?, ?)"
                              " ON CONFLICT(stage, rid) DO UPDATE SET deaths = deaths + 1, last = excluded.last,"
                              " holder = excluded.holder", [(st, rid, now, who) for st, rid, who in dead])
                c.executemany("DELETE FROM lease WHERE stage = ? AND rid = ?", [(st, rid) for st, rid, _ in dead])
            aside = self._set_aside(c, stage, settings_hash, now)
            if set_aside is not None:
                set_aside.extend(aside)
            free = (self._pending_sql(upstream)
                    + " AND NOT EXISTS (SELECT 1 FROM lease l WHERE l.stage = ? AND l.rid = r.rid)")
            params = self._pending_params(stage, settings_hash, upstream, failed_since) + [stage]
            rids = [row[0] for row in c.execute(
                free + " AND EXISTS (SELECT 1 FROM death d WHERE d.stage = ? AND d.rid = r.rid)"
                " ORDER BY r.rid LIMIT 1", params + [stage])]
            if not rids:
                rids = [row[0] for row in c.execute(free + " ORDER BY r.rid LIMIT ?", params + [limit])]
            c.executemany("INSERT INTO lease (stage, rid, holder, expires) VALUES (?, ?, ?, ?)",
                          [(stage, rid, holder, now + lease) for rid in rids])
        return rids

    @staticmethod
    def _set_aside(c, stage: str, settings_hash: str, now: float) -> list[tuple[int, str, str]]:
        rows = c.execute(
            "SELECT d.rid, r.idx, d.deaths, d.last, d.holder FROM death d JOIN record r USING (rid)"
            " WHERE d.stage = ? AND d.deaths >= ? AND NOT EXISTS (SELECT 1 FROM stage_state s"
            " WHERE s.stage = d.stage AND s.rid = d.rid AND s.settings_hash = ?"
            " AND s.status IN ('done', 'quarantined')) ORDER BY d.rid",
            (stage, DEATHS_TO_SET_ASIDE, settings_hash)).fetchall()
        out = []
        for rid, idx, n, last, who in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last))
            reason = (f"the process died {'twice' if n == 2 else f'{n} times'} while this record was in flight in "
                      f"{stage} (last at {when}, {who}); set aside so that the run goes on, "
                      "`dpo-engine retry WORK_DIR` puts it back")
            c.execute("INSERT INTO stage_state (stage, rid, status, settings_hash, attempts, error, finished)"
                      " VALUES (?, ?, 'quarantined', ?, ?, ?, ?) ON CONFLICT(stage, rid) DO UPDATE SET"
                      " status = excluded.status, settings_hash = excluded.settings_hash,"
                      " attempts = excluded.attempts, error = excluded.error, finished = excluded.finished",
                      (stage, rid, settings_hash, n, reason, now))
            out.append((rid, idx, reason))
        return out

    def set_aside_records(self, stage: str, settings_hash: str) -> list[tuple[int, str, str]]:
        """(rid, idx, reason) of the records of ``stage`` set aside under these settings."""
        return self.conn.execute(
            "SELECT s.rid, r.idx, s.error FROM stage_state s JOIN record r USING (rid) WHERE s.stage = ?"
            " AND s.settings_hash = ? AND s.status = 'quarantined' ORDER BY s.rid", (stage, settings_hash)).fetchall()

    def quarantined(self) -> list[tuple[str, str, str]]:
        """(stage, idx, reason) of every record set aside after deaths."""
        return self.conn.execute(
            "SELECT s.stage, r.idx, s.error FROM stage_state s JOIN record r USING (rid)"
            " WHERE s.status = 'quarantined' ORDER BY s.stage, s.rid").fetchall()

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
