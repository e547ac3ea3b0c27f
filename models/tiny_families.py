"""Tiny random-weight checkpoints of every image-text-to-text family we support, and of the
text chat families the split and question roles use, built offline with each family's real
config, model and processor classes (for the family matrix in the tests).

Every checkpoint shares one shape: a 64-wide text model with 32-dimensional heads, a 32-wide
vision tower on 32-pixel images cut into 8-pixel patches, and the word-level tokenizer of
``tiny.py`` with the family's own special tokens. Each family's chat template follows the
family's conventions where our code depends on them: where the image placeholder goes, and
which token ends an assistant turn (``<end_of_turn>`` for Gemma 3, ``<|im_end|>`` for Qwen ...),
which the generation config lists as a stop token beside ``</s>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .tiny import build_tokenizer, save_hub_layout

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=1024)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
              image_size=32, patch_size=8)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
SLIDING_WINDOW = 512  # above every tiny prompt + answer, so sliding layers see the whole sequence
QWEN_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}  # sums to head_dim / 2


def chat_template(placeholder: str, end_of_turn: str, *, start: str = "") -> str:
    """USER: / ASSISTANT: turns; the image item becomes ``placeholder``, an assistant turn ends
    with ``end_of_turn``, and the whole conversation begins with ``start``."""
    return (
        start + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}" + placeholder + "\n"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{% if message['role'] == 'user' %} {% else %}" + end_of_turn + "{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


@dataclass(frozen=True)
class VlmSpec:
    """What one image-text-to-text family needs: its tokens, config, processor and template."""

    specials: tuple[str, ...]
    named: dict[str, str]
    placeholder: str  # what the chat template writes for an image
    config: Callable  # (T, text, token_id) -> config; text holds the shared text fields
    processor: Callable  # (T, tokenizer) -> processor
    end_of_turn: str = "</s>"
    start: str = ""  # text the template opens with ("<s>" where the processor would misplace BOS)
    bos: bool = True  # the tokenizer adds BOS
    words: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # extra packages the processor needs


def _qwen_config(cls_name: str, vision: dict, **text_extra) -> Callable:
    def make(T, text, tid):
        return getattr(T, cls_name)(
            vision_config=vision, text_config=dict(text, rope_parameters=QWEN_ROPE, **text_extra),
            image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
            vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    return make


def _qwen_processor(cls_name: str, video_cls: str) -> Callable:
    def make(T, tok):
        grid = dict(patch_size=8, merge_size=2, temporal_patch_size=2)
        return getattr(T, cls_name)(
            image_processor=T.Qwen2VLImageProcessorPil(**grid, size={"shortest_edge": 1024, "longest_edge": 1024}),
            tokenizer=tok, video_processor=getattr(T, video_cls)(**grid))
    return make


_QWEN_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>", "<|im_end|>")
_QWEN_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
_QWEN_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
_IDEFICS_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                   *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))
_GOT_OCR = dict(size={"height": 32, "width": 32}, max_patches=1)


def _idefics_image(T, cls_name: str):
    return getattr(T, cls_name)(do_image_splitting=False, size={"longest_edge": 32},
                                max_image_size={"longest_edge": 32})


VLM_FAMILIES: dict[str, VlmSpec] = {
    "llava": VlmSpec(
        ("<image>",), {"image_token": "<image>"}, "<image>",
        lambda T, text, tid: T.LlavaConfig(vision_config=T.CLIPVisionConfig(**VISION, projection_dim=32),
                                           text_config=T.LlamaConfig(**text), image_token_id=tid("<image>")),
        lambda T, tok: T.LlavaProcessor(
            image_processor=T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)),
    "llava_next": VlmSpec(
        ("<image>",), {"image_token": "<image>"}, "<image>",
        lambda T, text, tid: T.LlavaNextConfig(
            vision_config=T.CLIPVisionConfig(**VISION, projection_dim=32), text_config=T.LlamaConfig(**text),
            image_token_id=tid("<image>"), image_grid_pinpoints=PINPOINTS),
        lambda T, tok: T.LlavaNextProcessor(
            image_processor=T.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                         image_grid_pinpoints=PINPOINTS),
            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)),
    "llava_onevision": VlmSpec(
        ("<image>", "<video>", "<|im_end|>"), {"image_token": "<image>", "video_token": "<video>"}, "<image>",
        lambda T, text, tid: T.LlavaOnevisionConfig(
            vision_config=T.SiglipVisionConfig(**VISION), text_config=T.Qwen2Config(**text),
            image_token_id=tid("<image>"), video_token_id=tid("<video>"), image_grid_pinpoints=PINPOINTS),
        lambda T, tok: T.LlavaOnevisionProcessor(
            image_processor=T.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                              image_grid_pinpoints=PINPOINTS),
            tokenizer=tok, video_processor=T.LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32}),
            num_image_tokens=16, vision_feature_select_strategy="full"),
        end_of_turn="<|im_end|>", needs=("torchvision",)),
    "qwen2_vl": VlmSpec(
        _QWEN_TOKENS, _QWEN_NAMED, _QWEN_PLACEHOLDER,
        _qwen_config("Qwen2VLConfig", dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=8,
                                           spatial_merge_size=2, temporal_patch_size=2)),
        _qwen_processor("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
        end_of_turn="<|im_end|>", needs=("torchvision",)),
    "qwen2_5_vl": VlmSpec(
        _QWEN_TOKENS, _QWEN_NAMED, _QWEN_PLACEHOLDER,
        _qwen_config("Qwen2_5_VLConfig", dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64,
                                              num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                                              window_size=32, fullatt_block_indexes=[1])),
        _qwen_processor("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
        end_of_turn="<|im_end|>", needs=("torchvision",)),
    "qwen3_vl": VlmSpec(
        _QWEN_TOKENS, _QWEN_NAMED, _QWEN_PLACEHOLDER,
        _qwen_config("Qwen3VLConfig", dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64,
                                           num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                                           num_position_embeddings=16, deepstack_visual_indexes=[0]), head_dim=32),
        _qwen_processor("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
        end_of_turn="<|im_end|>", needs=("torchvision",)),
    "idefics3": VlmSpec(
        _IDEFICS_TOKENS, {}, "<image>",
        lambda T, text, tid: T.Idefics3Config(vision_config=VISION, text_config=T.LlamaConfig(**text),
                                              image_token_id=tid("<image>"), scale_factor=2),
        lambda T, tok: T.Idefics3Processor(image_processor=_idefics_image(T, "Idefics3ImageProcessorPil"),
                                           tokenizer=tok, image_seq_len=4),
        end_of_turn="<end_of_utterance>"),
    "smolvlm": VlmSpec(
        _IDEFICS_TOKENS, {}, "<image>",
        lambda T, text, tid: T.SmolVLMConfig(vision_config=VISION, text_config=T.LlamaConfig(**text),
                                             image_token_id=tid("<image>"), scale_factor=2),
        lambda T, tok: T.SmolVLMProcessor(image_processor=_idefics_image(T, "SmolVLMImageProcessorPil"),
                                          tokenizer=tok, video_processor=T.SmolVLMVideoProcessor(), image_seq_len=4),
        end_of_turn="<end_of_utterance>", needs=("torchvision", "num2words")),
    "gemma3": VlmSpec(
        ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"),
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
        "<start_of_image>",
        lambda T, text, tid: T.Gemma3Config(
            vision_config=T.SiglipVisionConfig(**VISION, vision_use_head=False),
            text_config=T.Gemma3TextConfig(**text, head_dim=32, query_pre_attn_scalar=32, sliding_window=SLIDING_WINDOW,
                                           layer_types=["sliding_attention", "full_attention"]),
            mm_tokens_per_image=4, image_token_index=tid("<image_soft_token>"),
            boi_token_index=tid("<start_of_image>"), eoi_token_index=tid("<end_of_image>")),
        lambda T, tok: T.Gemma3Processor(image_processor=T.Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                         tokenizer=tok, image_seq_length=4),
        end_of_turn="<end_of_turn>", start="<s>"),
    "paligemma": VlmSpec(
        ("<image>",), {"image_token": "<image>"}, "<image>",
        lambda T, text, tid: T.PaliGemmaConfig(
            vision_config=T.SiglipVisionConfig(**VISION, vision_use_head=False),
            text_config=T.GemmaConfig(**text, head_dim=32), image_token_index=tid("<image>"),
            projection_dim=64, hidden_size=64, vocab_size=text["vocab_size"]),
        lambda T, tok: T.PaliGemmaProcessor(
            image_processor=T.SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=16),
            tokenizer=tok),
        bos=False),
    "mllama": VlmSpec(
        ("<|image|>", "<|eot_id|>"), {"image_token": "<|image|>"}, "<|image|>",
        lambda T, text, tid: T.MllamaConfig(
            vision_config=dict(VISION, num_global_layers=1, attention_heads=1, max_num_tiles=1,
                               supported_aspect_ratios=[[1, 1]], intermediate_layers_indices=[0], vision_output_dim=64),
            text_config=dict(text, num_hidden_layers=3, cross_attention_layers=[1]),
            image_token_index=tid("<|image|>")),
        lambda T, tok: T.MllamaProcessor(
            image_processor=T.MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=1), tokenizer=tok),
        end_of_turn="<|eot_id|>", start="<s>"),
    "mistral3": VlmSpec(
        ("[IMG]", "[IMG_BREAK]", "[IMG_END]"), {}, "[IMG]",
        lambda T, text, tid: T.Mistral3Config(
            vision_config=dict(VISION, head_dim=32), text_config=T.MistralConfig(**text, sliding_window=None),
            image_token_index=tid("[IMG]"), spatial_merge_size=2),
        lambda T, tok: T.PixtralProcessor(
            image_processor=T.PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=8),
            tokenizer=tok, patch_size=8, spatial_merge_size=2),
        needs=("torchvision",)),
    "internvl": VlmSpec(
        ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|im_end|>"),
        {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
         "video_token": "<video>"},
        "<IMG_CONTEXT>",
        lambda T, text, tid: T.InternVLConfig(
            vision_config=dict(VISION, image_size=[32, 32], patch_size=[8, 8]), text_config=T.Qwen2Config(**text),
            image_token_id=tid("<IMG_CONTEXT>"), image_seq_length=4, downsample_ratio=0.5),
        lambda T, tok: T.InternVLProcessor(image_processor=T.GotOcr2ImageProcessorPil(**_GOT_OCR), tokenizer=tok,
                                           video_processor=T.InternVLVideoProcessor(), image_seq_length=4),
        end_of_turn="<|im_end|>", needs=("torchvision",)),
    "aya_vision": VlmSpec(
        ("<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "<|END_OF_TURN_TOKEN|>"),
        {}, "<image>",
        lambda T, text, tid: T.AyaVisionConfig(
            vision_config=T.SiglipVisionConfig(**VISION, vision_use_head=False),
            text_config=T.Cohere2Config(**text, layer_types=["sliding_attention", "full_attention"],
                                        sliding_window=SLIDING_WINDOW),
            image_token_index=tid("<|IMG_PATCH|>"), downsample_factor=2),
        lambda T, tok: T.AyaVisionProcessor(image_processor=T.GotOcr2ImageProcessorPil(**_GOT_OCR), tokenizer=tok,
                                            patch_size=8, downsample_factor=2, img_size=32),
        end_of_turn="<|END_OF_TURN_TOKEN|>", words=("tile_global", *(f"tile_{i}" for i in range(1, 13)))),
}


def missing_packages(family: str) -> list[str]:
    """The extra packages ``family``'s processor needs that are not installed here."""
    from importlib.util import find_spec

    return [name for name in VLM_FAMILIES[family].needs if find_spec(name) is None]


