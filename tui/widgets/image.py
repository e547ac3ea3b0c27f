"""An image drawn in the terminal with half blocks: two pixels per character cell."""

from __future__ import annotations

import io

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style


class HalfBlockImage:
    """A rich renderable of an image scaled to ``width`` cells (height follows the aspect)."""

    def __init__(self, data: bytes | None, width: int = 32):
        self.rows: list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]] = []
        if not data:
            return
        from PIL import Image

        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception:  # noqa: BLE001 - a broken image is shown as missing, not a crash
            return
        height = max(2, round(image.height * width / image.width / 2) * 2)
        pixels = image.resize((width, height), Image.Resampling.BOX).load()
        for y in range(0, height, 2):
            self.rows.append([(pixels[x, y], pixels[x, y + 1]) for x in range(width)])

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows:
            yield Segment("(no image)")
            return
        for row in self.rows:
            for top, bottom in row:
                yield Segment("▀", Style(color=f"rgb{top}", bgcolor=f"rgb{bottom}"))
            yield Segment.line()
