"""Token ids that more than one backend needs, read from a tokenizer alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def yes_no_token_ids(tokenizer: Any, path: str | Path) -> tuple[list[int], list[int]]:
    """The ids of yes/Yes and no/No: their single-token spellings with and without a leading
    space, where the tokenizer tells the two apart. A tokenizer without separate single tokens
    for both answers cannot label claims: ValueError."""

    def ids(words: tuple[str, ...]) -> list[int]:
        found: set[int] = set()
        vocab = tokenizer.get_vocab()
        for word in words:
            for variant in (word, " " + word):
                toks = tokenizer.encode(variant, add_special_tokens=False)
                if len(toks) == 1:
                    found.add(toks[0])
            for marker in ("\u2581", "\u0120"):  # sentencepiece and byte-level BPE spaces
                if marker + word in vocab:
                    found.add(vocab[marker + word])
        return sorted(found)

    yes, no = ids(("yes", "Yes")), ids(("no", "No"))
    if not yes or not no or set(yes) & set(no):
        raise ValueError(f"{path}: the tokenizer has no separate single tokens for yes and no")
    return yes, no


def stop_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a reply: the generation config's eos ids (Gemma 3 lists <end_of_turn>
    there, Llama 3 <|eot_id|>) and the tokenizer's eos."""
    value = getattr(generation_config, "eos_token_id", None)
    ids = list(value) if isinstance(value, (list, tuple)) else ([value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ids})


END_SENTINEL = "\u00a7\u00a7end\u00a7\u00a7"


def end_of_turn_id(processor: Any, tokenizer: Any, stops: list[int]) -> int:
    """The token an image-text ``processor``'s chat template writes right after an assistant's
    reply (``<end_of_turn>``, ``<|im_end|>``, ``</s>`` ...): the token an answer's score ends
    with. Falls back to the tokenizer's eos (or the first stop id) when the template writes no
    stop token there."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": END_SENTINEL}]}]
    try:
        text = processor.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render an assistant turn
        text = ""
    if END_SENTINEL in text:
        after = tokenizer.encode(text.split(END_SENTINEL, 1)[1], add_special_tokens=False)
        for token in after[:2]:
            if token in stops:
                return int(token)
    return int(tokenizer.eos_token_id) if tokenizer.eos_token_id in stops else stops[0]
