"""MiniCPM-Llama3-V-2.5: a Llama-3-8B reading SigLIP features of an image cut into slices,
through a resampler, in the published checkpoint's own layout (``model_type: minicpmv``; its
``auto_map`` code needs transformers 4.40, hence the reference's second Python environment).
Written here from the architecture's description; ``models.family`` registers it with
transformers' auto classes, so the image-text adapter (``models.hf.vlm``) checks claims with it (the
divide_and_conquer labeler), and samples and scores too, fast paths included.

* Slicing: an image above ``scale_resolution``² pixels becomes a downscaled source image plus a
  grid of up to ``max_slice_nums`` tiles (the grid whose aspect best matches the image's); a
  smaller one is scaled up to about that area. Sides are multiples of the 14-pixel patch.
* Vision: transformers' ``Idefics2VisionTransformer`` (weights ``vpm.*``), every layer and the
  final norm. Each slice goes in as a strip one patch tall (its patches in raster order), so the
  tower's position buckets follow the patch index, as the published model computes them.
* Resampler (``resampler.*``): ``query_num`` queries without positions; the keys get 2-D sin-cos
  positions of the slice's patch grid (column in the first half); padded patches are masked.
* Prompt: Llama 3's chat format, no system prompt; the user turn is the image (source, then
  ``<slice>`` rows of tiles joined by newlines, each block ``<image>`` + ``<unk>`` × query_num +
  ``</image>``), a newline, and the question. The ``<unk>`` embeddings are replaced by the
  resampler's outputs in order. The text model's weights are ``llm.*``.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from .resampler import Resampler, sincos_grid

MODEL_TYPE = "minicpmv"
IMAGE_START, IMAGE_END, SLICE_START, SLICE_END, SLOT = "<image>", "</image>", "<slice>", "</slice>", "<unk>"
MARKER = "(<image>./</image>)"  # where the chat template puts an image; the processor expands it
END_OF_TURN = "<|eot_id|>"
MEAN = STD = 0.5
NATIVE_VERSIONS = ("2.5",)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% set ns = namespace(parts=[]) %}{% if message['content'] is string %}{% set ns.parts = [message['content']] %}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "{% set ns.parts = ns.parts + [marker] %}{% elif item['type'] == 'text' %}{% set ns.parts = ns.parts + [item['text']] %}"
    "{% endif %}{% endfor %}{% endif %}{{ ns.parts | join('\n') | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def version_of(cfg: dict) -> str:
    """The MiniCPM-V version a config.json describes (older 2.5 files carry no ``version``;
    2.0 is told apart by its sizes, as vLLM does)."""
    if "version" in cfg:
        return str(cfg["version"])
    return "2.0" if cfg.get("hidden_size") == 2304 and cfg.get("query_num") == 64 else "2.5"


# ----------------------------------------------------------------------------- slicing
def _multiple_of(length: float, patch: int) -> int:
    return max(round(length / patch) * patch, patch)


def _best_size(size: tuple[float, float], scale: int, patch: int, upscale: bool) -> tuple[int, int]:
    """(w, h) of about scale² pixels with the aspect of ``size`` (only shrunk unless
    ``upscale``), each side a multiple of ``patch``."""
    w, h = size
    if w * h > scale * scale or upscale:
        ratio = w / h
        h = int(scale / math.sqrt(ratio))
        w = int(h * ratio)
    return _multiple_of(w, patch), _multiple_of(h, patch)


def slice_layout(size: tuple[int, int], scale: int, patch: int, max_slices: int) -> tuple[tuple[int, int],
                                                                                           tuple[int, int] | None,
                                                                                           tuple[int, int] | None]:
    """For an image of ``size`` (w, h): the source image's size, the grid (columns, rows) of
    tiles or None, and the size the image is resized to before it is cut into that grid."""
    w, h = size
    multiple = min(math.ceil(w * h / (scale * scale)), max_slices)
    if multiple <= 1:
        return _best_size(size, scale, patch, True), None, None
    counts = [n for n in (multiple - 1, multiple, multiple + 1) if 1 < n <= max_slices]
    grids = [(m, n // m) for n in counts for m in range(1, n + 1) if n % m == 0]
    log_ratio, best, error = math.log(w / h), (1, 1), math.inf
    for grid in grids:
        e = abs(log_ratio - math.log(grid[0] / grid[1]))
        if e < error:
            best, error = grid, e
    cell = (_multiple_of(w, best[0]) / best[0], _multiple_of(h, best[1]) / best[1])
    cw, ch = _best_size(cell, scale, patch, True)
    return _best_size(size, scale, patch, False), best, (cw * best[0], ch * best[1])


# ----------------------------------------------------------------------------- model
class MiniCPMVConfig(LlamaConfig):
    model_type = MODEL_TYPE

    def __init__(self, query_num: int = 96, image_size: int = 448, patch_size: int = 14, slice_mode: bool = True,
                 slice_config: dict | None = None, vision_config: dict | None = None,
                 drop_vision_last_layer: bool = False, **kwargs):
        from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig

        kwargs.pop("auto_map", None)  # the checkpoint's own code, which this class replaces
        self.query_num, self.image_size, self.patch_size = query_num, image_size, patch_size
        self.slice_mode, self.slice_config = slice_mode, dict(slice_config or {})
        self.drop_vision_last_layer = drop_vision_last_layer
        if isinstance(vision_config, dict) or vision_config is None:
            vision = {k: v for k, v in (vision_config or {}).items() if k != "model_type"}
            vision_config = Idefics2VisionConfig(**vision)
        self.vision_config = vision_config
        super().__init__(**kwargs)


@lru_cache(maxsize=64)
def _key_positions(dim: int, rows: int, cols: int) -> torch.Tensor:
    return torch.from_numpy(sincos_grid(dim, rows, cols, column_first=True))


class MiniCPMVResampler(Resampler):
    def forward(self, patches: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """(slices, patches, kv_dim) features of slices with (rows, cols) patch ``grids``, padded
        on the right -> (slices, query_num, dim)."""
        n, width = patches.shape[:2]
        dim = self.query.shape[1]
        positions = torch.zeros(width, n, dim, device=patches.device)
        for i, (rows, cols) in enumerate(grids.tolist()):
            positions[: rows * cols, i] = _key_positions(dim, rows, cols).to(patches.device)
        padding = torch.arange(width, device=patches.device)[None] >= (grids[:, 0] * grids[:, 1])[:, None]
        queries = self.ln_q(self.query)[:, None].expand(-1, n, -1)
        return self.attend(queries, patches, positions, padding)


class MiniCPMVForCausalLM(LlamaForCausalLM):
    """The text model with the image modules beside it (``vpm``, ``resampler``); checkpoint
    names ``llm.model.*`` and ``llm.lm_head`` load as ``model.*`` and ``lm_head``."""

    config_class = MiniCPMVConfig

    def __init__(self, config: MiniCPMVConfig):
        from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

        super().__init__(config)
        self.vpm = Idefics2VisionTransformer(config.vision_config)
        if config.drop_vision_last_layer:
            self.vpm.encoder.layers = self.vpm.encoder.layers[:-1]
        self.resampler = MiniCPMVResampler(config.query_num, config.hidden_size,
                                           max(1, config.hidden_size // 128), config.vision_config.hidden_size)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        kwargs.setdefault("key_mapping", {r"^llm\.": ""})
        return super().from_pretrained(*args, **kwargs)

    def image_features(self, pixel_values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        patch = self.config.vision_config.patch_size
        lengths = grids[:, 0] * grids[:, 1]
        mask = torch.arange(pixel_values.shape[-1] // patch, device=grids.device)[None] < lengths[:, None]
        dtype = self.vpm.embeddings.patch_embedding.weight.dtype
        hidden = self.vpm(pixel_values.to(dtype), patch_attention_mask=mask[:, None, :]).last_hidden_state
        return self.resampler(hidden, grids)

    def image_slots(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where the resampler's outputs go: the tokens strictly inside <image> ... </image>."""
        start, end = self.config.image_start_id, self.config.image_end_id
        depth = (input_ids == start).long().cumsum(-1) - (input_ids == end).long().cumsum(-1)
        return (depth > 0) & (input_ids != start)

    def forward(self, input_ids=None, pixel_values=None, tgt_sizes=None, inputs_embeds=None, **kwargs):
        if pixel_values is not None and input_ids is not None and getattr(self.config, "image_start_id", None) \
                is not None:
            slots = self.image_slots(input_ids)
            if bool(slots.any()):
                inputs_embeds = self.model.embed_tokens(input_ids)
                features = self.image_features(pixel_values, tgt_sizes).to(inputs_embeds.dtype)
                inputs_embeds = inputs_embeds.masked_scatter(slots[..., None].expand_as(inputs_embeds),
                                                             features.reshape(-1))
                input_ids = None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


