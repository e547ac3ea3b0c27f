"""Ray actors: batches run on a Ray cluster, local (started here) or remote (``address``).

The same contract as the worker processes: each actor opens the model a stage's role needs
once and keeps it while batches of that role keep coming; the driver (the runner, here) hands
each idle actor the next pending batch and commits what comes back, so the store keeps one
writer and the output is the one a single process writes.

An actor that dies (killed, out of memory, its node lost) has committed nothing: a fresh actor
starts in its place and the batch is redone there one record at a time; a record that took an
actor down twice, the second time alone, fails with the reason and the run goes on, as with
the worker processes (``Deaths``). No record is computed twice into the store.
Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError
from ..roles import Role, RoleModels
from ..stage import Batch
from . import BatchResult, Deaths, HeldModel, WorkerView

NAMESPACE = "dpo-engine"  # where the actors are named, e.g. for ray.get_actor(name, namespace=NAMESPACE)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the Ray executor needs Ray, which is not installed",
                          "install the ray extra: pip install -c constraints.txt -e '.[ray]'") from exc
    return ray


class _Actor:
    """One actor's life: a model held between batches, and a batch run on it per call."""

    def __init__(self, config: RunConfig, roles: Sequence[Role], threads: int):
        import torch

        torch.set_num_threads(threads)
        self.held = HeldModel(RoleModels(config, roles))

    def process(self, stage: Any, batch: Batch, config: Any) -> tuple:
        """The batch's outputs and timings, and where it ran (for the run's worker views)."""
        return (*self.held.process(stage, batch, config), os.getpid(), socket.gethostname())


class RayExecutor:
    """``actors`` Ray actors, each with one GPU when ``config.device`` is CUDA (``num_gpus``
    overrides that, e.g. 0.5 to put two on a GPU), else one CPU.

    ``config`` is the engine's resolved one (a device, not "auto"), as for the worker
    processes: it decides whether the actors ask Ray for GPUs, and the run's settings must
    name the device and dtype the actors compute with."""

    def __init__(self, config: RunConfig, roles: Sequence[Role], actors: int, *, address: str | None = None,
                 threads: int | None = None, num_gpus: float = 0.0):
        if actors < 1:
            raise ConfigError("the Ray executor needs at least one actor")
        if config.device == "auto":  # each actor would resolve it for itself, maybe unlike the run
            raise ConfigError("the Ray executor needs a resolved device (cpu, cuda), not auto")
        self._ray = _ray()
        cuda = config.device.startswith("cuda")
        # Ray hands each GPU actor its own device(s) as CUDA_VISIBLE_DEVICES, so inside it
        # "cuda" is the one it was given, whatever index the driver named.
        self.config = replace(config, device="cuda") if cuda else config
        self.roles = tuple(roles)
        self.actors = actors
        self.address = address
        self.threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or 1
        gpus = num_gpus or (1.0 if cuda else 0.0)
        self._resources = {"num_gpus": gpus} if gpus else {"num_cpus": 1}
        self._prefix = f"dpo-engine-{uuid.uuid4().hex[:8]}"  # two runs may share one cluster
        self.load_seconds = 0.0
        self.replaced = 0  # actors that died and were started again
        self.actor_names: list[str] = []
        self.workers = [WorkerView(f"ray{slot}", self.config.device) for slot in range(actors)]
        self._handles: list[Any] = []
        self._started = 0
        self._owns_ray = False
        self._open()

    def _open(self) -> None:
        """Join or start Ray and start the actors (now: their imports overlap the driver's work)."""
        ray = self._ray
        if not ray.is_initialized():
            local = {} if self.address else {"num_cpus": max(os.cpu_count() or 1, self.actors)}
            ray.init(address=self.address, namespace=NAMESPACE, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR, **local)
            self._owns_ray = True
        self._remote = ray.remote(_Actor)
        self.actor_names = [""] * self.actors
        self._handles = [None] * self.actors
        for slot in range(self.actors):
            self._start(slot)

    def _start(self, slot: int) -> None:
        name = f"{self._prefix}-{self._started}"
        self._started += 1
        self._handles[slot] = self._remote.options(name=name, namespace=NAMESPACE, max_restarts=0,
                                                   **self._resources).remote(self.config, self.roles, self.threads)
        self.actor_names[slot] = name
        view = self.workers[slot]
        view.pid, view.state, view.stage = None, "starting", None

    def _replace(self, slot: int) -> None:
        self._ray.kill(self._handles[slot])  # it may be unreachable rather than dead
        self._start(slot)
        self.replaced += 1

    def map(self, stage: Any, batches: Iterable[Batch], config: Any) -> Iterator[BatchResult]:
        ray = self._ray
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError)
        if not self._handles:
            self._open()
        stage_ref, config_ref = ray.put(stage), ray.put(config)  # shipped once, not per batch
        pending = iter(batches)
        idle = list(range(self.actors))
        inflight: dict[Any, tuple[int, Batch]] = {}  # result ref -> (actor slot, batch)
        retry: list[Batch] = []  # records of batches whose actors died, to redo one by one
        deaths = Deaths()
        exhausted = False
        while True:
            while idle and (retry or not exhausted):
                batch = retry.pop() if retry else next(pending, None)
                if batch is None:
                    exhausted = True
                    break
                slot = idle.pop(0)
                inflight[self._handles[slot].process.remote(stage_ref, batch, config_ref)] = (slot, batch)
                self.workers[slot].begin(stage.name)
            if not inflight:
                return
            (done,), _ = ray.wait(list(inflight), num_returns=1)
            slot, batch = inflight.pop(done)
            idle.append(slot)
            try:
                outputs, seconds, in_model, load, pid, host = ray.get(done)
            except lost as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise  # its __init__ raised: a fresh actor would do the same
                redo, failed = deaths.lost(batch, f"Ray actor {self.actor_names[slot]}", type(exc).__name__)
                self._replace(slot)
                retry.extend(redo)
                if failed is not None:
                    yield failed
                continue
            except ray.exceptions.RayTaskError as exc:
                raise exc.cause from exc  # e.g. a model that cannot be opened: raised as itself
            view = self.workers[slot]
            view.pid, view.host = pid, host
            view.finish(len(batch.rids), seconds)
            self.load_seconds += load
            yield BatchResult(batch, outputs, seconds, in_model)

    def close(self) -> None:
        """Stop our actors (their processes free the models' memory), and Ray if we started it."""
        for handle in self._handles:
            self._ray.kill(handle)
        self._handles, self.actor_names = [], []
        for view in self.workers:
            view.state, view.stage = "stopped", None
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
