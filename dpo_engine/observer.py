"""What the engine tells whoever watches a run: the CLI's progress bars, a benchmark, nothing.

The engine and the runner call these methods; the CLI implements them with rich. Every method
has a silent default, so an observer implements only what it shows.
"""

from __future__ import annotations

from typing import Any, Protocol


class Observer(Protocol):
    def note(self, text: str, level: str = "info") -> None:
        """A line for the user; level is "info", "warning" or "detail"."""

    def stage_started(self, name: str, pending: int, reused: int) -> None: ...

    def batch_done(self, name: str, items: int, tokens: int, failed: int) -> None: ...

    def stage_finished(self, report: Any) -> None: ...

    def paused(self, flag: bool) -> None: ...


class Silent:
    """An observer that shows nothing; subclass it to show only some things."""

    def note(self, text: str, level: str = "info") -> None:
        pass

    def stage_started(self, name: str, pending: int, reused: int) -> None:
        pass

    def batch_done(self, name: str, items: int, tokens: int, failed: int) -> None:
        pass

    def stage_finished(self, report: Any) -> None:
        pass

    def paused(self, flag: bool) -> None:
        pass