def build_tiny_vlm(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of ``family`` (model, tokenizer, processor, template)."""
    import torch
    import transformers as T

    from .runtime import quiet_transformers

    quiet_transformers()
    spec = VLM_FAMILIES[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec.specials, spec.named, bos=spec.bos, words=spec.words)
    processor = spec.processor(T, tok)  # before the vocabulary size: PaliGemma's adds 1,152 tokens
    tok = processor.tokenizer
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = spec.config(T, dict(TEXT, vocab_size=len(tok), **ids), tok.convert_tokens_to_ids)
    torch.manual_seed(seed)
    model = T.AutoModelForImageTextToText.from_config(config)
    stops = sorted({tok.eos_token_id, tok.convert_tokens_to_ids(spec.end_of_turn)})
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    save_hub_layout(model, out)
    processor.chat_template = chat_template(spec.placeholder, spec.end_of_turn, start=spec.start)
    processor.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"seed": seed, "family": family}))
    return out


# ----------------------------------------------------------------------------- text chat models
CHAT_FAMILIES: dict[str, Callable] = {
    "llama": lambda T, text: T.LlamaConfig(**text),
    "qwen2": lambda T, text: T.Qwen2Config(**text),
    "qwen3": lambda T, text: T.Qwen3Config(**text, head_dim=32),
    "gemma3_text": lambda T, text: T.Gemma3TextConfig(**text, head_dim=32, query_pre_attn_scalar=32,
                                                      sliding_window=SLIDING_WINDOW,
                                                      layer_types=["sliding_attention", "full_attention"]),
    "mistral": lambda T, text: T.MistralConfig(**text, sliding_window=None),
    "phi3": lambda T, text: T.Phi3Config(**text),
}
CHAT_END_OF_TURN = {"gemma3_text": "<end_of_turn>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>"}


def build_byte_bpe_tokenizer(specials: tuple[str, ...], *, bos: str = "<s>", eos: str = "</s>",
                             pad: str | None = "<pad>", unk: str | None = "<unk>", add_bos: bool = False):
    """A byte-level BPE tokenizer trained here on the tiny vocabulary: Qwen2's tokenizer class
    rebuilds itself from a BPE's vocabulary and merges, which a word-level model does not have;
    Llama 3's is one too (no pad or unk token, BOS added in front of every text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .tiny import PUNCTUATION, TEMPLATE_WORDS, WORDS, _template_words

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    base = list(dict.fromkeys(t for t in (pad, bos, eos, unk, *specials) if t))
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=base,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(WORDS), " ".join(TEMPLATE_WORDS + PUNCTUATION), " ".join(_template_words())]
    tok.train_from_iterator([line for line in corpus for _ in range(3)] + [w.upper() for w in TEMPLATE_WORDS],
                            trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   pad_token=pad)
    extra = [t for t in specials if t not in (bos, eos, pad, unk)]
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    return fast


