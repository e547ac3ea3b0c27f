"""Throughput over the last two minutes for the active stage."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

from ..snapshot import HISTORY, Snapshot
from .format import rate


class ThroughputChart(Vertical):
    DEFAULT_CSS = """
    ThroughputChart {
        height: 7;
        border: round $primary;
        padding: 0 1;
        width: 1fr;
    }
    ThroughputChart Sparkline {
        height: 4;
    }
    """

    def compose(self) -> ComposeResult:
        yield Label("throughput", id="throughput-title")
        yield Sparkline([0.0], id="throughput-spark")

    def show(self, snap: Snapshot) -> None:
        peak = max(snap.rate_history, default=0.0)
        title = (f"{snap.active or '—'}: items/s over the last {int(HISTORY)} s "
                 f"(peak {rate(peak)})")
        self.query_one("#throughput-title", Label).update(title)
        self.query_one("#throughput-spark", Sparkline).data = list(snap.rate_history) or [0.0]
