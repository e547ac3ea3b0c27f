"""The runner: decides what is pending per stage, hands batches to an executor, commits results.

For each stage in order it leases a batch of records still pending under the stage's current
settings hash, loads it and streams it to the executor; each result it gets back is committed,
outputs, the records' new state and the release of their leases together, in one transaction.
In one process the runner is the only writer of results. Other processes may ``--join`` the
work dir with runners of their own: leases (``store.leases``) keep them off each other's
records, and each runner moves to the next stage only when the stage is done everywhere, so
stages run in pipeline order. Where a batch runs and which model it runs on is the executor's
business (``dpo_engine.executors``); a batch that raises is retried there one record at a
time, so one bad record fails alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .config import RunConfig
from .executors import Executor
from .executors.inprocess import InProcessExecutor
from .holder import Holder, gone
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
    lost: int = 0  # records whose lease another process took over before we committed
    split_batches: int = 0  # batches that failed whole and ran record by record


def _merged(first: StageReport, again: StageReport) -> StageReport:
    return StageReport(first.name, first.computed + again.computed, first.reused, again.failed,
                       first.tokens + again.tokens, first.seconds + again.seconds,
                       first.model_seconds + again.model_seconds, first.errors + again.errors,
                       first.lost + again.lost, first.split_batches + again.split_batches)


class Runner:
    def __init__(self, store: Store, stages: Sequence[Any], config: RunConfig, observer: Observer | None = None,
                 executor: Executor | None = None, *, controls: bool = True):
        self.store = store
        self.stages = list(stages)
        self.config = config
        self.observer = observer or Silent()
        self.executor = executor or InProcessExecutor()
        self.hashes = stage_hashes(self.stages, config)
        self.poll_seconds = 0.2  # how often a paused run looks for "resume", or a waiting one for work
        self.holder = Holder(store.path, config.lease_seconds, lambda: getattr(self.executor, "workers", ()))
        self.started = time.time()  # records that fail from now on are not retried in this pass
        self.controls = controls  # the run's own process takes the dashboard's requests; joiners do not
        self._paused = False
        self._retry = False

    def run(self) -> list[StageReport]:
        self.started = time.time()
        self.holder.start()
        try:
            reports = [self._run_stage(stage) for stage in self.stages]
            while self._retry:  # failed records re-queued from the dashboard: another pass
                self._retry = False
                again = {r.name: r for r in (self._run_stage(stage) for stage in self.stages)}
                reports = [_merged(r, again[r.name]) for r in reports]
            return reports
        finally:
            try:
                self.executor.close()
            finally:
                self.holder.stop()

    # ------------------------------------------------------------------ control requests
    def _between_batches(self) -> None:
        """Honour requests from the dashboard: pause (wait here until resumed), retry failed."""
        if not self.controls:
            return
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
        errors: list[str] = []
        for rid, idx, reason in self.store.set_aside_records(stage.name, h):  # by an earlier run
            report.failed += 1
            errors.append(f"record {rid} ({idx}): {reason}")
        started = time.perf_counter()
        if pending:
            if stage.scope == "run":
                self._run_whole(stage, h, upstream, report)
            else:
                self._run_batches(stage, h, upstream, report, errors)
        report.errors = tuple(errors[:20])
        report.seconds = time.perf_counter() - started
        self.observer.stage_finished(report)
        return report

    def _run_whole(self, stage, h: str, upstream, report: StageReport) -> None:
        t0 = time.perf_counter()
        (up,) = upstream
        # A filter may ask for the pairs' texts in place of their word counts (optional: the
        # pipeline API's run-scope stages need not know of it).
        texts = getattr(stage, "wants_texts", lambda config: False)(self.config)
        kept = stage.process_run(self.store.iter_pairs_for_filter(up, texts), self.config)
        report.computed = self.store.commit_run_stage(stage.name, h, up, kept, time.perf_counter() - t0)
        report.reused = 0
        self.observer.batch_done(stage.name, report.computed, 0, 0)

    def _batches(self, stage, h: str, upstream, report: StageReport, errors: list[str]) -> Iterator[Batch]:
        """The stage's pending records that nobody else holds, a batch at a time, leased and
        read just before each is handed out. Records set aside after deaths (see
        ``Store.claim``) are counted as failed and named."""
        size = stage.batch_size(self.config)
        while True:
            self._between_batches()
            aside: list[tuple[int, str, str]] = []
            rids = self.store.claim(stage.name, h, upstream, self.holder.token, limit=size,
                                    lease=self.holder.lease, failed_since=self.started, gone=gone, set_aside=aside)
            for rid, idx, reason in aside:
                report.failed += 1
                errors.append(f"record {rid} ({idx}): {reason}")
                self.observer.note(f"{stage.name}: record {idx} set aside: {reason}", "warning")
            if not rids:
                return
            yield self.store.load_batch(rids, stage.reads)

    def _run_batches(self, stage, h: str, upstream, report: StageReport, errors: list[str]) -> None:
        later = downstream(self.stages, stage.name)
        waiting = False
        while True:
            for result in self.executor.map(stage, self._batches(stage, h, upstream, report, errors), self.config):
                rids, outputs = result.batch.rids, result.outputs
                if not self.store.commit(stage.name, h, rids, outputs, writes=stage.writes, downstream=later,
                                         seconds=result.seconds, holder=self.holder.token):
                    report.lost += len(rids)  # our lease lapsed and another process redid them
                    continue
                failed = len(outputs.failed)
                report.computed += len(rids) - failed
                report.failed += failed
                report.tokens += outputs.tokens
                report.model_seconds += result.model_seconds
                errors.extend(f"record {rid}: {err}" for rid, err in outputs.failed.items())
                if outputs.split:
                    if not report.split_batches:  # said once per stage; the count is in the report
                        self.observer.note(f"{stage.name}: {outputs.split}", "warning")
                    report.split_batches += 1
                self.observer.batch_done(stage.name, len(rids), outputs.tokens, failed)
            # What is left is held by other processes on this work dir: wait until they commit
            # it, or until their leases lapse and it can be taken here.
            left = self.store.count_pending(stage.name, h, upstream, failed_since=self.started)
            if not left:
                break
            if not waiting:
                waiting = True
                self.observer.note(f"{stage.name}: waiting for {left} records other processes hold", "detail")
            self._between_batches()
            time.sleep(self.poll_seconds)