# The released RLAIF-V split and question-change models are Llama-3-8B-Instruct fine-tunes: a
# Llama layout, a byte-level BPE with these special tokens, eos <|eot_id|>, no pad token, and
# Llama 3's chat template (a header per turn, each turn closed by <|eot_id|>).
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
                   "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def build_tiny_llama3_chat(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A random-weight causal LM in the layout of the released split/question-change models."""
    import torch
    import transformers as T

    from .runtime import quiet_transformers

    quiet_transformers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_byte_bpe_tokenizer(LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None,
                                   add_bos=True)
    tok.chat_template = LLAMA3_TEMPLATE
    text = dict(TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(T.LlamaConfig(**text, rope_theta=500000.0))
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|end_of_text|>"), tok.eos_token_id]
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"seed": seed, "family": "llama3", "role": "chat"}))
    return out


def build_tiny_chat_family(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """A random-weight causal LM of ``family`` with a chat template, for the split/question roles."""
    import torch
    import transformers as T

    from .runtime import quiet_transformers

    quiet_transformers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    end = CHAT_END_OF_TURN.get(family, "</s>")
    specials = (end,) if end != "</s>" else ()
    tok = build_byte_bpe_tokenizer(specials) if family == "qwen2" else build_tokenizer(specials, {})
    tok.chat_template = chat_template("", end)
    text = dict(TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(CHAT_FAMILIES[family](T, text))
    stops = sorted({tok.eos_token_id, tok.convert_tokens_to_ids(end)})
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"seed": seed, "family": family, "role": "chat"}))
    return out


