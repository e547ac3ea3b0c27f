"""Small text helpers shared by the widgets."""

from __future__ import annotations

BARS = "▁▂▃▄▅▆▇█"
STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "finished": "bold cyan",
               "crashed": "bold red", "failed": "bold red", "stopped": "bold yellow",
               "not started": "dim"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rate(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.1f}k{unit}"
    return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"


def size(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def spark(values, width: int | None = None, top: float | None = None) -> str:
    values = list(values)[-width:] if width else list(values)
    if not values:
        return ""
    top = top or max(values) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] if v else " "
                   for v in values)


def clean(text: str | None, limit: int = 400) -> str:
    """Printable text: random-weight models emit control characters and odd bytes."""
    if not text:
        return ""
    text = "".join(ch if ch.isprintable() or ch == "\n" else "�" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