# ----------------------------------------------------------------------------- processor
class MiniCPMVProcessor:
    """Prompt text and slice pixels for a MiniCPM-Llama3-V-2.5 checkpoint, from its config.json
    and tokenizer.json alone (its own processor code is not run)."""

    def __init__(self, tokenizer, config: dict):
        slicing = config.get("slice_config") or {}
        self.tokenizer = tokenizer
        self.query_num = int(config.get("query_num", 96))
        self.patch = int(slicing.get("patch_size", config.get("patch_size", 14)))
        self.scale = int(slicing.get("scale_resolution", 448))
        self.max_slices = int(slicing.get("max_slice_nums", 9)) if config.get("slice_mode", True) else 1
        self.chat_template = CHAT_TEMPLATE
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_START, IMAGE_END, SLOT, END_OF_TURN)}
        self.config_ids = {"image_start_id": ids[IMAGE_START], "image_end_id": ids[IMAGE_END]}
        self.stop_ids = [ids[END_OF_TURN]]  # Llama 3 ends a turn there; the config names only <|end_of_text|>

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> MiniCPMVProcessor:
        from transformers import PreTrainedTokenizerFast

        config = json.loads((Path(path) / "config.json").read_text())
        if not (Path(path) / "tokenizer.json").is_file():
            raise ValueError(f"{path}: no tokenizer.json (MiniCPM-Llama3-V-2.5's folder ships one; copy it next to "
                             "config.json)")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        missing = [t for t in (IMAGE_START, IMAGE_END, SLICE_START, SLICE_END, SLOT, END_OF_TURN)
                   if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
        if missing:
            raise ValueError(f"{path}: the tokenizer lacks {', '.join(missing)} as single tokens; is this a "
                             "MiniCPM-Llama3-V-2.5 checkpoint?")
        return cls(tokenizer, config)

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = False, tokenize: bool = False, **kw):
        from jinja2 import Template

        text = Template(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                    marker=MARKER, bos_token=self.tokenizer.bos_token)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if tokenize else text

    def slices(self, image) -> tuple[list, str]:
        """The images the model sees for ``image`` (source first, then tiles row by row) and the
        text that stands for them in the prompt."""
        from PIL import Image

        image = image.convert("RGB")
        source, grid, refined = slice_layout(image.size, self.scale, self.patch, self.max_slices)
        block = IMAGE_START + SLOT * self.query_num + IMAGE_END
        images, text = [image.resize(source, Image.BICUBIC)], block
        if grid is not None:
            whole = image.resize(refined, Image.BICUBIC)
            cw, ch = refined[0] // grid[0], refined[1] // grid[1]
            images += [whole.crop((x * cw, y * ch, (x + 1) * cw, (y + 1) * ch))
                       for y in range(grid[1]) for x in range(grid[0])]
            text += SLICE_START + "\n".join(block * grid[0] for _ in range(grid[1])) + SLICE_END
        return images, text

    def strip(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """One slice as the tower reads it: (3, patch, patches*patch), its patches in raster
        order along the width, and its (rows, cols) patch grid."""
        array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
        pixels = torch.from_numpy(array).permute(2, 0, 1)
        p = self.patch
        grid = (pixels.shape[1] // p, pixels.shape[2] // p)
        cols = F.unfold(pixels[None], (p, p), stride=(p, p))[0]  # (3*p*p, patches)
        return cols.reshape(3, p, p, -1).permute(0, 1, 3, 2).reshape(3, p, -1), grid

    def __call__(self, images=None, text=None, *, return_tensors="pt", padding=True, add_special_tokens=True, **kw):
        texts = [text] if isinstance(text, str) else list(text)
        groups = [group if isinstance(group, list) else [group] for group in (images or [])]
        if len(groups) == 1 and len(texts) > 1 and len(groups[0]) == len(texts):  # a flat list, one per text
            groups = [[image] for image in groups[0]]
        strips, grids = [], []
        for i, prompt in enumerate(texts):
            for image in (groups[i] if i < len(groups) else []):
                parts, placeholder = self.slices(image)
                if MARKER not in prompt:
                    raise ValueError("the prompt has fewer image places than images")
                prompt = prompt.replace(MARKER, placeholder, 1)
                for part in parts:
                    pixels, grid = self.strip(part)
                    strips.append(pixels)
                    grids.append(grid)
            texts[i] = prompt
        enc = self.tokenizer(texts, return_tensors=return_tensors, padding=padding, add_special_tokens=add_special_tokens)
        if strips:
            width = max(s.shape[-1] for s in strips)
            enc["pixel_values"] = torch.stack([F.pad(s, (0, width - s.shape[-1])) for s in strips])
            enc["tgt_sizes"] = torch.tensor(grids, dtype=torch.long)
        return enc

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
