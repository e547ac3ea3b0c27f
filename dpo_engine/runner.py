"""The runner: decides what is pending per stage, hands batches to an executor, commits results.

For each stage in order it asks the store for records still pending under the stage's
current settings hash, loads them in batches and streams those batches to the executor; each
result it gets back is committed, outputs and the records' new state together, in one
transaction. The runner is the only writer to the store. Where a batch runs and which model
it runs on is the executor's business (``dpo_engine.executors``); a batch that raises is
retried there one record at a time, so one bad record fails alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .config import RunConfig
from .executors import Executor
from .executors.inprocess import InProcessExecutor
from .observer import Observer, Silent
from .pipelines import downstream, stage_hashes
from .stage import Batch
from .store import Store


@dataclass
class StageReport:
    name: str
    computed: int = 0
    reused: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    errors: tuple[str, ...] = ()


def _merged(first: StageReport, again: StageReport) -> StageReport:
    return StageReport(first.name, first.computed + again.computed, first.reused, again.failed,
                       first.tokens + again.tokens, first.seconds + again.seconds,
                       first.model_seconds + again.model_seconds, first.errors + again.errors)


class Runner:
    def __init__(self, store: Store, stages: Sequence[Any], config: RunConfig, observer: Observer | None = None,
                 executor: Executor | None = None):
        self.store = store
        self.stages = list(stages)
        self.config = config
        self.observer = observer or Silent()
        self.executor = executor or InProcessExecutor()
        self.hashes = stage_hashes(self.stages, config)
        self.poll_seconds = 0.2  # how often a paused run looks for "resume"
        self._paused = False
        self._retry = False

    def run(self) -> list[StageReport]:
        try:
            reports = [self._run_stage(stage) for stage in self.stages]
            while self._retry:  # failed records re-queued from the dashboard: another pass
                self._retry = False
                again = {r.name: r for r in (self._run_stage(stage) for stage in self.stages)}
                reports = [_merged(r, again[r.name]) for r in reports]
            return reports
        finally:
            self.executor.close()

    # ------------------------------------------------------------------ control requests
    def _between_batches(self) -> None:
        """Honour requests from the dashboard: pause (wait here until resumed), retry failed."""
        paused = False
        while True:
            for action in self.store.take_requests():
                if action == "pause":
                    paused = True
                elif action == "resume":
                    paused = False
                elif action == "retry":
                    if self.store.requeue_failed():
                        self._retry = True
            if not paused:
                if self._paused:
                    self._paused = False
                    self.store.heartbeat("running")
                    self.observer.paused(False)
                return
            if not self._paused:
                self._paused = True
                self.store.heartbeat("paused")
                self.observer.paused(True)
            time.sleep(self.poll_seconds)

    # ------------------------------------------------------------------ stages
    def _upstream(self, stage) -> list[tuple[str, str]]:
        return [(name, self.hashes[name]) for name in stage.after]

    def _run_stage(self, stage) -> StageReport:
        h = self.hashes[stage.name]
        upstream = self._upstream(stage)
        pending = self.store.count_pending(stage.name, h, upstream)
        report = StageReport(stage.name, reused=self.store.count_done(stage.name, h))
        self.observer.stage_started(stage.name, pending, report.reused)
        started = time.perf_counter()
        if pending:
            if stage.scope == "run":
                self._run_whole(stage, h, upstream, report)
            else:
                self._run_batches(stage, h, upstream, report)
        report.seconds = time.perf_counter() - started
        self.observer.stage_finished(report)
        return report

    def _run_whole(self, stage, h: str, upstream, report: StageReport) -> None:
        t0 = time.perf_counter()
        (up,) = upstream
        kept = stage.process_run(self.store.iter_pairs_for_filter(up), self.config)
        report.computed = self.store.commit_run_stage(stage.name, h, up, kept, time.perf_counter() - t0)
        report.reused = 0
        self.observer.batch_done(stage.name, report.computed, 0, 0)

    def _batches(self, stage, h: str, upstream) -> Iterator[Batch]:
        """The stage's pending records, a batch at a time, read just before each is handed out."""
        size = stage.batch_size(self.config)
        after = -1
        while True:
            self._between_batches()
            rids = self.store.pending(stage.name, h, upstream, after=after, limit=size)
            if not rids:
                return
            after = rids[-1]
            yield self.store.load_batch(rids, stage.reads)

    def _run_batches(self, stage, h: str, upstream, report: StageReport) -> None:
        later = downstream(self.stages, stage.name)
        errors: list[str] = []
        for result in self.executor.map(stage, self._batches(stage, h, upstream), self.config):
            rids, outputs = result.batch.rids, result.outputs
            self.store.commit(stage.name, h, rids, outputs, writes=stage.writes, downstream=later,
                              seconds=result.seconds)
            failed = len(outputs.failed)
            report.computed += len(rids) - failed
            report.failed += failed
            report.tokens += outputs.tokens
            report.model_seconds += result.model_seconds
            errors.extend(f"record {rid}: {err}" for rid, err in outputs.failed.items())
            self.observer.batch_done(stage.name, len(rids), outputs.tokens, failed)
        report.errors = tuple(errors[:20])
