"""The built-in demo dataset: small synthetic images of coloured shapes, drawn with PIL."""

from __future__ import annotations

import io
import random
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 40), "purple": (140, 60, 180), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = ("Describe the image.", "What objects do you see?", "How many shapes are there?",
             "What colours are the shapes?")


def draw_shapes(rng: random.Random, size: int = 64) -> tuple[bytes, list[dict]]:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(rng.randint(1, 3)):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        r = rng.randint(size // 10, size // 5)
        x, y = rng.randint(r, size - r), rng.randint(r, size - r)
        box = (x - r, y - r, x + r, y + r)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
        objects.append({"shape": shape, "colour": colour, "x": x, "y": y, "r": r})
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), objects


def write_demo_dataset(path: str | Path, n: int = 24, seed: int = 0) -> Path:
    """A parquet in the RLAIF-V input shape, with two carried columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = {"idx": [], "question": [], "image": [], "origin_dataset": [], "origin_split": []}
    for i in range(n):
        data, _ = draw_shapes(rng)
        rows["idx"].append(f"demo-{i:04d}")
        rows["question"].append(QUESTIONS[i % len(QUESTIONS)])
        rows["image"].append({"bytes": data, "path": f"demo-{i:04d}.png"})
        rows["origin_dataset"].append("dpo-engine-demo")
        rows["origin_split"].append("train")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), out)
    return out
