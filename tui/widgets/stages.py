"""One row per stage: counts, a progress bar, and items/s and tokens/s now and on average."""

from __future__ import annotations

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..snapshot import Snapshot
from .format import rate


class StageTable(Static):
    DEFAULT_CSS = """
    StageTable {
        height: auto;
        padding: 0 1;
    }
    """

    def show(self, snap: Snapshot) -> None:
        table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
        for name, kw in (("stage", {}), ("done", {"justify": "right"}), ("pending", {"justify": "right"}),
                         ("failed", {"justify": "right"}), ("invalid", {"justify": "right"}),
                         ("progress", {"ratio": 1, "min_width": 12}), ("items/s now · avg", {"justify": "right"}),
                         ("tokens/s now · avg", {"justify": "right"})):
            table.add_column(name, **kw)
        for s in snap.stages:
            marker = "▶ " if s.name == snap.active and snap.state in ("running", "paused") else "  "
            name = Text(marker + s.name, style="bold" if marker.strip() else "")
            notes = sum(s.notes.values())
            if notes:
                name.append(f" ({notes} noted)", style="yellow")
            table.add_row(
                name, str(s.done), str(s.pending),
                Text(str(s.failed), style="red" if s.failed else ""), str(s.invalid),
                ProgressBar(total=max(1, s.total), completed=s.done, width=None),
                f"{rate(s.items_now)} · {rate(s.items_avg)}", f"{rate(s.tokens_now)} · {rate(s.tokens_avg)}",
            )
        self.update(table)
