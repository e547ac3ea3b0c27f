"""``run`` and ``demo`` share this: ingest, check models, run the stages, export, summarise."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn,
                           TextColumn, TimeRemainingColumn)
from rich.text import Text

from .. import __version__
from ..config import RunConfig, model_fingerprint
from ..dataset import open_dataset
from ..errors import ModelError
from ..exports import export
from ..ingest import ingest
from ..monitor import Monitor, identity
from ..pipelines import stage_hashes
from ..runner import Runner, StageReport
from ..store import DB_NAME, Store

OUTPUT = Path("dataset") / "dpo_dataset.parquet"


class _Rate(ProgressColumn):
    """items/s and tokens/s since the stage started."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0 or not task.completed:
            return Text("", style="progress.data.speed")
        items = task.completed / elapsed
        tokens = task.fields.get("tokens", 0) / elapsed
        text = f"{items:.1f} it/s"
        if tokens:
            text += f" {tokens:,.0f} tok/s"
        return Text(text, style="progress.data.speed")


class RichObserver:
    def __init__(self, console: Console):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<15}"), BarColumn(),
                                 MofNCompleteColumn(), _Rate(), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def stage_started(self, name, pending, reused):
        label = name if not reused else f"{name} (+{reused} kept)"
        self.tasks[name] = self.progress.add_task(label, total=pending or 0, tokens=0)

    def batch_done(self, name, items, tokens, failed):
        task = self.tasks[name]
        fields = self.progress.tasks[self.progress.task_ids.index(task)].fields
        self.progress.update(task, advance=items, tokens=fields.get("tokens", 0) + tokens)

    def stage_finished(self, report: StageReport):
        pass

    def paused(self, flag: bool):
        self.progress.console.print("[yellow]paused[/] (resume from the dashboard)" if flag else "resumed")


def _check_model(path: str | None, role: str) -> None:
    from dpo_engine.models.family import ModelConfigError, detect_family

    if not path:
        return
    if not Path(path).is_dir():
        raise ModelError(f"{role} model {path} is not a folder", "pass a local checkpoint folder")
    try:
        detect_family(path)
    except ModelConfigError as exc:
        raise ModelError(f"{role} model: {exc}") from exc


def _model_roles(config: RunConfig) -> dict[str, str]:
    """The models this run's pipeline uses, by role."""
    wanted = {"dpo_reward": ("instruct", "reward"),
              "divide_and_conquer": ("instruct", "split", "question", "labeler")}[config.pipeline]
    paths = {"instruct": config.instruct_model, "reward": config.reward_model, "split": config.split_model,
             "question": config.question_model, "labeler": config.labeler_model}
    return {role: paths[role] for role in wanted if paths[role]}


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"dpo_engine": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def execute(config: RunConfig, *, restart: bool, console: Console, observer=None) -> dict:
    from dataclasses import replace

    from dpo_engine.models.hf.vlm import resolve_device, resolve_dtype, vocabulary_fingerprint
    from dpo_engine.stages import build_pipeline

    config.validate()
    source = open_dataset(config.dataset)  # unreadable data fails here, before any model loads
    roles = _model_roles(config)
    for role, path in roles.items():
        _check_model(path, role)
    work = Path(config.work_dir)
    if restart:
        for suffix in ("", "-wal", "-shm"):
            (work / (DB_NAME + suffix)).unlink(missing_ok=True)
    store = Store.in_work_dir(work)
    try:
        with console.status("reading the dataset"):
            report = ingest(store, source)
        counts = store.record_counts()
        console.print(f"dataset: {counts.total} records ({counts.valid} valid, {counts.invalid} invalid)"
                      + (f", {report.added} new" if report.added and report.added != counts.total else ""))
        for bad in store.invalid_records(limit=5):
            console.print(f"  [yellow]invalid[/] row {bad.rid} ({bad.source}): {bad.error}", highlight=False)
        if counts.invalid > 5:
            console.print(f"  … and {counts.invalid - 5} more (dpo-engine validate {config.dataset})")

        try:
            device = resolve_device(config.device)
            dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
        except (RuntimeError, ValueError) as exc:
            raise ModelError(str(exc)) from exc
        fingerprints = {role: model_fingerprint(path) for role, path in roles.items()}
        shared = True
        if config.reward_model:
            shared = vocabulary_fingerprint(config.instruct_model) == vocabulary_fingerprint(config.reward_model)
            if not shared:
                console.print("[yellow]note:[/] the instruct and reward models use different tokenizers: "
                              "rewards use sequence-level log-prob sums and averages (min/last left empty)")
        config = replace(config, device=device, dtype=dtype, model_fingerprints=fingerprints,
                         shared_tokenizer=shared)
        stages = build_pipeline(config.pipeline)
        hashes = stage_hashes(stages, config)
        store.save_run(config.pipeline, config.dataset, _public_settings(config), hashes, _versions())

        started = time.perf_counter()
        pid, host = identity()
        store.process_started(pid, host, roles)
        monitor = Monitor(store.path).start()
        try:
            with (observer or RichObserver(console)) as obs:
                reports = Runner(store, stages, config, obs).run()
            out = export(store, work / OUTPUT, "rlaif-v")
        except BaseException as exc:
            monitor.stop()
            store.process_finished("stopped" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise
        monitor.stop()
        store.process_finished("finished")
        elapsed = time.perf_counter() - started
        summary = _summarise(store, config, reports, out, elapsed)
    finally:
        store.close()
    _print_summary(console, summary, reports)
    return summary


def _public_settings(config: RunConfig) -> dict:
    from dataclasses import asdict

    return asdict(config)


def _summarise(store: Store, config: RunConfig, reports: list[StageReport], out, elapsed: float) -> dict:
    counts = store.record_counts()
    return {
        "pipeline": config.pipeline,
        "output": str(out.path),
        "pairs": out.pairs,
        "records": {"total": counts.total, "valid": counts.valid, "invalid": counts.invalid},
        "samples": store.count("sample"),
        "mean_chosen_words": round(out.mean_chosen_words, 2),
        "mean_rejected_words": round(out.mean_rejected_words, 2),
        "pairs_per_record": round(out.pairs / counts.valid, 3) if counts.valid else 0.0,
        "seconds": round(elapsed, 2),
        "stages": [{"name": r.name, "computed": r.computed, "reused": r.reused, "failed": r.failed}
                   for r in reports],
    }


def _print_summary(console: Console, s: dict, reports: list[StageReport]) -> None:
    for r in reports:
        for line in r.errors[:3]:
            console.print(f"  [red]failed[/] {r.name} {line}", highlight=False)
    failed = sum(r.failed for r in reports)
    console.print(
        f"[bold green]done[/] in {s['seconds']:.1f}s: {s['records']['valid']} records, {s['samples']} samples, "
        f"{s['pairs']} pairs ({s['pairs_per_record']} per record); mean words chosen "
        f"{s['mean_chosen_words']}, rejected {s['mean_rejected_words']}", highlight=False)
    if failed:
        console.print(f"[yellow]{failed} record-stages failed[/]: rerun the same command to retry them",
                      highlight=False)
    console.print(f"dataset: [bold]{s['output']}[/]", highlight=False)
