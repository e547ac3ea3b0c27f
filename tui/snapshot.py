"""One immutable picture of a run, read from the store: what every widget draws from.

``take_snapshot`` only reads (through the store's read API), so the dashboard can be opened
on a live run, a finished one or a crashed one, from any terminal, without slowing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpo_engine.monitor import run_state
from dpo_engine.store import DeviceSample, Failure, Store, WorkerRow

WINDOW = 10.0  # seconds over which "now" rates are measured
HISTORY = 120.0  # seconds of throughput and device history shown
BUCKETS = 40


@dataclass(frozen=True)
class StageView:
    name: str
    done: int
    pending: int
    failed: int
    invalid: int
    items_now: float | None  # per second over the last WINDOW seconds
    items_avg: float | None
    tokens_now: float | None
    tokens_avg: float | None
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.done + self.pending + self.failed


@dataclass(frozen=True)
class Snapshot:
    now: float
    pipeline: str | None
    dataset: str | None
    models: dict[str, str]
    state: str
    started: float | None
    finished: float | None
    records: tuple[int, int, int]  # total, valid, invalid
    stages: tuple[StageView, ...]
    active: str | None
    rate_history: tuple[float, ...]  # items/s of the active stage, one value per bucket
    devices: dict[str, tuple[DeviceSample, ...]]
    failures: tuple[Failure, ...]
    pending_requests: tuple[str, ...]
    workers: tuple[WorkerRow, ...] = ()

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or self.now) - self.started

    @property
    def eta(self) -> float | None:
        """Seconds left, from each unfinished stage's average rate; None when unknown."""
        if self.state in ("finished", "not started") or not self.stages:
            return None
        total = 0.0
        for s in self.stages:
            if s.pending:
                if not s.items_avg:
                    return None
                total += s.pending / s.items_avg
        return total


    @property
    def active_eta(self) -> float | None:
        """Seconds left in the active stage at its recent (else average) rate."""
        view = next((s for s in self.stages if s.name == self.active), None)
        if view is None or not view.pending or self.state in ("finished", "not started"):
            return None
        speed = view.items_now or view.items_avg
        return view.pending / speed if speed else None


def take_snapshot(store: Store, now: float) -> Snapshot:
    info = store.run_info()
    status = store.status()
    process = store.process_info()
    counts = status.records
    metrics = store.metrics_since(now - HISTORY)
    views = []
    for s in status.stages:
        recent = [m for m in metrics if m.stage == s.name and m.ts >= now - WINDOW]
        tokens = sum(m.tokens for m in recent)
        views.append(StageView(
            s.name, s.done, s.pending, s.failed, counts.invalid,
            sum(m.items for m in recent) / WINDOW if recent else None, s.items_per_s,
            tokens / WINDOW if tokens else None, s.tokens_per_s, s.notes,
        ))
    active = metrics[-1].stage if metrics else None
    if process is not None and process.finished is None:
        waiting = [v.name for v in views if v.pending]
        active = waiting[0] if waiting else active
    width = HISTORY / BUCKETS
    history = [0.0] * BUCKETS
    for m in metrics:
        if m.stage == active and m.ts >= now - HISTORY:
            history[min(BUCKETS - 1, int((m.ts - (now - HISTORY)) / width))] += m.items / width
    devices: dict[str, list[DeviceSample]] = {}
    for d in store.device_samples(now - HISTORY):
        devices.setdefault(d.device, []).append(d)
    state = run_state(process, now)
    if state == "not started" and views and all(v.pending == 0 and v.done for v in views):
        state = "finished"  # a store written before runs recorded their process
    return Snapshot(
        now=now,
        pipeline=info.pipeline if info else None,
        dataset=info.dataset if info else None,
        models=(process.models if process else {}) or {},
        state=state,
        started=process.started if process else None,
        finished=process.finished if process else None,
        records=(counts.total, counts.valid, counts.invalid),
        stages=tuple(views),
        active=active,
        rate_history=tuple(history),
        devices={k: tuple(v) for k, v in devices.items()},
        failures=tuple(store.recent_failures(20)),
        pending_requests=tuple(store.pending_requests()),
        workers=tuple(status.workers),
    )
