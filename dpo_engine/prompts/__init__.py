"""Prompt templates of the divide-and-conquer stages, shipped as plain files, and the text
handling around them: filling, the word cut, and parsing the models' ``- `` lists.

The shipped templates follow the structure the released RLAIF-V split and question-change
checkpoints were fine-tuned on: an instruction, an output format with a ``###`` header and
``- `` lines, then the inputs. ``{question}`` and ``{answer}`` (split) and ``{facts}``
(question change) are filled in; any other braces are left alone, so a user's template may
contain them. Users pass their own files with ``--split-prompt`` / ``--question-prompt``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError

HERE = Path(__file__).parent
SPLIT = HERE / "split.txt"
QUESTION = HERE / "question.txt"
FIELDS = {"split": ("{question}", "{answer}"), "questions": ("{facts}",)}
YES_NO_SUFFIX = " Please answer yes or no."
_BULLET = re.compile(r"^\s*[-*\u2022]\s?")
_WORD = re.compile(r"\S+")


def load(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")


def template(kind: str, path: str | Path | None) -> str:
    """The template text for ``kind`` ("split" or "questions"): a user file or the shipped one."""
    path = Path(path) if path else (SPLIT if kind == "split" else QUESTION)
    try:
        text = load(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {kind} prompt {path} ({exc})") from exc
    missing = [f for f in FIELDS[kind] if f not in text]
    if missing:
        raise ConfigError(f"the {kind} prompt {path} lacks {', '.join(missing)}",
                          "a template marks where the inputs go with these placeholders")
    return text


def fill(text: str, **fields: str) -> str:
    for name, value in fields.items():
        text = text.replace("{" + name + "}", value)
    return text


def cut_words(text: str, n: int) -> str:
    """The text up to the end of its n-th whitespace-separated word, whitespace kept."""
    for i, match in enumerate(_WORD.finditer(text)):
        if i == n - 1:
            return text[: match.end()]
    return text


def bullet_list(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def parse_list(output: str) -> tuple[list[str], str | None]:
    """The ``- item`` lines of a split or question-change reply, and, when there are none,
    why (a reason counted by ``status``).

    As the reference does: empty lines and ``###`` headers are skipped and the bullet is
    removed. Unlike it, a line that is not a bullet (a chatty preamble, say) is not taken as
    an item; the released checkpoints only ever write bullets, so their results are the same.
    """
    items: list[str] = []
    other = 0
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("###"):
            continue
        bullet = _BULLET.match(line)
        if bullet is None:
            other += 1
            continue
        item = line[bullet.end():].strip()
        if item:
            items.append(item)
    if items:
        return items, None
    if not output.strip():
        return [], "empty reply"
    return [], "no '- ' lines" if other else "no items under the header"
