"""What the stages need from a model, independent of the backend that serves it.

A backend (transformers today, vLLM next) provides classes that satisfy these protocols; the
stages only ever call what is declared here. No torch import: the protocols describe inputs
and outputs in plain Python, PIL and numpy terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass(frozen=True)
class Generation:
    """One sampled reply: its text (stripped) and how many tokens were decoded, end token included."""

    text: str
    n_tokens: int


@runtime_checkable
class VisionLanguageModel(Protocol):
    """An image-text-to-text model that samples answers, scores them and answers yes/no checks."""

    model_seconds: float  # wall time spent inside model calls (for overhead figures)

    def generate(self, images: list[Image.Image], questions: list[str], *, keys: Sequence[int],
                 k: int, max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0, top_k: int = 0) -> list[list[Generation]]:
        """k sampled answers for each (image, question), after temperature, top-k (0: off) and
        top-p (1.0: off). ``keys`` are the records' ids: answer j
        of record ``keys[i]`` draws from a stream seeded by ``(seed, keys[i], j)``, so it does not
        depend on which other records shared the call."""
        ...

    def score(self, image: Image.Image, question: str, answers: Sequence[str]) -> list[np.ndarray]:
        """Per-token log-probs (float32) of each answer given image + question, the end-of-turn
        token included."""
        ...

    def yes_no(self, image: Image.Image, questions: Sequence[str]) -> np.ndarray:
        """An (n, 2) float64 array: (p_yes, p_no) of the first answer token for each question."""
        ...

    def close(self) -> None:
        """Release the model's weights (and accelerator memory)."""
        ...


@runtime_checkable
class ChatModel(Protocol):
    """A text-only chat model that samples one reply per prompt."""

    model_seconds: float

    def chat(self, prompts: Sequence[str], *, keys: Sequence[tuple[int, ...]], max_new_tokens: int,
             temperature: float, top_p: float, seed: int) -> list[Generation]:
        """One sampled reply per prompt, wrapped in the model's chat template; ``keys`` seed each
        row's random stream."""
        ...

    def close(self) -> None:
        ...
