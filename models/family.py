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
    remote_code: bool = False  # served by code shipped with the checkpoint (auto_map)

    @property
    def prefix_cache(self) -> bool:
        return self.model_type not in MROPE_FAMILIES


# auto_map entries that give the kind of model a checkpoint's own code provides
_REMOTE_KINDS = {"AutoModelForImageTextToText": "image-text-to-text", "AutoModelForVision2Seq": "image-text-to-text",
                 "AutoModelForCausalLM": "causal-lm"}


def detect_family(path: str | Path, *, trust_remote_code: bool = False) -> Family:
    """Read ``config.json`` and say which transformers auto class serves this checkpoint.

    A model_type transformers does not know, served by code in the checkpoint's folder
    (``auto_map``), is refused unless ``trust_remote_code``: running it runs that code."""
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
        return _remote_family(Path(path), model_type, archs, cfg["auto_map"], trust_remote_code)
    raise ModelConfigError(
        f"{path}: model_type {model_type!r} is neither an image-text-to-text nor a causal LM "
        "family known to this transformers version; convert the checkpoint to the HF-native "
        "format or upgrade transformers"
    )


def _remote_family(path: Path, model_type: str, archs: tuple[str, ...], auto_map: dict, trusted: bool) -> Family:
    if not trusted:
        raise ModelConfigError(
            f"{path}: model_type {model_type!r} is served by code shipped with the checkpoint (auto_map in "
            "config.json); pass --trust-remote-code to run that code, if you trust it"
        )
    missing = sorted({ref.split(".")[0] + ".py" for ref in _refs(auto_map)
                      if "--" in ref or not (path / (ref.split(".")[0] + ".py")).is_file()})
    if missing:
        raise ModelConfigError(
            f"{path}: the code its config.json names is not in the folder ({', '.join(missing)}); copy the "
            "checkpoint's .py files next to config.json (nothing is downloaded)"
        )
    kinds = {_REMOTE_KINDS[name] for name in auto_map if name in _REMOTE_KINDS}
    if len(kinds) != 1:
        raise ModelConfigError(
            f"{path}: its code registers {', '.join(sorted(auto_map))}, not one image-text-to-text or causal LM "
            "class, which the transformers backend needs"
        )
    return Family(model_type, archs, kinds.pop(), remote_code=True)


def _refs(auto_map: dict) -> list[str]:
    refs = []
    for value in auto_map.values():
        refs.extend(v for v in (value if isinstance(value, list) else [value]) if v)
    return refs
