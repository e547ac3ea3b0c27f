"""The command-line interface: parse options, call one engine function, render the result."""

from __future__ import annotations

import sys


def main() -> None:
    from .fast import run_fast

    code = run_fast(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from . import logps, training  # noqa: F401 - register `logps`, `train` and `iterate` on the app
    from .app import app

    app(prog_name="dpo-engine")


__all__ = ["main"]
