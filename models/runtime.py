"""Device, dtype and logging set-up shared by the torch-based backends.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a CUDA device torch cannot see
    is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 elsewhere; otherwise one of the named dtypes."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so wall-clock timings cover it; a no-op off CUDA."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def empty_cache(device: str) -> None:
    """Hand cached CUDA memory back after a model is dropped; a no-op off CUDA."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def quiet_transformers() -> None:
    """Silence load-time progress bars and advisory warnings; our CLI shows its own progress."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
