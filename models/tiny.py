"""Build tiny random-weight checkpoints offline, for the demo, the tests and the benchmarks.

The checkpoints are real transformers models (LLaVA: a CLIP vision tower and a Llama text
model) saved with ``save_pretrained`` next to a real fast tokenizer built with ``tokenizers``,
a PIL image processor and a chat template, so they load through exactly the same code path
as ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BASE_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# A small English vocabulary, so that even random weights print words rather than bytes. The
# words of the shipped prompt templates are added when the tokenizer is built.
WORDS = """
a an the this that these those there here is are was were be has have it its of in on at to
with and or but not no yes one two three four five six many some few several small large big
tiny huge red green blue yellow orange purple pink black white gray brown circle circles square
squares triangle triangles star stars shape shapes object objects image picture photo left right
top bottom middle center corner near next above below beside between inside outside i see can
describe what which where how many colour color colours colors do you answer question please
background foreground side edge plain bright dark light round flat sharp empty full part also
each other only both all more less than very quite appears looks shows contains placed drawn
""".split()
PUNCTUATION = [".", ",", "?", "!", ":", ";", "'", "-", "###", "{", "}", "\n"]
TEMPLATE_WORDS = ["user", "assistant"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny LLaVA; ``small`` is big enough (>5M parameters) to time."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_layers: int
    image_size: int
    patch_size: int


SIZES = {
    # Text heads of 32 dimensions: vLLM's CPU attention accepts 32 or 64, not 16 or 40.
    "tiny": TinySize(64, 2, 2, 128, 32, 2, 32, 8),
    "small": TinySize(320, 4, 10, 864, 128, 2, 64, 8),
}


def save_hub_layout(model, out: str | Path) -> None:
    """``save_pretrained``, then rename the vision tower's tensors to the layout published
    llava-hf checkpoints use (``vision_tower.vision_model.*``): transformers reads both, vLLM
    only that one. Other models are saved as they are."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(out)
    path = Path(out) / "model.safetensors"
    if getattr(model.config, "model_type", None) != "llava" or not path.is_file():
        return
    tensors = load_file(path)
    if not any(k.startswith("vision_tower.embeddings.") for k in tensors):
        return
    renamed = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
               for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def _template_words() -> list[str]:
    import re

    from dpo_engine.prompts import QUESTION, SPLIT

    text = (SPLIT.read_text() + QUESTION.read_text()).lower()
    return sorted(set(re.findall(r"\w+", text)))


def build_tokenizer(specials: tuple[str, ...] = ("<image>",), named: dict[str, str] | None = None, *,
                    bos: bool = True, words: tuple[str, ...] = ()):
    """A word-level fast tokenizer, built without any download.

    ``specials`` are added as special tokens (never split or lowercased); ``named`` gives some of
    them the attribute names a processor looks for (``image_token`` ...); ``bos`` adds the BOS
    post-processor; ``words`` extends the vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in BASE_TOKENS + list(specials) + TEMPLATE_WORDS + PUNCTUATION + WORDS + _template_words() + list(words):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # Words, runs of punctuation, and newlines (kept: the split/question models answer in lines).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=dict(named if named is not None else {"image_token": "<image>"}),
    )
    if specials:
        fast.add_special_tokens({"additional_special_tokens": list(specials)})
    fast.padding_side = "left"
    return fast


def build_tiny_llava(out_dir: str | Path, *, seed: int = 0, size: str = "tiny",
                     base: str | Path | None = None, noise: float = 0.0) -> Path:
    """Write a random-weight LLaVA checkpoint (model, tokenizer, processor) to ``out_dir``.

    With ``base``, start from that checkpoint's weights and add Gaussian noise of scale
    ``noise`` (seeded): a stand-in for a DPO-tuned reward model close to its reference.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from .runtime import quiet_transformers

    quiet_transformers()
    dims = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=dims.vision_hidden,
        intermediate_size=dims.vision_hidden * 2,
        num_hidden_layers=dims.vision_layers,
        num_attention_heads=max(1, dims.vision_hidden // 64),  # 64-wide heads, as every CLIP tower
        image_size=dims.image_size,
        patch_size=dims.patch_size,
        projection_dim=dims.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=dims.text_hidden,
        intermediate_size=dims.text_intermediate,
        num_hidden_layers=dims.text_layers,
        num_attention_heads=dims.text_heads,
        num_key_value_heads=max(1, dims.text_heads // 2),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    if base is not None:
        model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * noise * p.std().clamp_min(1e-3))
    else:
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    save_hub_layout(model, out)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": dims.image_size},
        crop_size={"height": dims.image_size, "width": dims.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        patch_size=dims.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"seed": seed, "size": size}))
    return out


def build_tiny_chat(out_dir: str | Path, *, seed: int = 0, size: str = "small") -> Path:
    """A random-weight Llama chat model (the split / question-change role) with the tiny
    tokenizer and the chat template, saved with ``save_pretrained``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .runtime import quiet_transformers

    quiet_transformers()
    dims = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=dims.text_hidden, intermediate_size=dims.text_intermediate,
        num_hidden_layers=dims.text_layers, num_attention_heads=dims.text_heads,
        num_key_value_heads=max(1, dims.text_heads // 2), max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"seed": seed, "size": size, "role": "chat"}))
    return out
