"""Messages the poller posts to the UI."""

from __future__ import annotations

from textual.message import Message

from .snapshot import Snapshot


class SnapshotReady(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class PollFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
