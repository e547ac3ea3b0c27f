"""The vLLM backend (optional extra ``vllm``): sampling, log-prob scoring, yes/no checks and
the text chat roles served by a ``vllm.LLM`` engine.

vLLM is imported only when a model is opened. What the engine is given (memory share, context
length, tensor parallelism) comes from ``VllmOptions``; everything else follows the
transformers backend, so the stages cannot tell the two apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .options import VllmOptions

if TYPE_CHECKING:
    from .chat import VllmChatModel
    from .vlm import VllmImageTextModel

__all__ = ["VllmOptions", "open_chat", "open_image_text"]


def open_image_text(path: str | Path, *, device: str, dtype: str, **options) -> VllmImageTextModel:
    from .vlm import VllmImageTextModel

    return VllmImageTextModel(path, device=device, dtype=dtype, options=VllmOptions(**options))


def open_chat(path: str | Path, *, device: str, dtype: str, **options) -> VllmChatModel:
    from .chat import VllmChatModel

    return VllmChatModel(path, device=device, dtype=dtype, options=VllmOptions(**options))
