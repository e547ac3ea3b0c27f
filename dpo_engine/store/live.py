"""The live view: the running process's heartbeat, device load and throughput over time,
recent failures, and the control requests a dashboard sends to the run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from .rows import DeviceSample, Failure, MetricRow, ProcessInfo
from .schema import StoreBase

CONTROL_ACTIONS = ("pause", "resume", "retry")


class StoreLive(StoreBase):
    # ------------------------------------------------------------------ the live process
    def process_started(self, pid: int, host: str, models: dict[str, str], *,
                        refuse: Callable[[ProcessInfo], bool] | None = None) -> ProcessInfo | None:
        """Record this process as the work dir's run. With ``refuse``, the process recorded
        before is read in the same transaction; if ``refuse(it)`` is true nothing is written and
        it is returned (two runs starting at once cannot both pass)."""
        now = time.time()
        with self.transaction() as c:
            if refuse is not None:
                before = self.process_info()
                if before is not None and refuse(before):
                    return before
            c.execute("INSERT INTO process (id, pid, host, started, heartbeat, finished, state, models)"
                      " VALUES (1, ?, ?, ?, ?, NULL, 'running', ?) ON CONFLICT(id) DO UPDATE SET"
                      " pid = excluded.pid, host = excluded.host, started = excluded.started,"
                      " heartbeat = excluded.heartbeat, finished = NULL, state = 'running',"
                      " models = excluded.models", (pid, host, now, now, json.dumps(models)))
            # Requests left from an earlier run do not apply to this one.
            c.execute("UPDATE control SET handled = ? WHERE handled IS NULL AND action != 'retry'", (now,))
        return None

    def heartbeat(self, state: str | None = None) -> None:
        sql = "UPDATE process SET heartbeat = ?" + (", state = ?" if state else "") + " WHERE id = 1"
        with self.transaction() as c:
            c.execute(sql, (time.time(), state) if state else (time.time(),))

    def process_finished(self, state: str = "finished") -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute("UPDATE process SET finished = ?, heartbeat = ?, state = ? WHERE id = 1", (now, now, state))

    def process_info(self) -> ProcessInfo | None:
        row = self.conn.execute(
            "SELECT pid, host, started, heartbeat, finished, state, models FROM process WHERE id = 1").fetchone()
        if row is None:
            return None
        return ProcessInfo(*row[:6], json.loads(row[6] or "{}"))

    def add_device_samples(self, samples: list[tuple[str, float | None, float | None, float | None]]) -> None:
        now = time.time()
        with self.transaction() as c:
            c.executemany("INSERT INTO device_sample (ts, device, util, mem_used, mem_total) VALUES (?, ?, ?, ?, ?)",
                          [(now, *s) for s in samples])

    def device_samples(self, since: float) -> list[DeviceSample]:
        return [DeviceSample(*row) for row in self.conn.execute(
            "SELECT ts, device, util, mem_used, mem_total FROM device_sample WHERE ts >= ? ORDER BY ts, id",
            (since,))]

    def metrics_since(self, since: float) -> list[MetricRow]:
        """Per-batch throughput rows (ts, stage, items, tokens, seconds), oldest first."""
        return [MetricRow(*row) for row in self.conn.execute(
            "SELECT ts, stage, items, tokens, seconds FROM metric WHERE ts >= ? ORDER BY ts, id", (since,))]

    def recent_failures(self, limit: int = 20) -> list[Failure]:
        return [Failure(*row) for row in self.conn.execute(
            "SELECT s.stage, s.rid, r.idx, s.error, s.attempts, s.finished FROM stage_state s"
            " JOIN record r USING (rid) WHERE s.status = 'failed' ORDER BY s.finished DESC LIMIT ?", (limit,))]

    # ------------------------------------------------------------------ control requests
    def request(self, action: str) -> None:
        """Ask the live run for something ("pause", "resume", "retry"); it acts between batches."""
        if action not in CONTROL_ACTIONS:
            raise ValueError(action)
        with self.transaction() as c:
            c.execute("INSERT INTO control (ts, action) VALUES (?, ?)", (time.time(), action))

    def take_requests(self) -> list[str]:
        """The unhandled requests in order, marked handled."""
        if self.conn.execute("SELECT 1 FROM control WHERE handled IS NULL LIMIT 1").fetchone() is None:
            return []  # the common case, without taking the write lock
        with self.transaction() as c:
            rows = c.execute("SELECT id, action FROM control WHERE handled IS NULL ORDER BY id").fetchall()
            if rows:
                c.execute("UPDATE control SET handled = ? WHERE handled IS NULL", (time.time(),))
        return [action for _, action in rows]

    def pending_requests(self) -> list[str]:
        return [a for (a,) in self.conn.execute("SELECT action FROM control WHERE handled IS NULL ORDER BY id")]

    def forget_stages(self, stages: list[str]) -> int:
        """Make every record pending again in these stages (their results are replaced as they
        are recomputed)."""
        with self.transaction() as c:
            return c.execute(f"DELETE FROM stage_state WHERE stage IN ({','.join('?' * len(stages))})",
                             stages).rowcount

    def requeue_failed(self) -> int:
        """Forget failed states, those set aside after deaths included (and the deaths), so the
        failed records are pending again."""
        with self.transaction() as c:
            c.execute("DELETE FROM death WHERE EXISTS (SELECT 1 FROM stage_state s WHERE s.stage = death.stage"
                      " AND s.rid = death.rid AND s.status = 'quarantined')")
            return c.execute("DELETE FROM stage_state WHERE status IN ('failed', 'quarantined')").rowcount