# ----------------------------------------------------------------------------- OmniLMM
OMNILMM_TOWER = {"img_size": 56, "embed_dim": 32, "depth": 3, "num_heads": 2}  # hidden 64: a kv_proj


def build_sentencepiece_tokenizer(out: Path, added: tuple[str, ...]):
    """A Mistral-style tokenizer as the OmniLMM checkpoints ship it: a SentencePiece BPE model
    (``tokenizer.model``, byte fallback, trained here on the tiny vocabulary) and
    ``tokenizer_config.json`` naming ``LlamaTokenizer``, with ``added`` appended after the model's
    pieces, in order; no ``tokenizer.json``. Returned as transformers loads it from ``out``."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from .tiny import PUNCTUATION, TEMPLATE_WORDS, WORDS, _template_words

    lines = [" ".join(WORDS), " ".join(TEMPLATE_WORDS + PUNCTUATION), " ".join(_template_words())]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines * 20), model_writer=model, vocab_size=1000,
                                   hard_vocab_limit=False, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   split_digits=True, normalization_rule_name="identity", minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    size = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    decoder = {str(size + i): {"content": token, "special": True, "lstrip": False, "rstrip": False,
                               "normalized": False, "single_word": False} for i, token in enumerate(added)}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "added_tokens_decoder": decoder}, indent=1))
    return AutoTokenizer.from_pretrained(out)


def build_tiny_omnilmm(out_dir: str | Path, *, seed: int = 0, shards: int = 2) -> Path:
    """A random-weight OmniLMM checkpoint in the published layout: ``model_type: omnilmm``, the
    reference's weight names, its 9 added tokens in their order, safetensors shards with an
    index, and the tower's sizes as ``mm_vision_tower_kwargs`` (the real ones carry none)."""
    import torch

    from .omnilmm import ADDED_TOKENS, PATCH, TOWER, OmniLMMConfig, OmniLMMForCausalLM
    from .runtime import quiet_transformers

    quiet_transformers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_sentencepiece_tokenizer(out, ADDED_TOKENS)
    config = OmniLMMConfig(**TEXT, vocab_size=len(tok), sliding_window=None, num_query=4, image_size=56,
                           mm_vision_tower_kwargs=OMNILMM_TOWER, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           architectures=["OmniLMMForCausalLM"])
    config.mm_vision_tower = TOWER
    torch.manual_seed(seed)
    model = OmniLMMForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(out, max_shard_size=max(1, total // shards + 1))
    assert tok.convert_tokens_to_ids(PATCH) != tok.unk_token_id
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"seed": seed, "family": "omnilmm"}))
    return out


