"""How the CLI shows a run: progress bars per stage, notes, the summary and the demo's quality."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn,
                           TextColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

_NOTE_STYLE = {"info": "", "warning": "yellow", "detail": "dim"}


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
    """The engine's observer for a terminal: one progress bar per stage."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<15}"), BarColumn(),
                                 MofNCompleteColumn(), _Rate(), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def note(self, text: str, level: str = "info") -> None:
        self.progress.console.print(Text(text, style=_NOTE_STYLE.get(level, "")), highlight=False)

    def stage_started(self, name, pending, reused):
        label = name if not reused else f"{name} (+{reused} kept)"
        self.tasks[name] = self.progress.add_task(label, total=pending or 0, tokens=0)

    def batch_done(self, name, items, tokens, failed):
        task = self.tasks[name]
        fields = self.progress.tasks[self.progress.task_ids.index(task)].fields
        self.progress.update(task, advance=items, tokens=fields.get("tokens", 0) + tokens)

    def stage_finished(self, report):
        pass

    def paused(self, flag: bool):
        self.progress.console.print("[yellow]paused[/] (resume from the dashboard)" if flag else "resumed")


def print_summary(console: Console, summary) -> None:
    s = summary.to_dict()
    for r in summary.reports:
        for line in r.errors[:3]:
            console.print(Text.assemble(("  failed ", "red"), f"{r.name} {line}"), highlight=False)
    console.print(Text.assemble(
        ("done", "bold green"),
        f" in {s['seconds']:.1f}s: {s['records']['valid']} records, {s['samples']} samples, "
        f"{s['pairs']} pairs ({s['pairs_per_record']} per record); mean words chosen "
        f"{s['mean_chosen_words']}, rejected {s['mean_rejected_words']}"), highlight=False)
    if summary.failed:
        console.print(f"[yellow]{summary.failed} record-stages failed[/]: rerun the same command to retry them "
                      "(records set aside after the process died with them: `dpo-engine retry WORK_DIR` first)",
                      highlight=False)
    console.print(Text.assemble("dataset: ", (s["output"], "bold")), highlight=False)


def print_quality(console: Console, q: dict, examples: list[dict]) -> None:
    table = Table("quality (ShapesWorld truth)", "value", title=None)
    table.add_row("pairs", str(q["pairs"]))
    table.add_row("pair accuracy (chosen hallucinates less)", f"{q['pair_accuracy']:.3f}")
    table.add_row("random baseline", f"{q['random_baseline']:.3f}")
    table.add_row("ties", f"{q['tie_share']:.3f}")
    table.add_row("chosen with a hallucination", f"{q['chosen_hallucination_rate']:.3f}")
    table.add_row("rejected with a hallucination", f"{q['rejected_hallucination_rate']:.3f}")
    table.add_row("samples with a hallucination", f"{q['sample_hallucination_rate']:.3f}")
    console.print(table)
    for row in examples:
        console.print(Text.assemble((row["question"], "bold"), f"\n  chosen:   {row['chosen']}\n"
                                    f"  rejected: {row['rejected']}"), highlight=False)


def print_iterate(console: Console, results: dict, work_dir) -> None:
    """The iterated demo's held-out figures per round: our pairs against the control."""
    for pipeline, entry in results.items():
        table = Table("round", "hallucination rate", "omission rate", "control: hallucination", "control: omission",
                      "pairs", "pair accuracy", title=pipeline)
        for ours, control in zip(entry["rounds"], entry["control"]):
            table.add_row(str(ours["round"]), f"{ours['hallucination_rate']:.3f}", f"{ours['omission_rate']:.3f}",
                          f"{control['hallucination_rate']:.3f}", f"{control['omission_rate']:.3f}",
                          str(ours["pairs"] if ours["pairs"] is not None else "-"),
                          f"{ours['pair_accuracy']:.3f}" if ours["pair_accuracy"] is not None else "-")
        console.print(table)
    console.print(f"results: {work_dir}/iterate.json\nchart:   {work_dir}/iterate.svg", markup=False, highlight=False)
