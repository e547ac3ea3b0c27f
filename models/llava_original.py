"""Original-layout LLaVA checkpoints (liuhaotian/llava-v1.5-7b, openbmb/RLAIF-V-7B) to HF-native
llava, which every backend loads.

The original layout keeps the Llama weights at ``model.*`` and ``lm_head``, the projector at
``model.mm_projector.{0,2}`` and (sometimes) the CLIP tower at
``model.vision_tower.vision_tower.vision_model.*``; its config names the tower by hub id
(``mm_vision_tower``). The converted folder holds llava-hf's layout, a processor that pads
images to a square when the checkpoint says ``image_aspect_ratio: pad``, and a chat template
that writes the reference's llava_v1 prompt: ``{system} USER: <image>\\n{question} ASSISTANT:``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")

# The reference's llava_v1 conversation: the system prompt and a space, then each turn as
# "ROLE: text" followed by " " after a user turn and "</s>" after an assistant turn.
LLAVA_V1_TEMPLATE = (
    "{% set ns = namespace(system='" + LLAVA_V1_SYSTEM.replace("'", "\\'") + "') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set ns.system = message['content'] if message['content'] is string else message['content'][0]['text'] %}"
    "{% endif %}{% endfor %}"
    "{{ ns.system + ' ' }}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' ' }}{% else %}{{ '</s>' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# OpenAI CLIP's normalisation, used when the vision tower comes without a preprocessor config.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                 "rope_scaling", "attention_bias", "bos_token_id", "eos_token_id", "pad_token_id")


def is_original_llava(config: dict) -> bool:
    """A config of the original LLaVA code base (what AutoModelForImageTextToText cannot load)."""
    if config.get("model_type") == "omnilmm":  # OmniLMM also names its tower mm_vision_tower
        return False
    return "mm_vision_tower" in config or "mm_projector_type" in config


def convert_command(src: str | Path) -> str:
    """The command that converts the original-layout checkpoint at ``src`` next to itself."""
    dst = f"{str(src).rstrip('/')}-hf"
    tower = " --vision-tower CLIP_FOLDER" if not _has_tower_weights(Path(src)) else ""
    return f"dpo-engine convert {src} {dst}{tower}"


class ConvertError(ValueError):
    """The source cannot be converted; the message says why and what to pass."""


def convert(src: str | Path, dst: str | Path, *, vision_tower: str | Path | None = None,
            log: Callable[[str], None] = lambda line: None) -> Path:
    """Write an HF-native llava checkpoint for the original-layout one at ``src`` to ``dst``."""
    import torch
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    cfg = json.loads((src / "config.json").read_text())
    if not is_original_llava(cfg):
        raise ConvertError(f"{src} is not an original-layout LLaVA checkpoint (no mm_vision_tower in config.json)")
    _check_supported(cfg, src)
    weights = _load_weights(src)
    log(f"read {len(weights)} tensors from {src}")
    vision_weights, vision_config, preprocess = _vision_tower(cfg, weights, vision_tower, src)
    tokenizer = _tokenizer(src)
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if key.endswith(".inv_freq") or key.startswith("model.vision_tower."):
            continue
        if key.startswith("model.mm_projector."):
            index, rest = key[len("model.mm_projector."):].split(".", 1)
            out[f"multi_modal_projector.linear_{1 if index == '0' else 2}.{rest}"] = value
        elif key.startswith("model."):
            out["language_model." + key] = value
        elif key.startswith("lm_head."):
            out["language_model." + key] = value
        else:
            raise ConvertError(f"{src}: unexpected tensor {key!r} in an original-layout LLaVA checkpoint")
    if "language_model.lm_head.weight" not in out:  # tied embeddings
        out["language_model.lm_head.weight"] = out["language_model.model.embed_tokens.weight"]
    for key, value in vision_weights.items():
        out["vision_tower." + key] = value
    vocab = _add_tokens(tokenizer, out)
    config = _llava_config(cfg, vision_config, tokenizer, vocab)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(dst)
    _save_generation_config(cfg, tokenizer, dst)
    _save_processor(tokenizer, vision_config, preprocess, cfg, dst)
    (dst / "dpo_engine_convert.json").write_text(json.dumps(
        {"source": str(src.resolve()), "vision_tower": str(vision_tower) if vision_tower else "in the checkpoint",
         "image_aspect_ratio": cfg.get("image_aspect_ratio"), "chat": "llava_v1"}, indent=1))
    log(f"wrote {dst} ({len(out)} tensors)")
    return dst


# ------------------------------------------------------------------------------ the parts
def _check_supported(cfg: dict, src: Path) -> None:
    projector = cfg.get("mm_projector_type", "linear")
    problems = []
    if projector != "mlp2x_gelu":
        problems.append(f"mm_projector_type {projector!r} (only mlp2x_gelu, LLaVA-1.5's, maps onto HF llava)")
    if cfg.get("mm_use_im_start_end"):
        problems.append("mm_use_im_start_end (image start/end tokens)")
    if cfg.get("mm_vision_select_feature", "patch") != "patch":
        problems.append(f"mm_vision_select_feature {cfg['mm_vision_select_feature']!r}")
    if problems:
        raise ConvertError(f"{src}: cannot convert: {'; '.join(problems)}")


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    return [f for f in files if f.name != "mm_projector.bin"]


def _load_weights(folder: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    files = _weight_files(folder)
    if not files:
        raise ConvertError(f"{folder}: no *.safetensors or pytorch_model*.bin weight files")
    weights: dict = {}
    for f in files:
        weights.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu",
                                                                                   weights_only=True))
    return weights


def _has_tower_weights(folder: Path) -> bool:
    from safetensors import safe_open

    for f in _weight_files(folder):
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as handle:
                if any(k.startswith("model.vision_tower.") for k in handle.keys()):
                    return True
    return False


def _vision_tower(cfg: dict, weights: dict, tower: str | Path | None, src: Path):
    """The CLIP vision weights (keys ``vision_model.*``), their config, and the preprocessing
    (size, mean, std): from ``tower`` when given, else from the copy inside the checkpoint."""
    from transformers import CLIPVisionConfig

    prefix = "model.vision_tower.vision_tower."
    inside = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if tower is not None:
        tower = Path(tower)
        if not (tower / "config.json").is_file():
            raise ConvertError(f"--vision-tower {tower}: no config.json (pass a local CLIP checkpoint folder)")
        vision_config = CLIPVisionConfig.from_pretrained(tower)
        theirs = {k: v for k, v in _load_weights(tower).items() if k.startswith("vision_model.")}
        preprocess = _preprocess_of(tower, vision_config.image_size)
        return theirs, vision_config, preprocess
    if not inside:
        name = cfg.get("mm_vision_tower", "a CLIP vision tower")
        raise ConvertError(f"{src} holds no vision tower weights; pass --vision-tower with a local copy of {name}")
    vision_config = _vision_config_from(inside)
    return inside, vision_config, (vision_config.image_size, CLIP_MEAN, CLIP_STD)


def _vision_config_from(weights: dict):
    """A CLIP vision config read off the tensors' shapes (CLIP's heads are 64 wide)."""
    import math

    from transformers import CLIPVisionConfig

    patch = weights["vision_model.embeddings.patch_embedding.weight"]
    positions = weights["vision_model.embeddings.position_embedding.weight"].shape[0]
    hidden, _, size, _ = patch.shape
    layers = 1 + max(int(k.split(".")[3]) for k in weights if k.startswith("vision_model.encoder.layers."))
    intermediate = weights["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // 64), patch_size=size,
                            image_size=size * math.isqrt(positions - 1), projection_dim=hidden)


def _preprocess_of(tower: Path, image_size: int):
    path = tower / "preprocessor_config.json"
    if path.is_file():
        pre = json.loads(path.read_text())
        return image_size, pre.get("image_mean", CLIP_MEAN), pre.get("image_std", CLIP_STD)
    return image_size, CLIP_MEAN, CLIP_STD


def _tokenizer(src: Path):
    from transformers import AutoTokenizer

    # legacy=True: the reference's slow Llama tokenizer puts a "▁" after the image placeholder
    # (it tokenizes the text after <image> as a fresh piece); the non-legacy mode drops it.
    try:
        return AutoTokenizer.from_pretrained(src, legacy=True)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{src}: cannot load its tokenizer ({exc})") from exc


def _add_tokens(tokenizer, weights: dict) -> int:
    """Add ``<image>`` (and a pad token) as llava-hf does; new embedding and output rows are the
    mean of the old ones. Returns the vocabulary size."""
    import torch

    added = []
    if "<image>" not in tokenizer.get_vocab():
        added.append("<image>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]} if added else {})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    size = len(tokenizer)
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        table = weights[key]
        if table.shape[0] < size:
            extra = table.float().mean(0, keepdim=True).to(table.dtype).expand(size - table.shape[0], -1)
            weights[key] = torch.cat([table, extra])
    return max(size, weights["language_model.model.embed_tokens.weight"].shape[0])


def _llava_config(cfg: dict, vision_config, tokenizer, vocab: int):
    from transformers import LlamaConfig, LlavaConfig

    text = LlamaConfig(**{k: cfg[k] for k in _LLAMA_FIELDS if k in cfg})
    text.vocab_size = vocab
    text.pad_token_id = tokenizer.pad_token_id
    text.tie_word_embeddings = False
    return LlavaConfig(vision_config=vision_config.to_dict(), text_config=text.to_dict(),
                       image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_layer=cfg.get("mm_vision_select_layer", -2),
                       vision_feature_select_strategy="default", projector_hidden_act="gelu",
                       architectures=["LlavaForConditionalGeneration"])


def _save_generation_config(cfg: dict, tokenizer, dst: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(dst)


def _save_processor(tokenizer, vision_config, preprocess, cfg: dict, dst: Path) -> None:
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    size, mean, std = preprocess
    image_processor = LlavaImageProcessorPil(
        do_pad=cfg.get("image_aspect_ratio") == "pad", size={"shortest_edge": size},
        crop_size={"height": size, "width": size}, image_mean=mean, image_std=std)
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAVA_V1_TEMPLATE,
                   patch_size=vision_config.patch_size, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(dst)
