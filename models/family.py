"""Tell what a checkpoint is from its own ``config.json`` (never from its folder name)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Families whose rotary positions depend on the image grid (M-RoPE): sharing a prompt's KV
# cache would need their custom position ids, so they sample with num_return_sequences and
# score full sequences instead.
MROPE_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe"}


class ModelConfigError(ValueError):
    """The checkpoint folder is missing, unreadable or of a family we cannot load."""


@dataclass(frozen=True)
class Family:
    model_type: str
    architectures: tuple[str, ...]
    kind: str  # "image-text-to-text" or "causal-lm"

    @property
    def prefix_cache(self) -> bool:
        return self.model_type not in MROPE_FAMILIES


def detect_family(path: str | Path) -> Family:
    """Read ``config.json`` and say which transformers auto class serves this checkpoint."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise ModelConfigError(
            f"{path}: no config.json; pass the folder of a Hugging Face checkpoint "
            "(the one holding config.json and the weights)"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{cfg_path}: cannot be read as JSON ({exc})") from exc
    from .llava_original import convert_command, is_original_llava

    if is_original_llava(cfg):
        raise ModelConfigError(
            f"{path} is a LLaVA checkpoint in the original (liuhaotian) layout, which transformers "
            f"cannot load; convert it once: {convert_command(path, cfg)}"
        )
    model_type = cfg.get("model_type")
    if not model_type:
        raise ModelConfigError(f"{cfg_path}: has no model_type; is this a transformers checkpoint?")
    archs = tuple(cfg.get("architectures") or ())
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return Family(model_type, archs, "image-text-to-text")
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return Family(model_type, archs, "causal-lm")
    if cfg.get("auto_map"):
        raise ModelConfigError(
            f"{path}: model_type {model_type!r} is served by code shipped with the checkpoint (auto_map in "
            "config.json), which dpo-engine does not run; use an HF-native checkpoint of the model"
        )
    raise ModelConfigError(
        f"{path}: model_type {model_type!r} is neither an image-text-to-text nor a causal LM "
        "family known to this transformers version; convert the checkpoint to the HF-native "
        "format or upgrade transformers"
    )
