"""Tell what a checkpoint is from its own ``config.json`` (never from its folder name)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Families whose rotary positions depend on the image grid (M-RoPE): text after a cached
# prefix needs 3-D position ids (scoring and checks pass them), and copying a prompt's cache
# for sampling would need them at every decoding step, so they sample the plain way.
MROPE_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe"}


_MROPE = "its M-RoPE positions depend on the image grid"
_UNTESTED_MROPE = dict.fromkeys(("glm4v", "glm4v_moe"), "its M-RoPE continuation positions are untested")
# Families that cannot take a fast path for one kind of work, and why. The fast paths: sampling
# copies the prompt's KV cache k times; scoring and yes/no checks run answers or questions
# against the cached image + prompt prefix. Everything else takes the plain path: whole
# sequences, the image encoded with each (the reference's way).
SLOW_PATHS: dict[str, dict[str, str]] = {
    "sample": {**dict.fromkeys(MROPE_FAMILIES, _MROPE),
               "mllama": "its cross-attention image keys do not fit a copied static cache",
               "paligemma": "its prompt is one bidirectional block, which a cached prefix would cut"},
    "score": {**_UNTESTED_MROPE, "mllama": "each answer token needs its row of the cross-attention mask"},
    "check": {**_UNTESTED_MROPE, "mllama": "each question token needs its row of the cross-attention mask",
              "paligemma": "its processor places BOS and a newline around the prompt"},
}
FAST_NAMES = {"sample": "shared prompt KV cache", "score": "shared image+prompt prefix",
              "check": "shared image+prompt prefix"}
PLAIN_NAMES = {"sample": "plain generate", "score": "full sequences", "check": "full sequences"}


class ModelConfigError(ValueError):
    """The checkpoint folder is missing, unreadable or of a family we cannot load."""


@dataclass(frozen=True)
class Family:
    model_type: str
    architectures: tuple[str, ...]
    kind: str  # "image-text-to-text" or "causal-lm"
    remote_code: bool = False  # served by code shipped with the checkpoint (auto_map)

    def fast(self, use: str) -> bool:
        """Whether this family takes the fast path for ``use`` (sample, score or check)."""
        return self.model_type not in SLOW_PATHS[use]

    def path(self, use: str) -> str:
        """The path ``use`` takes, in words, with the reason when it is the plain one."""
        if self.fast(use):
            return FAST_NAMES[use]
        return f"{PLAIN_NAMES[use]} ({SLOW_PATHS[use][self.model_type]})"


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
            f"cannot load; convert it once: {convert_command(path)}"
        )
    model_type = cfg.get("model_type")
    if not model_type:
        raise ModelConfigError(f"{cfg_path}: has no model_type; is this a transformers checkpoint?")
    archs = tuple(cfg.get("architectures") or ())
    if model_type == "omnilmm":  # served by our own code (models.omnilmm)
        from .omnilmm import OmniLMMConfig, OmniLMMForCausalLM

        _register(OmniLMMConfig, OmniLMMForCausalLM)
        return Family(model_type, archs, "image-text-to-text")
    if model_type == "minicpmv":  # 2.5 is served by our own code (models.minicpmv); others by their own
        from .minicpmv import NATIVE_VERSIONS, MiniCPMVConfig, MiniCPMVForCausalLM, version_of

        version = version_of(cfg)
        if version in NATIVE_VERSIONS:
            _register(MiniCPMVConfig, MiniCPMVForCausalLM)
            return Family(model_type, archs, "image-text-to-text")
        if not trust_remote_code:
            raise ModelConfigError(
                f"{path}: MiniCPM-V {version} is not served natively (MiniCPM-Llama3-V-2.5 is); pass "
                "--trust-remote-code to run the checkpoint's own code, if you trust it")
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


def _register(config_class, model_class) -> None:
    """Let transformers' auto classes load a family served by our own code (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        AutoConfig.register(config_class.model_type, config_class)
    except ValueError:  # registered already
        return
    AutoModelForImageTextToText.register(config_class, model_class)
    AutoModelForCausalLM.register(config_class, model_class)


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


def sliding_window(text_config: Any) -> int | None:
    """The sliding-attention window of a text config that has sliding layers, else None."""
    window = getattr(text_config, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(text_config, "layer_types", None) or ()) or bool(
        getattr(text_config, "use_sliding_window", False))
    return int(window) if window and sliding else None


def describe_path(family: Family, use: str, window: int | None) -> str:
    """``Family.path``, plus the window beyond which a sliding-window model leaves the fast path."""
    text = family.path(use)
    if window is not None and family.fast(use):
        text += f" (plain beyond the {window}-token sliding window)"
    return text


def checkpoint_path(path: str | Path, use: str, *, trust_remote_code: bool = False) -> str:
    """Which path ``use`` (sample, score or check) takes on the image-text checkpoint at
    ``path``, read from its config alone (no weights are loaded)."""
    from transformers import AutoConfig

    family = detect_family(path, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(path, trust_remote_code=family.remote_code)
    return describe_path(family, use, sliding_window(config.get_text_config()))
