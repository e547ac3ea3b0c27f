"""The latest failed items with their error; `r` re-queues them."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..snapshot import Snapshot
from .format import clean


class FailureList(Static):
    DEFAULT_CSS = """
    FailureList {
        height: auto;
        max-height: 8;
        padding: 0 1;
        border: round $error 50%;
    }
    """

    def show(self, snap: Snapshot) -> None:
        if not snap.failures:
            self.update(Text("no failures", style="dim"))
            return
        table = Table(expand=True, box=None, header_style="bold red", pad_edge=False)
        table.add_column("stage")
        table.add_column("record")
        table.add_column("tries", justify="right")
        table.add_column("error", ratio=1, no_wrap=True, overflow="ellipsis")
        for f in snap.failures[:5]:
            table.add_row(f.stage, clean(f.idx or str(f.rid), 30), str(f.attempts), clean(f.error, 200))
        if len(snap.failures) > 5:
            table.add_row("", f"… {len(snap.failures) - 5} more", "", "")
        self.update(table)
