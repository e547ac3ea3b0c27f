"""The runner: claims pending work per stage, batches it, calls the stage, commits the result.

For each stage in order it asks the store for records still pending under the stage's
current settings hash, in batches, calls the stage and commits the batch's outputs with the
records' new state in one transaction. A batch that raises is retried one record at a time,
so one bad record fails alone and never stops the others. Models are opened only when a
stage has pending work and are kept while consecutive stages use the same one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from .config import RunConfig
from .pipelines import downstream, stage_hashes
from .stage import Outputs
from .store import Store


class Observer(Protocol):
    def stage_started(self, name: str, pending: int, reused: int) -> None: ...

    def batch_done(self, name: str, items: int, tokens: int, failed: int) -> None: ...

    def stage_finished(self, report: StageReport) -> None: ...


class _Silent:
    def stage_started(self, name, pending, reused):
        pass

    def batch_done(self, name, items, tokens, failed):
        pass

    def stage_finished(self, report):
        pass


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
    def __init__(self, store: Store, stages: list, config: RunConfig, observer: Observer | None = None):
        self.store = store
        self.stages = stages
        self.config = config
        self.observer = observer or _Silent()
        self.hashes = stage_hashes(stages, config)
        self._model_key: Any = None
        self._model: Any = None
        self.model_load_seconds = 0.0
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
            self._release_model()

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
                    getattr(self.observer, "paused", lambda flag: None)(False)
                return
            if not self._paused:
                self._paused = True
                self.store.heartbeat("paused")
                getattr(self.observer, "paused", lambda flag: None)(True)
            time.sleep(self.poll_seconds)

    # ------------------------------------------------------------------ models
    def _model_for(self, stage) -> Any:
        key = stage.model_key(self.config)
        if key is None:
            return None
        if key != self._model_key:
            self._release_model()
            t0 = time.perf_counter()
            self._model = stage.open_model(self.config)
            self.model_load_seconds += time.perf_counter() - t0
            self._model_key = key
        return self._model

    def _release_model(self) -> None:
        if self._model is not None and hasattr(self._model, "close"):
            self._model.close()
        self._model, self._model_key = None, None

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

    def _run_batches(self, stage, h: str, upstream, report: StageReport) -> None:
        size = stage.batch_size(self.config)
        later = downstream(self.stages, stage.name)
        errors: list[str] = []
        after = -1
        model, loaded, busy_before = None, False, 0.0
        while True:
            self._between_batches()
            rids = self.store.pending(stage.name, h, upstream, after=after, limit=size)
            if not rids:
                break
            after = rids[-1]
            if not loaded:  # only a stage with pending work loads its model
                model, loaded = self._model_for(stage), True
                busy_before = getattr(model, "model_seconds", 0.0)
            t0 = time.perf_counter()
            outputs = self._process(stage, rids, model)
            seconds = time.perf_counter() - t0
            self.store.commit(stage.name, h, rids, outputs, writes=stage.writes, downstream=later,
                              seconds=seconds)
            failed = len(outputs.failed)
            report.computed += len(rids) - failed
            report.failed += failed
            report.tokens += outputs.tokens
            errors.extend(f"record {rid}: {err}" for rid, err in outputs.failed.items())
            self.observer.batch_done(stage.name, len(rids), outputs.tokens, failed)
        if loaded:
            report.model_seconds = getattr(model, "model_seconds", 0.0) - busy_before
        report.errors = tuple(errors[:20])

    def _process(self, stage, rids: list[int], model) -> Outputs:
        batch = self.store.load_batch(rids, stage.reads)
        try:
            return stage.process(batch, model, self.config)
        except Exception as exc:  # noqa: BLE001 - any failure of one batch is contained
            if len(rids) == 1:
                return Outputs(failed={rids[0]: f"{type(exc).__name__}: {exc}"[:500]})
        merged = Outputs()
        for rid in rids:  # find the record(s) at fault; the others still get done
            merged.merge(self._process(stage, [rid], model))
        return merged
