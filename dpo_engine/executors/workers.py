"""Worker processes: one per device (``--devices cuda:0,cuda:1``) or N on one (``--workers N``).

Each worker is a spawned process that opens the model a stage's role needs once and keeps it
while batches of that role keep coming; the driver (the runner, in the parent process) hands
each idle worker the next pending batch and commits what comes back, so the store still has
one writer. Results may come back in any order: commits are per record, and every record's
result depends only on its own inputs and seeds, so the output is the same as one worker's.

A worker that dies (kill -9, out of memory, a lost GPU) has committed nothing: its batch goes
to a fresh worker started in its place, and no record is computed twice into the store.

Each worker answers through a pipe of its own, which only it writes: a worker killed in the
middle of an answer leaves a cut message and an end of file behind, never a lock held for the
others (a queue shared by all workers hung a run that way: its write lock died held).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any

from ..config import RunConfig
from ..roles import Role, RoleModels
from ..stage import Batch
from . import BatchResult, Deaths, HeldModel, WorkerView

POLL_SECONDS = 0.5  # how often the driver looks for dead workers while it waits


def _worker(config: RunConfig, roles: Sequence[Role], threads: int, tasks, results, driver: int) -> None:
    """A worker's life: take (task id, stage, batch), answer (task id, outputs, timings) on
    ``results``, the write end of its own pipe."""
    import torch

    from ..lifetime import die_with_parent

    die_with_parent(driver)  # a driver killed mid-batch takes its workers with it
    torch.set_num_threads(threads)
    held = HeldModel(RoleModels(config, roles))
    parent = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # the driver was killed: nobody will read our results
                break
            continue
        if task is None:
            break
        task_id, stage, batch = task
        try:
            answer = (task_id, *held.process(stage, batch, config), None)
        except Exception as exc:  # noqa: BLE001 - e.g. a model that cannot be opened: the driver raises it
            answer = (task_id, None, 0.0, 0.0, 0.0, exc)
        results.send(answer)
    held.close()


class WorkerPoolExecutor:
    def __init__(self, config: RunConfig, roles: Sequence[Role], devices: Sequence[str], *,
                 threads: int | None = None):
        self.config = config
        self.roles = tuple(roles)
        self.devices = list(devices)
        # OMP_NUM_THREADS, when set, is each process's thread count, as torch reads it in one process.
        self.threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or \
            max(1, (os.cpu_count() or 1) // len(self.devices))
        self.load_seconds = 0.0
        self._ctx = mp.get_context("spawn")  # CUDA and forked processes do not mix
        self._workers: list[tuple[Any, Any, Any] | None] = [None] * len(self.devices)  # (process, tasks, answers)
        self.workers = [WorkerView(f"w{wid}", device) for wid, device in enumerate(self.devices)]
        for wid in range(len(self.devices)):  # started now: their imports overlap the driver's work
            self._start(wid)

    def _start(self, wid: int) -> None:
        tasks = self._ctx.Queue()
        answers, results = self._ctx.Pipe(duplex=False)
        config = replace(self.config, device=self.devices[wid])
        proc = self._ctx.Process(target=_worker, args=(config, self.roles, self.threads, tasks, results,
                                                          os.getpid()),
                                 name=f"dpo-engine-worker-{wid}", daemon=True)
        proc.start()
        results.close()  # the worker holds the only write end: its death reads as an end of file here
        self._workers[wid] = (proc, tasks, answers)
        view = self.workers[wid]
        view.pid, view.state, view.stage = proc.pid, "starting", None

    def map(self, stage: Any, batches: Iterable[Batch], config: Any) -> Iterator[BatchResult]:
        for wid, worker in enumerate(self._workers):
            if worker is None:
                self._start(wid)
        pending = iter(batches)
        idle = list(range(len(self._workers)))
        inflight: dict[int, tuple[int, Batch]] = {}  # worker -> (task id, batch)
        retry: list[Batch] = []  # batches of workers that died
        given_up: list[BatchResult] = []  # records a worker died on twice, alone
        deaths = Deaths()
        next_id, exhausted = 0, False
        while True:
            while given_up:
                yield given_up.pop(0)
            while idle and (retry or not exhausted):
                batch = retry.pop() if retry else next(pending, None)
                if batch is None:
                    exhausted = True
                    break
                wid = idle.pop(0)
                self._workers[wid][1].put((next_id, stage, batch))
                self.workers[wid].begin(stage.name)
                inflight[wid] = (next_id, batch)
                next_id += 1
            if not inflight:
                return
            ready = wait([self._workers[w][2] for w in inflight], timeout=POLL_SECONDS)
            if not ready:
                self._replace_dead(inflight, idle, retry, given_up, deaths)
                continue
            wid = next(w for w in inflight if self._workers[w][2] is ready[0])
            try:
                task_id, outputs, seconds, in_model, load, error = ready[0].recv()
            except (EOFError, OSError):  # it died before or while answering
                self._workers[wid][0].join(timeout=5)
                self._replace_dead(inflight, idle, retry, given_up, deaths)
                continue
            _, batch = inflight.pop(wid)
            idle.append(wid)
            if error is not None:
                raise error
            self.workers[wid].finish(len(batch.rids), seconds)
            self.load_seconds += load
            yield BatchResult(batch, outputs, seconds, in_model)

    def _replace_dead(self, inflight: dict, idle: list[int], retry: list[Batch], given_up: list[BatchResult],
                      deaths: Deaths) -> None:
        """Restart dead workers; their batches go to ``deaths`` (redone record by record, or
        failed for a record that took its worker down twice)."""
        for wid, worker in enumerate(self._workers):
            if worker is not None and not worker[0].is_alive():
                code = worker[0].exitcode
                worker[2].close()
                self._start(wid)
                if wid not in inflight:
                    continue
                batch = inflight.pop(wid)[1]
                idle.append(wid)
                redo, failed = deaths.lost(batch, f"worker {wid}", f"exit code {code}")
                retry.extend(redo)
                if failed is not None:
                    given_up.append(failed)

    def close(self) -> None:
        for worker in self._workers:
            if worker is not None:
                worker[1].put(None)
        for worker in self._workers:
            if worker is not None:
                worker[0].join(timeout=30)
                if worker[0].is_alive():
                    worker[0].kill()
                worker[2].close()
        self._workers = [None] * len(self.devices)
        for view in self.workers:
            view.state, view.stage = "stopped", None
