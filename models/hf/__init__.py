"""The transformers backend: image-text-to-text and text chat models.

This module is the backend's entry point for ``dpo_engine.models.open_model``; it imports
torch and transformers only when a model is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .chat import TextChatModel
    from .vlm import ImageTextModel


def open_image_text(path: str | Path, *, device: str, dtype: str, trust_remote_code: bool = False) -> ImageTextModel:
    """An ``AutoModelForImageTextToText`` checkpoint (``VisionLanguageModel``)."""
    from .vlm import ImageTextModel

    return ImageTextModel(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def open_chat(path: str | Path, *, device: str, dtype: str, trust_remote_code: bool = False) -> TextChatModel:
    """An ``AutoModelForCausalLM`` checkpoint with a chat template (``ChatModel``)."""
    from .chat import TextChatModel

    return TextChatModel(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def vocabulary_fingerprint(path: str | Path) -> str:
    """A hash of a checkpoint's token -> id map, without loading its weights."""
    import hashlib

    from transformers import AutoTokenizer

    from ..runtime import quiet_transformers

    quiet_transformers()
    vocab = sorted(AutoTokenizer.from_pretrained(path).get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]
