"""OmniLMM-12B and RLAIF-V-12B: a Mistral text model reading an EVA02 image tower through a
perceiver resampler, in the published checkpoints' own layout (``model_type: omnilmm``, no
``auto_map``: neither transformers nor vLLM can load them). Written here from the
architecture's description; ``models.family`` registers it with transformers' auto classes, so the
image-text adapter (``models.hf.vlm``) samples, scores and checks with it like any other
family, fast paths included (the image tokens sit in the cached prefix).

* Vision: timm's ``eva02_enormous_patch14_clip_224`` (``timm`` is the ``omnilmm`` extra), its
  last block skipped (the second-to-last block's output), the final norm applied, the class
  token dropped. Real checkpoints carry no tower sizes; tiny ones give timm keyword overrides in
  ``config.json`` as ``mm_vision_tower_kwargs``.
* Resampler: ``num_query`` learned queries (a square grid) attend, with ``hidden_size / 128``
  heads, to the projected patch features; 2-D sin-cos positions for both, the keys' resized
  (bicubic) to the image's patch grid. Its output replaces the ``<im_patch>`` embeddings.
* Prompt: the Zephyr chat format with the reference's system prompt; the image is
  ``<im_start>`` + ``<im_patch>`` × num_query + ``<im_end>`` and a newline before the question.
* Image: RGB, resized to ``image_size`` square (the aspect ratio is not kept, bicubic),
  normalised with CLIP's mean and std.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import MistralConfig, MistralForCausalLM

from .resampler import Resampler, sincos_grid

MODEL_TYPE = "omnilmm"
PATCH, START, END = "<im_patch>", "<im_start>", "<im_end>"
# In the order the reference's tokenizer setup adds them (ids 32000-32008 in the real models).
ADDED_TOKENS = (PATCH, START, END, "<box>", "</box>", "<ref>", "</ref>", "<quad>", "</quad>")
SYSTEM = ("You are an artificial intelligence assistant, which gives helpful, detailed, and polite answers "
          "to the human's questions.")
TOWER = "eva02_enormous_patch14_clip_224"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The Zephyr format; an image item becomes the image's tokens and a newline.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|system|>\n" + SYSTEM + "</s>\n{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ image_tokens }}\n{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def sincos_positions(dim: int, grid: int) -> np.ndarray:
    """(grid*grid, dim) 2-D sin-cos position embeddings, the row in the first half of each vector."""
    return sincos_grid(dim, grid, grid)


def resize_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """A square grid's position table resized (bicubic) to a square grid of ``length`` cells."""
    src, dst = int(round(table.shape[0] ** 0.5)), int(round(length ** 0.5))
    if src == dst:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(dst * dst, -1).to(table.dtype)


