"""The engine: the one API that runs, exports and reports on pipelines. The composition root.

Everything that does a run calls this module: the CLI parses options, calls one function here
and renders what it returns; benchmarks and the demo do the same. Only this module wires the
store, the pipeline's stages, the model roles and an executor together.

Heavy imports (torch through the models, numpy and pyarrow through stages and exports) stay
inside the functions that need them, so ``status`` starts fast.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import RunConfig, model_fingerprint
from .errors import ConfigError, DatasetEmpty, DpoEngineError, ModelError, WorkDirBusy
from .observer import Observer, Silent
from .store import DB_NAME, StatusSnapshot, Store

if TYPE_CHECKING:
    from .training import TrainReport, TrainSettings
    from .executors import Executor
    from .exports import ExportReport
    from .pipelines import Pipeline
    from .runner import StageReport

OUTPUT = Path("dataset") / "dpo_dataset.parquet"  # inside the work dir


@dataclass
class RunSummary:
    pipeline: str
    output: str
    pairs: int
    records: dict[str, int]
    samples: int
    mean_chosen_words: float
    mean_rejected_words: float
    pairs_per_record: float
    seconds: float
    reports: list[StageReport] = field(default_factory=list)
    model_load_seconds: float = 0.0

    @property
    def failed(self) -> int:
        """Record-stages that failed (a rerun retries them)."""
        return sum(r.failed for r in self.reports)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("reports", "model_load_seconds")}
        data["stages"] = [{"name": r.name, "computed": r.computed, "reused": r.reused, "failed": r.failed,
                           "seconds": round(r.seconds, 3)} for r in self.reports]
        return data


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"dpo_engine": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def _resolve_device(config: RunConfig) -> RunConfig:
    from .models.runtime import resolve_device, resolve_dtype

    # Ray actors may have GPUs this driver does not: a named device is theirs to check.
    remote = config.executor == "ray"
    try:
        devices = tuple(d if remote else resolve_device(d) for d in config.devices)
        device = devices[0] if devices else (config.device if remote and config.device != "auto"
                                             else resolve_device(config.device))
        dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    except (RuntimeError, ValueError) as exc:
        raise ModelError(str(exc)) from exc
    return replace(config, device=device, devices=devices, dtype=dtype)


def _ingest(store: Store, source, config: RunConfig, observer: Observer, rows_share_idx: bool = False) -> None:
    from .ingest import ingest

    dataset = config.dataset
    report = ingest(store, source, rows_share_idx=rows_share_idx, copy_images=config.copy_images)
    counts = store.record_counts()
    observer.note(f"dataset: {counts.total} records ({counts.valid} valid, {counts.invalid} invalid)"
                  + (f", {report.added} new" if report.added and report.added != counts.total else ""))
    for bad in store.invalid_records(limit=5):
        observer.note(f"  invalid row {bad.rid} ({bad.source}): {bad.error}", "warning")
    if counts.invalid > 5:
        observer.note(f"  … and {counts.invalid - 5} more (dpo-engine validate {dataset})", "warning")
    if counts.valid == 0:
        if counts.total == 0:
            raise DatasetEmpty(f"{dataset} holds no rows", "point --dataset at a file or folder with data")
        raise DatasetEmpty(f"none of the {counts.total} rows of {dataset} is valid (the first are named above)",
                           f"`dpo-engine validate {dataset}` lists every bad row and why")


def run_pipeline(config: RunConfig, observer: Observer | None = None, *, restart: bool = False,
                 join: bool = False, pipeline: Pipeline | None = None,
                 executor: Executor | None = None, rerun_from: str | None = None) -> RunSummary:
    """Ingest the dataset, run every stage that has pending work, export, and summarise.

    ``pipeline`` defaults to the registered one named by ``config.pipeline``; ``executor`` to
    the one ``config`` asks for. Resumes by itself: only records not yet done under the current
    settings are computed. With ``join``, work on the live run of ``config.work_dir`` instead
    of starting one: same settings, its records, more workers. ``rerun_from`` names a stage to
    recompute, with every stage after it, for every record (the seed's ``--run_stage``)."""
    from .dataset import open_dataset
    from .exports import export
    from .monitor import Monitor
    from .pipelines import stage_hashes, validate
    from .roles import check_model_folder
    from .runner import Runner

    observer = observer or Silent()
    pipeline = validate(config, pipeline)
    names = [s.name for s in pipeline.stages]
    if rerun_from is not None and rerun_from not in names:
        raise ConfigError(f"--run_stage {rerun_from!r} is not a stage of {pipeline.name}",
                          f"its stages: {', '.join(names)}")
    if rerun_from is not None and join:
        raise ConfigError("--run_stage and --join do not go together", "rerun the stage from the run itself")
    # unreadable data fails here, before any model loads
    source = open_dataset(config.dataset, config.image_root, max_image_pixels=config.max_image_pixels,
                          max_question_chars=config.max_question_chars)
    paths = pipeline.model_paths(config)
    for role in pipeline.roles:
        check_model_folder(paths[role.name], role, config.trust_remote_code)
    work = Path(config.work_dir)
    store = _join(work) if join else _claim(work, paths, restart=restart)
    monitor = None
    try:
        if not join:
            _ingest(store, source, config, observer, pipeline.rows_share_idx)
        config = _resolve_device(config)
        config = replace(config, model_fingerprints={role: model_fingerprint(p) for role, p in paths.items()})
        if pipeline.prepare:
            config, notes = pipeline.prepare(config)
            for line in notes:
                observer.note(line, "warning")
        hashes = stage_hashes(pipeline.stages, config)
        if join:
            _check_joined(store, hashes)
        else:
            backends = {s.name: config.backend_for(getattr(s, "model_use", "generate"))
                        for s in pipeline.stages if s.model_role}
            stage_paths, plain = _stage_paths(config, pipeline, backends)
            for name in plain:  # slower than the other families: say so once, and why
                observer.note(f"{name}: {stage_paths[name]}", "warning")
            store.save_run(pipeline.name, config.dataset,
                           {**asdict(config), "stage_backends": backends, "stage_paths": stage_paths},
                           hashes, _versions())
            if rerun_from is not None:
                from .pipelines import downstream

                again = [rerun_from, *downstream(pipeline.stages, rerun_from)]
                store.forget_stages(again)
                observer.note(f"recomputing {', '.join(again)} for every record")

        started = time.perf_counter()
        if not join:  # the run's own heartbeat and device samples; a joiner beats in its worker rows
            monitor = Monitor(store.path).start()
        executor = executor or _executor(config, pipeline)
        reports = Runner(store, pipeline.stages, config, observer, executor, controls=not join).run()
        _stop_if_nothing_passed(store, pipeline.stages[0].name, hashes, reports)
        final = hashes[pipeline.stages[-1].name]
        out = export(store, work / OUTPUT, "rlaif-v", columns=pipeline.export_columns, settings_hash=final)
        store.mark_complete(final)
        if monitor is not None:
            monitor.stop()
            store.process_finished("finished")
        counts = store.record_counts()
        return RunSummary(
            pipeline=pipeline.name, output=str(out.path), pairs=out.pairs,
            records={"total": counts.total, "valid": counts.valid, "invalid": counts.invalid},
            samples=store.count("sample"),
            mean_chosen_words=round(out.mean_chosen_words, 2),
            mean_rejected_words=round(out.mean_rejected_words, 2),
            pairs_per_record=round(out.pairs / counts.valid, 3) if counts.valid else 0.0,
            seconds=round(time.perf_counter() - started, 2), reports=reports,
            model_load_seconds=round(executor.load_seconds, 3))
    except BaseException as exc:
        if monitor is not None:
            monitor.stop()
        if not join:
            store.process_finished("stopped" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    finally:
        store.close()


def _stage_paths(config: RunConfig, pipeline: Pipeline, backends: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Which path each image-text stage takes on the transformers backend (``Family.path``),
    and the stages whose family takes the plain one."""
    from .models.family import checkpoint_path, detect_family

    paths, plain = {}, []
    for stage in pipeline.stages:
        use = getattr(stage, "path_use", None)
        if use and backends.get(stage.name) == "hf":
            folder, trust = config.model_path(stage.model_role), config.trust_remote_code
            paths[stage.name] = checkpoint_path(folder, use, trust_remote_code=trust)
            if not detect_family(folder, trust_remote_code=trust).fast(use):
                plain.append(stage.name)
    return paths, plain


def _stop_if_nothing_passed(store: Store, first: str, hashes: dict[str, str], reports) -> None:
    """When every record failed in the first stage there is nothing to export: say so with the
    records' errors (the commonest first) instead of an empty dataset."""
    report = next((r for r in reports if r.name == first), None)
    if report is None or not report.failed or store.count_done(first, hashes[first]):
        return
    from collections import Counter

    reasons = Counter(error.split(": ", 1)[-1] for error in report.errors)
    lines = [f"{n} x {reason}" for reason, n in reasons.most_common(3)]
    raise DpoEngineError(f"every record failed in {first} ({report.failed} records); the errors:\n  "
                         + "\n  ".join(lines),
                         "fix the cause and rerun the same command (failed records are retried)")


def _executor(config: RunConfig, pipeline: Pipeline) -> Executor:
    """In this process, or worker processes: one per ``--devices`` entry, or ``--workers``
    on ``--device``; or as many Ray actors (``--executor ray``)."""
    if config.executor == "ray":
        from .executors.ray_actors import RayExecutor

        return RayExecutor(config, pipeline.roles, len(config.devices) or config.workers,
                           address=config.ray_address)
    if config.devices or config.workers > 1:
        from .executors.workers import WorkerPoolExecutor

        return WorkerPoolExecutor(config, pipeline.roles, config.devices or [config.device] * config.workers)
    from .executors.inprocess import InProcessExecutor
    from .roles import RoleModels

    return InProcessExecutor(RoleModels(config, pipeline.roles))


def _live(info) -> bool:
    from .monitor import run_state

    return run_state(info) in ("running", "paused")


def _claim(work: Path, models: dict[str, str], *, restart: bool) -> Store:
    """Open the work dir's store as its one live run, or refuse: two runs on one work dir
    would race each other's results. A crashed or finished run does not count."""
    from datetime import datetime

    from .holder import gone
    from .monitor import identity

    def busy(info) -> WorkDirBusy:
        since = datetime.fromtimestamp(info.started).strftime("%Y-%m-%d %H:%M:%S")
        return WorkDirBusy(f"{work} is in use by a live run (pid {info.pid} on {info.host}, since {since})",
                           f"add workers to it with the same command plus --join, wait for it to end "
                           f"(`dpo-engine status {work}` shows it), or stop it; a stopped or crashed run resumes "
                           "with the same command")

    if restart and (work / DB_NAME).exists():
        store = Store.in_work_dir(work)
        info = store.process_info()
        store.close()
        if info is not None and _live(info):
            raise busy(info)  # --restart would delete a live run's store
        for suffix in ("", "-wal", "-shm"):
            (work / (DB_NAME + suffix)).unlink(missing_ok=True)
    store = Store.in_work_dir(work, check=True)  # a damaged store left by a crash is refused here
    pid, host = identity()
    live = store.process_started(pid, host, models, refuse=_live)
    if live is not None:
        store.close()
        raise busy(live)
    store.forget_workers(gone)
    return store


JOIN_WAIT_SECONDS = 120.0  # how long --join waits for the live run to finish reading its dataset


def _join(work: Path) -> Store:
    """Open a live run's store to work on it as one more process (``--join``)."""
    if not (work / DB_NAME).exists():
        raise ConfigError(f"{work} holds no run to join", "start the run without --join")
    store = Store.in_work_dir(work)
    deadline = time.time() + JOIN_WAIT_SECONDS
    while True:
        info = store.process_info()
        if info is None or not _live(info):
            store.close()
            raise ConfigError(f"{work} has no live run to join",
                              "start the run without --join (a stopped run resumes that way)")
        if store.run_info() is not None and info.heartbeat is not None and info.heartbeat > info.started:
            return store  # the run has saved its settings
        if time.time() > deadline:
            store.close()
            raise ConfigError(f"the live run on {work} has not started its stages yet", "try --join again later")
        time.sleep(0.5)


def _check_joined(store: Store, hashes: dict[str, str]) -> None:
    """A joiner computes the live run's results only if its settings hash the same."""
    theirs = store.run_info().stage_hashes
    differ = [name for name, h in hashes.items() if theirs.get(name) != h]
    if differ:
        raise ConfigError(f"these settings differ from the live run's (stages: {', '.join(differ)})",
                          "pass --join with exactly the options the live run was started with")


def run_stages(config: RunConfig, observer: Observer | None = None, *, pipeline: Pipeline | None = None,
               executor: Executor | None = None) -> list[StageReport]:
    """Run a pipeline's pending stages over the records already in ``config.work_dir``'s
    store, with ``config`` taken as it is (no ingest, no fingerprints, no export). For
    benchmarks and tools that fill a store themselves."""
    from .executors.inprocess import InProcessExecutor
    from .pipelines import get_pipeline
    from .roles import RoleModels
    from .runner import Runner

    pipeline = pipeline or get_pipeline(config.pipeline)
    store = Store.in_work_dir(config.work_dir, create=False)
    try:
        executor = executor or InProcessExecutor(RoleModels(config, pipeline.roles))
        return Runner(store, pipeline.stages, config, observer, executor).run()
    finally:
        store.close()


def convert_checkpoint(src: str | Path, dst: str | Path, vision_tower: str | Path | None = None,
                       log=None) -> Path:
    """Write an HF-native llava checkpoint for an original-layout one (``models.llava_original``)."""
    from .models.llava_original import ConvertError, convert

    if not (Path(src) / "config.json").is_file():
        raise ModelError(f"{src} has no config.json", "pass the folder of the original-layout checkpoint")
    if Path(dst).exists() and any(Path(dst).iterdir()):
        raise ConfigError(f"{dst} exists and is not empty", "pass a new folder")
    try:
        return convert(src, dst, vision_tower=vision_tower, log=log or (lambda line: None))
    except ConvertError as exc:
        raise ModelError(str(exc)) from exc


def export_run(work_dir: str | Path, out: str | Path, fmt: str = "rlaif-v") -> ExportReport:
    """Write a run's kept pairs in one export format (with its pipeline's extra columns).

    The pairs always come from one finished settings hash: the store's, when every stage has
    finished under its newest settings; else, when a rerun with other settings is unfinished,
    the dataset the last finished run wrote into the work dir (``report.note`` says so)."""
    from .exports import copy_export, export, settings_hash_of
    from .pipelines import get_pipeline

    store = Store.in_work_dir(work_dir, create=False, readonly=True, check=True)
    try:
        info = store.run_info()
        if info is None:
            return export(store, out, fmt)  # says the store holds no results
        pipeline = get_pipeline(info.pipeline)
        hashes = info.stage_hashes
        stages = [(st.name, hashes[st.name], [(a, hashes[a]) for a in st.after])
                  for st in pipeline.stages if st.name in hashes]
        newest = hashes.get(pipeline.stages[-1].name)
        left = store.unfinished(stages)
        if not left:
            return export(store, out, fmt, columns=pipeline.export_columns, settings_hash=newest)
        finished = store.complete_hash()
        process = store.process_info()
    finally:
        store.close()
    live = process is not None and _live(process)
    unfinished = (f"the newest run on {work_dir} (settings {newest}) is "
                  + (f"live (pid {process.pid} on {process.host}), " if live else "unfinished, ")
                  + f"{left} record-stages to go")
    kept = Path(work_dir) / OUTPUT
    if finished is None or settings_hash_of(kept) != finished:
        raise DpoEngineError(unfinished + ("" if finished is None else
                                           f", and the dataset of the last finished run ({finished}) is gone"),
                             f"export when it has finished (`dpo-engine status {work_dir}` shows its progress)"
                             if live else "finish it: the same `dpo-engine run` command resumes it")
    if fmt != "rlaif-v":
        raise DpoEngineError(unfinished + f"; the last finished run ({finished}) is kept as rlaif-v only",
                             "export --format rlaif-v, or finish the newer run first")
    return replace(copy_export(kept, out),
                   note=f"{unfinished}; wrote the pairs of the last finished run (settings {finished})")


def export_samples(work_dir: str | Path, out: str | Path, fmt: str = "parquet") -> int:
    """Write one row per sampled answer with everything the stages computed for it (see
    ``exports.samples``); works on an unfinished run too. Returns the number of rows."""
    from .exports.samples import export_samples as write

    store = Store.in_work_dir(work_dir, create=False, readonly=True, check=True)
    try:
        return write(store, out, fmt)
    finally:
        store.close()


def write_debug(work_dir: str | Path) -> Path:
    """``run --debug``: what every stage computed, as JSONL a person can read, in WORK_DIR/debug/:
    ``samples.jsonl`` (see ``exports.samples``) and ``pairs.jsonl`` (every pair, before and
    after the filters)."""
    import json

    from .exports._arrow import atomic_file
    from .exports.samples import export_samples as write

    folder = Path(work_dir) / "debug"
    store = Store.in_work_dir(work_dir, create=False, readonly=True)
    try:
        write(store, folder / "samples.jsonl", "jsonl")
        with atomic_file(folder / "pairs.jsonl") as fh:
            for pair in store.iter_pairs_in_full():
                fh.write((json.dumps(pair) + "\n").encode())
    finally:
        store.close()
    return folder


def read_status(work_dir: str | Path) -> StatusSnapshot:
    """Each stage's done/pending/failed counts and throughput; safe while a run writes."""
    store = Store.in_work_dir(work_dir, create=False, readonly=True)
    try:
        return store.status()
    finally:
        store.close()


def retry_failed(work_dir: str | Path) -> tuple[int, bool]:
    """Make a work dir's failed records pending again, those set aside after the process died
    with them included. On a live run the request is queued and the run takes it between
    batches. Returns (records put back or, on a live run, now failed; whether it was live)."""
    store = Store.in_work_dir(work_dir, create=False)
    try:
        info = store.process_info()
        if info is not None and _live(info):
            store.request("retry")
            return sum(s.failed for s in store.status().stages), True
        return store.requeue_failed(), False
    finally:
        store.close()


def check_work_dir(work_dir: str | Path) -> None:
    """Raise a clear error unless ``work_dir`` holds a run's store."""
    Store.in_work_dir(work_dir, create=False, readonly=True).close()


def validate_dataset(path: str | Path, on_bad=None, image_root: str | Path | None = None, **caps):
    """Check every row of a dataset (see ``dpo_engine.validate``); ``caps``: max_image_pixels,
    max_question_chars."""
    from .validate import validate_dataset as check

    return check(path, on_bad=on_bad, image_root=image_root, **caps)


def train_run(source: str | Path, out: str | Path, *, model: str | Path | None = None,
              settings: TrainSettings | None = None, trust_remote_code: bool = False,
              log=lambda line: None) -> TrainReport:
    """DPO-train an instruct model (TRL) on a run's pairs: ``source`` is a work dir (its pairs
    are exported in TRL's format to ``OUT/pairs.trl.parquet``; the model defaults to the run's
    instruct model) or a TRL-format parquet file."""
    from .training import DONE, TrainSettings, train_dpo

    source, out = Path(source), Path(out)
    if source.is_dir():
        store = Store.in_work_dir(source, create=False)
        try:
            info = store.run_info()
        finally:
            store.close()
        if model is None and info is not None:
            model = info.settings.get("models", {}).get("instruct")
        pairs = out / "pairs.trl.parquet"
        if not (out / DONE).is_file():
            export_run(source, pairs, "trl")
    else:
        pairs = source
    if model is None:
        raise ConfigError("no model to train", "pass --model PATH (the instruct model the pairs were sampled from)")
    return train_dpo(pairs, model, out, settings or TrainSettings(), trust_remote_code=trust_remote_code, log=log)


def pipeline_names() -> list[str]:
    """The registered pipelines (the built-in ones and any registered since)."""
    from .pipelines import pipeline_names as names

    return names()
