"""Header: pipeline, models, dataset, elapsed time, ETA and the run's state."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..snapshot import Snapshot
from .format import STATE_STYLE, duration


class RunHeader(Static):
    DEFAULT_CSS = """
    RunHeader {
        height: auto;
        padding: 0 1;
        background: $boost;
        border-bottom: solid $primary;
    }
    """

    def show(self, snap: Snapshot, where: str | None = None) -> None:
        """``where``: a line above the run's, e.g. the round of an iteration it belongs to."""
        grid = Table.grid(expand=True, padding=(0, 2))
        grid.add_column(ratio=3)
        grid.add_column(ratio=2, justify="right")
        title = Text.assemble(("dpo-engine ", "bold"), (snap.pipeline or "?", "bold magenta"), "  ",
                              (snap.state.upper(), STATE_STYLE.get(snap.state, "")))
        if snap.pending_requests:
            title.append(f"  ({', '.join(snap.pending_requests)} requested)", style="yellow")
        timing = Text.assemble(("elapsed ", "dim"), duration(snap.elapsed), ("   ETA ", "dim"))
        if snap.eta is not None or snap.active_eta is None:
            timing.append(duration(snap.eta))
        else:  # later stages have no rate yet: the active stage's part only
            timing.append(f"{duration(snap.active_eta)} ({snap.active})")
        grid.add_row(title, timing)
        models = "  ".join(f"{role}: {path.rstrip('/').rsplit('/', 1)[-1]}" for role, path in snap.models.items())
        total, valid, invalid = snap.records
        grid.add_row(Text(models or "models: —", style="dim", overflow="ellipsis", no_wrap=True),
                     Text(f"{snap.dataset or '?'}  {total} records ({invalid} invalid)", style="dim",
                          overflow="ellipsis", no_wrap=True))
        if where:
            grid.add_row(Text(where, style="bold cyan", overflow="ellipsis", no_wrap=True), "")
        self.update(grid)
