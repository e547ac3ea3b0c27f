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
