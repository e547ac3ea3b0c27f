"""Errors a user can act on. Each carries one line saying what is wrong and what to do.

The CLI turns any ``DpoEngineError`` into that line and the error's exit code; a traceback
is shown only with ``--debug``.
"""

from __future__ import annotations


class DpoEngineError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class DatasetUnreadable(DpoEngineError):
    """The dataset path cannot be read at all (missing, wrong format, corrupt file)."""

    exit_code = 2


class DatasetChanged(DpoEngineError):
    """Rows already ingested into this work dir differ from the dataset now on disk."""

    exit_code = 2


class DatasetEmpty(DpoEngineError):
    """The dataset holds no row a run can use: none at all, or only invalid ones."""

    exit_code = 2


class ConfigError(DpoEngineError):
    """Bad or inconsistent settings."""

    exit_code = 2


class IterationChanged(ConfigError):
    """A work dir holds an iteration planned with other settings."""


class ModelError(DpoEngineError):
    """A model could not be found or loaded."""

    exit_code = 2


class StoreError(DpoEngineError):
    """The work dir's engine.db is missing, locked or of an unknown schema."""

    exit_code = 2


class RunInterrupted(DpoEngineError):
    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler, ``kill``, a closed terminal), handled like Ctrl-C:
    the run stops, what is committed stays, and the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class WorkDirBusy(DpoEngineError):
    """Another run is live on this work dir."""

    exit_code = 2
