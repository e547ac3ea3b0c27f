"""ShapesWorld: a miniature RLAIF-V world whose truth we know.

Images of 64x64 pixels hold one to three coloured shapes, at most one per quadrant. Every
image comes with its ground truth, so any answer about it can be checked by a rule-based
reader: which objects does it name that are not there (hallucinations), which objects that
are there does it leave out (omissions).

The sentences are a small, fixed English grammar, shared by the captions the ShapesWorld
models are trained on and by the reader:

* describe: ``there is a red circle at the top left and a blue square at the bottom right .``
* objects:  ``i see a red circle and a blue square .``
* yes/no:   ``is there a red circle in the image ?`` -> ``yes .`` / ``no .``

This module is pure Python + PIL (no torch): the demo's dataset writer and the quality
report use it; ``models/shapesworld.py`` trains the models on it.
"""

from __future__ import annotations

import io
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (225, 200, 30)}
CELLS = ("top left", "top right", "bottom left", "bottom right")
SIZE = 64

DESCRIBE = "Describe the image."
OBJECTS = "What objects do you see?"
YES_NO_SUFFIX = " Please answer yes or no."


@dataclass(frozen=True, order=True)
class Obj:
    cell: int
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    def names(self) -> set[str]:
        return {o.name for o in self.objects}

    def to_json(self) -> str:
        return json.dumps([asdict(o) for o in self.objects])

    @staticmethod
    def from_json(text: str) -> Scene:
        return Scene(tuple(Obj(**o) for o in json.loads(text)))


def random_scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 2, 2, 3))
    cells = sorted(rng.sample(range(4), n))
    objs, used = [], set()
    for cell in cells:
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (colour, shape) not in used:
                break
        used.add((colour, shape))
        objs.append(Obj(cell, colour, shape))
    return Scene(tuple(objs))


