"""Devices: per GPU its utilisation and memory; without one, the run's CPU % and memory.

The run records these samples in the store, so a dashboard opened later shows the history.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..snapshot import Snapshot
from .format import size, spark


class DevicePanel(Static):
    DEFAULT_CSS = """
    DevicePanel {
        height: 7;
        width: 1fr;
        border: round $primary;
        padding: 0 1;
    }
    """

    def show(self, snap: Snapshot) -> None:
        if not snap.devices:
            self.update(Text("no device samples yet (the run records one every 2 s)", style="dim"))
            return
        table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
        table.add_column("device", no_wrap=True, overflow="ellipsis", max_width=24)
        table.add_column("util", justify="right")
        table.add_column("memory", justify="right")
        table.add_column("history", ratio=1, no_wrap=True)
        gpus = {k: v for k, v in snap.devices.items() if k != "cpu"}
        shown = gpus or {"cpu": snap.devices["cpu"]}
        for name, samples in shown.items():
            last = samples[-1]
            util = "—" if last.util is None else f"{last.util:.0f}%"
            memory = f"{size(last.mem_used)} / {size(last.mem_total)}"
            history = [s.util or 0.0 for s in samples] if last.util is not None else [s.mem_used or 0.0 for s in samples]
            top = 100.0 if last.util is not None and name != "cpu" else None
            label = "run (CPU %, RSS)" if name == "cpu" else name
            table.add_row(label, util, memory, Text(spark(history, 30, top), style="green"))
        self.update(table)