# ----------------------------------------------------------------------------- MiniCPM-V 2.5
MINICPMV_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "patch_size": 14, "image_size": 980, "model_type": "idefics2"}
MINICPMV_AUTO_MAP = {"AutoConfig": "configuration_minicpm.MiniCPMVConfig", "AutoModel": "modeling_minicpmv.MiniCPMV",
                     "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV"}


def build_tiny_minicpmv(out_dir: str | Path, *, seed: int = 0, scale_resolution: int = 56) -> Path:
    """A random-weight MiniCPM-Llama3-V-2.5 checkpoint in the published layout: its config keys
    (``auto_map`` to code that is not there, as the real folder's would be without its .py files),
    weights named ``llm.*``, ``vpm.*`` and ``resampler.*`` in safetensors shards with an index, a
    Llama 3 byte-level BPE with the image tokens. Small slices (``scale_resolution``) and 4
    queries keep prompts short; the slicing is the real one."""
    import torch
    from safetensors.torch import save_file

    from .minicpmv import IMAGE_END, IMAGE_START, SLICE_END, SLICE_START, MiniCPMVConfig, MiniCPMVForCausalLM
    from .runtime import quiet_transformers

    quiet_transformers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = (*LLAMA3_SPECIALS, IMAGE_START, IMAGE_END, SLICE_START, SLICE_END)
    tok = build_byte_bpe_tokenizer(specials, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, unk="<unk>",
                                   add_bos=True)
    tok.chat_template = LLAMA3_TEMPLATE
    slicing = {"max_slice_nums": 9, "patch_size": 14, "model_type": "minicpmv", "scale_resolution": scale_resolution}
    config = MiniCPMVConfig(**TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            rope_theta=500000.0, query_num=4, slice_config=slicing, vision_config=MINICPMV_VISION)
    torch.manual_seed(seed)
    model = MiniCPMVForCausalLM(config).eval()
    names = {"model.": "llm.model.", "lm_head.": "llm.lm_head."}
    state = {}
    for name, tensor in model.state_dict().items():
        prefix = next((p for p in names if name.startswith(p)), None)
        state[names[prefix] + name[len(prefix):] if prefix else name] = tensor.contiguous()
    shards = [dict(sorted(state.items())[i::2]) for i in range(2)]
    files = [f"model-{i + 1:05d}-of-00002.safetensors" for i in range(2)]
    for shard, name in zip(shards, files):
        save_file(shard, out / name, metadata={"format": "pt"})
    weight_map = {key: name for shard, name in zip(shards, files) for key in shard}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    cfg = config.to_dict()
    cfg.update(model_type="minicpmv", architectures=["MiniCPMV"], auto_map=MINICPMV_AUTO_MAP,
               vision_config=MINICPMV_VISION, batch_vision_input=True, mm_use_im_start_end=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": tok.bos_token_id,
                                                            "eos_token_id": tok.eos_token_id}))
    tok.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"seed": seed, "family": "minicpmv"}))
    return out
