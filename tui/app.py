"""The dashboard app: a poller thread reads snapshots, the widgets draw them.

A thread worker opens its own connection to the store and reads one ``Snapshot``; the UI
thread applies it and only then arms the next poll, so polls never pile up however slow the
store is. The dashboard writes nothing but control requests (pause, resume, retry), which
the runner honours between batches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer

from dpo_engine.store import DB_NAME, Store

from .messages import PollFailed, SnapshotReady
from .snapshot import Snapshot, take_snapshot
from .widgets.browser import RecordBrowser
from .widgets.devices import DevicePanel
from .widgets.failures import FailureList
from .widgets.header import RunHeader
from .widgets.stages import StageTable
from .widgets.throughput import ThroughputChart
from .widgets.workers import WorkerList


class Dashboard(App):
    TITLE = "dpo-engine"
    CSS = """
    Screen { layout: vertical; }
    #middle { height: auto; }
    """
    BINDINGS = [
        Binding("p", "pause_resume", "pause/resume"),
        Binding("r", "retry", "retry failed"),
        Binding("o", "open_record", "open a record"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, work_dir: str | Path, *, interval: float = 1.0, clock: Callable[[], float] = time.time,
                 follow: Callable[[], tuple[Path, str]] | None = None):
        """``follow``, when given, is asked before every poll for the work dir to show and a
        label for it (an iteration moves from one round's work dir to the next)."""
        super().__init__()
        self.db_path = Path(work_dir) / DB_NAME
        self.follow = follow
        self.label = str(self.db_path.parent)
        self.interval = interval
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.polls = 0
        self.first_snapshot = asyncio.Event()
        self._reader: Store | None = None
        self._reader_lock = threading.Lock()
        self._closed = False

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield StageTable(id="stages")
        with Horizontal(id="middle"):
            yield ThroughputChart(id="throughput")
            yield DevicePanel(id="devices")
        yield WorkerList(id="workers")
        yield FailureList(id="failures")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.label
        self._poll()

    # ------------------------------------------------------------------ polling
    @work(thread=True, exclusive=True, group="poll")
    def _poll(self) -> None:
        with self._reader_lock:  # the connection is closed on unmount, never while a poll reads it
            if self._closed:
                return
            try:
                if self.follow is not None:
                    folder, self.label = self.follow()
                    if Path(folder) / DB_NAME != self.db_path:
                        if self._reader is not None:
                            self._reader.close()
                            self._reader = None
                        self.db_path = Path(folder) / DB_NAME
                if self._reader is None:
                    self._reader = Store(self.db_path, create=False, readonly=True)
                snap = take_snapshot(self._reader, self.clock())
            except Exception as exc:  # noqa: BLE001 - a failed poll is shown, and the next one tried
                self.post_message(PollFailed(f"{type(exc).__name__}: {exc}"))
                return
        self.post_message(SnapshotReady(snap))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        snap = self.snapshot = message.snapshot
        self.polls += 1
        self.sub_title = self.label
        self.query_one(RunHeader).show(snap, self.label if self.follow is not None else None)
        self.query_one(StageTable).show(snap)
        self.query_one(ThroughputChart).show(snap)
        self.query_one(DevicePanel).show(snap)
        self.query_one(WorkerList).show(snap)
        self.query_one(FailureList).show(snap)
        self.first_snapshot.set()
        self.set_timer(self.interval, self._poll)  # armed only after this poll finished

    def on_poll_failed(self, message: PollFailed) -> None:
        self.notify(message.error, title="cannot read the store", severity="error", timeout=3)
        self.set_timer(max(self.interval, 1.0), self._poll)

    def on_unmount(self) -> None:
        with self._reader_lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # ------------------------------------------------------------------ keys
    def _request(self, action: str) -> None:
        store = Store(self.db_path, create=False)
        try:
            store.request(action)
        finally:
            store.close()

    def action_pause_resume(self) -> None:
        state = self.snapshot.state if self.snapshot else "not started"
        if state not in ("running", "paused"):
            self.notify(f"the run is {state}: nothing to pause", severity="warning")
            return
        action = "resume" if state == "paused" else "pause"
        self._request(action)
        self.notify(f"{action} requested: the run acts on it between batches")

    def action_retry(self) -> None:
        failed = sum(s.failed for s in self.snapshot.stages) if self.snapshot else 0
        if not failed:
            self.notify("no failed items", severity="warning")
            return
        self._request("retry")
        live = self.snapshot and self.snapshot.state in ("running", "paused")
        self.notify(f"{failed} failed items re-queued" if live else
                    f"retry of {failed} items queued: the next `dpo-engine run` takes it")

    def action_open_record(self) -> None:
        start = self.snapshot.failures[0].rid if self.snapshot and self.snapshot.failures else None
        self.push_screen(RecordBrowser(self.db_path, start))


async def _screenshot(app: Dashboard, path: Path, size: tuple[int, int]) -> None:
    async with app.run_test(size=size) as pilot:
        await asyncio.wait_for(app.first_snapshot.wait(), timeout=30)
        await pilot.pause()
        app.save_screenshot(path.name, str(path.parent))


def screenshot(work_dir: str | Path, path: str | Path, *, size: tuple[int, int] = (120, 36),
               clock: Callable[[], float] = time.time,
               follow: Callable[[], tuple[Path, str]] | None = None) -> Path:
    """Render one frame of the dashboard headless into an SVG file."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_screenshot(Dashboard(work_dir, clock=clock, follow=follow), path, size))
    return path