def render(scene: Scene, rng: random.Random | None = None) -> bytes:
    """PNG bytes of the scene; ``rng`` jitters position and size a little."""
    from PIL import Image, ImageDraw

    rng = rng or random.Random(0)
    image = Image.new("RGB", (SIZE, SIZE), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    half = SIZE // 2
    for o in scene.objects:
        cx = (o.cell % 2) * half + half // 2 + rng.randint(-2, 2)
        cy = (o.cell // 2) * half + half // 2 + rng.randint(-2, 2)
        r = rng.randint(9, 12)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------- sentences
def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(objs: tuple[Obj, ...] | list[Obj]) -> str:
    return "there is " + _join([f"a {o.name} at the {CELLS[o.cell]}" for o in objs]) + " ."


def list_objects(objs: tuple[Obj, ...] | list[Obj]) -> str:
    return "i see " + _join([f"a {o.name}" for o in objs]) + " ."


def yes_no_question(name: str) -> str:
    return f"Is there a {name} in the image?"


def answer(scene: Scene, question: str) -> str:
    """The faithful answer to one of the world's questions."""
    asked = asked_object(question)
    if asked is not None:
        return "yes ." if asked in scene.names() else "no ."
    if question == OBJECTS:
        return list_objects(scene.objects)
    return describe(scene.objects)


def corrupt(scene: Scene, rng: random.Random) -> Scene:
    """The same scene with one object wrong: its colour or its shape swapped for one that is
    not in the image, an extra object that is not there, or an object moved elsewhere."""
    objs = list(scene.objects)
    names = scene.names()
    free_cells = [c for c in range(4) if c not in {o.cell for o in objs}]
    options: list[tuple[int | None, Obj]] = []  # (index replaced or None for an extra, new object)
    kind = rng.random()
    if kind < 0.25 and free_cells:
        options = [(None, Obj(cell, c, s)) for cell in free_cells for c in COLOURS for s in SHAPES]
    elif kind < 0.5:
        options = [(i, Obj(o.cell, c, o.shape)) for i, o in enumerate(objs) for c in COLOURS]
    elif kind < 0.75:
        options = [(i, Obj(o.cell, o.colour, s)) for i, o in enumerate(objs) for s in SHAPES]
    elif free_cells:  # the right object at the wrong place
        options = [(i, Obj(cell, o.colour, o.shape)) for i, o in enumerate(objs) for cell in free_cells]
        return _moved(objs, rng.choice(options))
    options = [(i, o) for i, o in options if o.name not in names]
    if not options:  # e.g. every shape of that colour is already there: add or recolour instead
        options = [(i, Obj(o.cell, c, s)) for i, o in enumerate(objs) for c in COLOURS for s in SHAPES
                   if f"{c} {s}" not in names]
    index, new = rng.choice(options)
    if index is None:
        objs.append(new)
    else:
        objs[index] = new
    return Scene(tuple(sorted(objs)))


def _moved(objs: list[Obj], choice: tuple[int, Obj]) -> Scene:
    index, new = choice
    objs = list(objs)
    objs[index] = new
    return Scene(tuple(sorted(objs)))


def wrong_answer(scene: Scene, question: str, rng: random.Random) -> str:
    """An unfaithful answer: the opposite yes/no, or a description of a corrupted scene."""
    asked = asked_object(question)
    if asked is not None:
        return "no ." if asked in scene.names() else "yes ."
    while True:  # a move is no error in an answer that names no places: draw again
        wrong = answer(corrupt(scene, rng), question)
        if read(question, wrong, scene).hallucinations:
            return wrong


def questions_for(scene: Scene, rng: random.Random, yes_no_share: float = 0.25) -> str:
    if rng.random() < yes_no_share:
        if rng.random() < 0.5:
            return yes_no_question(rng.choice(scene.objects).name)
        absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in scene.names()]
        return yes_no_question(rng.choice(absent))
    return rng.choice((DESCRIBE, OBJECTS))


# ---------------------------------------------------------------------------------- the reader
_MENTION = re.compile(
    r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")s?\b"
    r"(?:\s+(?:at|in)\s+the\s+(" + "|".join(CELLS) + r")\b)?", re.IGNORECASE)
_ASKED = re.compile(r"is there an? (\w+ \w+) in the image", re.IGNORECASE)


def asked_object(question: str) -> str | None:
    m = _ASKED.search(question)
    return m.group(1).lower() if m else None


def mentions(text: str) -> list[tuple[str, str | None]]:
    """(object name, cell or None) for every "colour shape [at the cell]" in the text."""
    return [(f"{c.lower()} {s.lower()}", cell.lower() or None) for c, s, cell in _MENTION.findall(text)]


def named_objects(text: str) -> set[str]:
    return {name for name, _ in mentions(text)}


@dataclass(frozen=True)
class Reading:
    hallucinations: int
    omissions: int


def read(question: str, text: str, scene: Scene) -> Reading:
    """Count an answer's hallucinations and omissions against the scene's truth.

    For a yes/no question, "yes" about an absent object is a hallucination and "no" about a
    present one an omission. For any other question, every mention of an object that the image
    does not hold (a wrong colour or shape, a wrong place, or one more of it than there is) is
    a hallucination, and each object of the image never named is an omission."""
    truth = scene.names()
    asked = asked_object(question)
    if asked is not None:
        words = set(re.findall(r"\w+", text.lower()))
        said_yes = "yes" in words and "no" not in words
        said_no = "no" in words and "yes" not in words
        present = asked in truth
        return Reading(int(said_yes and not present), int(said_no and present))
    # Each mention claims one object: match it to an object of the image (at its place, when
    # a place is named), each object used once. What stays unmatched is not in the image.
    found = mentions(text)
    unused = {(o.name, CELLS[o.cell]) for o in scene.objects}
    placed = [m for m in found if m[1] is not None]
    loose = [m for m in found if m[1] is None]
    wrong = 0
    for name, cell in placed:
        if (name, cell) in unused:
            unused.discard((name, cell))
        else:
            wrong += 1
    for name, _ in loose:
        match = next((u for u in sorted(unused) if u[0] == name), None)
        if match is None:
            wrong += 1
        else:
            unused.discard(match)
    return Reading(wrong, len(truth - named_objects(text)))


def write_dataset(path: str | Path, n: int, seed: int = 0, yes_no_share: float = 0.25) -> Path:
    """A ShapesWorld dataset in the engine's parquet input shape; the truth is the ``truth``
    column (JSON), carried through to the output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows: dict[str, list] = {"idx": [], "question": [], "image": [], "truth": [], "origin_dataset": []}
    for i in range(n):
        scene = random_scene(rng)
        rows["idx"].append(f"shapes-{i:05d}")
        rows["question"].append(questions_for(scene, rng, yes_no_share))
        rows["image"].append({"bytes": render(scene, rng), "path": f"shapes-{i:05d}.png"})
        rows["truth"].append(scene.to_json())
        rows["origin_dataset"].append("shapesworld")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), out)
    return out
