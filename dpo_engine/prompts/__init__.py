"""Default prompt templates of the divide-and-conquer stages, shipped as plain files.

They follow the structure the released RLAIF-V split and question-change checkpoints were
fine-tuned on: an instruction, an output format with a ``###`` header and ``- `` lines, then
the inputs. ``{question}``, ``{answer}`` and ``{facts}`` are filled in; users can pass their
own files instead.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
SPLIT = HERE / "split.txt"
QUESTION = HERE / "question.txt"


def load(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")
