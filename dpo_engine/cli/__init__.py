"""The command-line interface (the composition root: the only place that wires stages in)."""

from .app import app, main

__all__ = ["app", "main"]