class OmniLMMResampler(Resampler):
    """Queries and keys both carry positions: the queries' square grid, resized for the keys."""

    def __init__(self, num_query: int, dim: int, heads: int, kv_dim: int):
        grid = int(round(num_query ** 0.5))
        if grid * grid != num_query:
            raise ValueError(f"num_query {num_query} is not a square grid")
        super().__init__(num_query, dim, heads, kv_dim)
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_positions(dim, grid)), requires_grad=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(batch, patches, kv_dim) -> (batch, num_query, dim)."""
        keys_pos = resize_positions(self.pos_embed, patches.shape[1])
        queries = (self.ln_q(self.query) + self.pos_embed)[:, None].expand(-1, patches.shape[0], -1)
        return self.attend(queries, patches, keys_pos[:, None])


class _Skip(nn.Module):
    """Stands in for the tower's last block: the second-to-last block's output goes on."""

    def forward(self, x, *args, **kwargs):
        return x


def build_tower(config) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ImportError("OmniLMM's image tower needs timm: pip install 'dpo-engine[omnilmm]'") from exc
    overrides = dict(getattr(config, "mm_vision_tower_kwargs", None) or {})
    tower = timm.create_model(TOWER, pretrained=False, num_classes=0, dynamic_img_size=True, dynamic_img_pad=True,
                              **overrides)
    tower.blocks[-1] = _Skip()
    return tower


class OmniLMMConfig(MistralConfig):
    model_type = MODEL_TYPE

    def __init__(self, num_query: int = 64, image_size: int = 448, mm_vision_tower_kwargs: dict | None = None,
                 **kwargs):
        self.num_query = num_query
        self.image_size = image_size
        self.mm_vision_tower_kwargs = mm_vision_tower_kwargs
        super().__init__(**kwargs)


class OmniLMMForCausalLM(MistralForCausalLM):
    config_class = OmniLMMConfig

    def __init__(self, config: OmniLMMConfig):
        super().__init__(config)
        tower = build_tower(config)
        self.model.vision_tower = tower
        self.model.resampler = OmniLMMResampler(config.num_query, config.hidden_size, max(1, config.hidden_size // 128),
                                         tower.embed_dim)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.reset_constant_buffers()
        return model

    @torch.no_grad()
    def reset_constant_buffers(self) -> None:
        """EVA's attention keeps a zero key bias as a buffer that is not saved; a model built on
        the meta device and then loaded gets it uninitialised (seen: numbers off by 1e-4), so
        it is set again here."""
        for module in self.model.vision_tower.modules():
            bias = getattr(module, "k_bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = self.model.vision_tower
        patches = tower.forward_features(pixel_values.to(tower.patch_embed.proj.weight.dtype))
        return self.model.resampler(patches[:, getattr(tower, "num_prefix_tokens", 0):])

    def forward(self, input_ids=None, pixel_values=None, inputs_embeds=None, **kwargs):
        patch_id = getattr(self.config, "image_token_id", None)  # filled from the tokenizer when loaded
        if pixel_values is not None and input_ids is not None and patch_id is not None \
                and bool((input_ids == patch_id).any()):
            inputs_embeds = self.model.embed_tokens(input_ids)
            features = self.image_features(pixel_values).to(inputs_embeds.dtype)
            where = (input_ids == patch_id)[..., None].expand_as(inputs_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(where, features.reshape(-1))
            input_ids = None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


class OmniLMMProcessor:
    """Prompt text and pixels for an OmniLMM checkpoint (the real ones ship no processor files:
    everything comes from ``config.json`` and the tokenizer)."""

    def __init__(self, tokenizer, image_size: int, num_query: int):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_query = num_query
        self.image_tokens = START + PATCH * num_query + END
        self.chat_template = CHAT_TEMPLATE
        self.config_ids = {"image_token_id": tokenizer.convert_tokens_to_ids(PATCH)}  # the configs name none

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> OmniLMMProcessor:
        from transformers import AutoTokenizer

        config = json.loads((Path(path) / "config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        missing = [t for t in (PATCH, START, END) if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
        if missing:
            raise ValueError(f"{path}: the tokenizer lacks {', '.join(missing)}; is this an OmniLMM checkpoint?")
        return cls(tokenizer, int(config.get("image_size", 448)), int(config.get("num_query", 64)))

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = False, tokenize: bool = False, **kw):
        from jinja2 import Template

        text = Template(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                    image_tokens=self.image_tokens)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if tokenize else text

    def pixels(self, image) -> torch.Tensor:
        from PIL import Image

        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
        return torch.from_numpy(array).permute(2, 0, 1)

    def __call__(self, images=None, text=None, *, return_tensors="pt", padding=True, add_special_tokens=True, **kw):
        enc = self.tokenizer(text, return_tensors=return_tensors, padding=padding, add_special_tokens=add_special_tokens)
        flat = [image for group in (images or []) for image in (group if isinstance(group, list) else [group])]
        if flat:
            enc["pixel_values"] = torch.stack([self.pixels(image) for image in flat])
        return enc

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
