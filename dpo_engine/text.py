"""Text measures shared by the pair stage, the filters and the summaries (pure Python)."""

from __future__ import annotations

import hashlib
import re

# A CJK ideograph counts as one word on its own; anything else is split on whitespace.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def words(text: str) -> list[str]:
    if text.isascii():  # no CJK possible: plain whitespace split, 4x faster than the regex
        return text.split()
    return _WORD.findall(text)


def word_count(text: str) -> int:
    return len(words(text))


# How the reference counts words (nltk's word_tokenize, the Penn Treebank rules), for
# --compat reference: punctuation marks and clitics are words of their own ("isn't" is "is"
# "n't", "cat's" is "cat" "'s", "can't" is "ca" "n't", "cannot" is "can" "not"), numbers keep
# their inner points, commas and colons, hyphenated words stay whole, and "..." and "--" are
# one word each. nltk's sentence splitter keeps a period inside an abbreviation ("e.g.") on its
# word; here every period that ends no number counts on its own, which for model answers
# differs only on abbreviations.
_TREEBANK = re.compile(r"""
    \w+(?=n't\b)                # the word before "n't"
  | n't\b
  | \bcan(?=not\b) | (?<=can)not\b   # "cannot" is "can" "not"
  | '(?:s|re|ve|ll|d|m)\b        # clitics
  | \d+(?:[.,:]\d+)+            # 3.5, 1,000, 3:30
  | \w+(?:-\w+)*                # words, hyphenated ones whole
  | \.\.\. | --
  | [^\w\s]                     # any other mark
""", re.VERBOSE | re.IGNORECASE)


def reference_word_count(text: str) -> int:
    """Words as the reference counts them (see ``_TREEBANK``)."""
    return len(_TREEBANK.findall(text))


def ngram_set(text: str, n: int = 10) -> frozenset:
    """The set of word n-grams of ``text`` (empty when it has fewer than n words)."""
    w = words(text)
    if len(w) < n:
        return frozenset()
    return frozenset(zip(*[w[i:] for i in range(n)]))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def text_hash(text: str) -> int:
    """A stable signed 64-bit hash (fits an SQLite INTEGER) for equality tests on answers."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)
