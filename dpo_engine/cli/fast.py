"""``status`` without the Typer app.

Building the Typer app costs over half a second (typer checks every option of every command
through pydantic), which is most of what ``status`` would take. Its plain forms —
``status WORK_DIR [--json] [--debug]`` — are served here with the same output; anything else
(``--help``, a typo) goes to the Typer app, which explains.
"""

from __future__ import annotations

import sys

FLAGS = {"--json", "--debug"}


def run_fast(argv: list[str]) -> int | None:
    """The exit code, or None when ``argv`` is not a plain ``status`` call."""
    if not argv or argv[0] != "status":
        return None
    positional = [a for a in argv[1:] if not a.startswith("-")]
    flags = [a for a in argv[1:] if a.startswith("-")]
    if len(positional) != 1 or not set(flags) <= FLAGS:
        return None
    from rich.console import Console

    from .output import report_error, show_status

    try:
        show_status(positional[0], "--json" in flags, Console())
    except Exception as exc:  # noqa: BLE001 - reported as one line, as every command does
        return report_error(exc, Console(stderr=True, soft_wrap=True), "--debug" in flags)
    sys.stdout.flush()
    return 0
