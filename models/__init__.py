"""Model adapters behind one seam: ``open_model(kind, path, backend=...)``.

What the stages may call is declared in ``base`` (``VisionLanguageModel``, ``ChatModel``,
``Generation``). A backend is a module exposing ``open_image_text(path, *, device, dtype)`` and
``open_chat(path, *, device, dtype, **options)``; adding one is one new module and one entry
in ``BACKENDS`` (``hf``: transformers; ``vllm``: the optional extra). This package stays import-light: torch and transformers are imported only
when a backend opens a model.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from .base import ChatModel, Generation, VisionLanguageModel

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "BACKENDS", "KINDS", "ChatModel", "Generation", "VisionLanguageModel", "open_model",
    "vocabulary_fingerprint",
]

# backend name -> module implementing open_image_text / open_chat, imported on first use
BACKENDS: dict[str, str] = {"hf": "dpo_engine.models.hf", "vllm": "dpo_engine.models.vllm_backend"}

# model kind -> the backend function that opens it
KINDS: dict[str, str] = {"image-text": "open_image_text", "chat": "open_chat"}


def _backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"unknown model backend {name!r}; use one of {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(BACKENDS[name])


def open_model(kind: str, path: str | Path, *, device: str = "auto", dtype: str = "auto",
               backend: str = "hf", **options) -> VisionLanguageModel | ChatModel:
    """Load the checkpoint at ``path`` as a ``kind`` model (``"image-text"`` -> a
    ``VisionLanguageModel``, ``"chat"`` -> a ``ChatModel``) served by ``backend``.

    An unknown kind or backend raises ValueError. Load errors keep their own types
    (``ModelConfigError`` for a checkpoint of the wrong or an unknown family, ValueError for
    other unusable checkpoints, OSError for missing or unreadable files, ImportError for a
    backend that is not installed); callers map them. ``options`` go to the backend's engine
    (vllm: ``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
    opener = getattr(_backend(backend), KINDS[kind])
    return opener(path, device=device, dtype=dtype, **options)


def vocabulary_fingerprint(path: str | Path) -> str:
    """A hash of a checkpoint's token -> id map (read from its tokenizer files, no weights):
    equal fingerprints mean two checkpoints tokenize text identically."""
    from .hf import vocabulary_fingerprint as fingerprint

    return fingerprint(path)
