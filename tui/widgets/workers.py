"""The run's workers: one row each, from every process working on the work dir."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..snapshot import Snapshot
from .format import clean


class WorkerList(Static):
    DEFAULT_CSS = """
    WorkerList {
        height: auto;
        max-height: 12;
        padding: 0 1;
        border: round $accent 50%;
    }
    """

    def show(self, snap: Snapshot) -> None:
        if not snap.workers:
            self.update(Text("no workers recorded", style="dim"))
            return
        table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
        for name in ("worker", "device", "host", "state", "stage"):
            table.add_column(name)
        for name in ("heartbeat", "items", "items/s"):
            table.add_column(name, justify="right")
        for w in snap.workers[:8]:
            age = f"{snap.now - w.heartbeat:.0f}s ago" if w.heartbeat else "-"
            rate = f"{w.items_per_s:.2f}" if w.items_per_s else "-"
            table.add_row(clean(w.id, 24), clean(w.device or "-", 12), clean(w.host or "-", 20), w.state or "-",
                          w.stage or "-", age, str(w.items), rate)
        if len(snap.workers) > 8:
            table.add_row(f"… {len(snap.workers) - 8} more", "", "", "", "", "", "", "")
        self.update(table)
