"""filter: the pairs of the whole run are filtered, then shuffled with the seed.

``FilterStage`` (dpo_reward) applies the reference's three filters:

* same: an exact duplicate pair (same record, same chosen and rejected text) is dropped;
* num: a pair whose chosen text equals its rejected text is dropped, and at most
  ``max_pairs_per_idx`` pairs are kept per record (the first ones, in rank order);
* length: while the mean of (chosen words - rejected words) is above ``length_balance``,
  the pair with the largest difference is removed (as the reference does, this only ever
  removes pairs whose chosen answer is the longer one).

Words are counted on whitespace; under ``compat="reference"`` as the reference counts them,
with punctuation marks and clitics as words (``text.reference_word_count``).

It needs the run's global mean, so it runs over the whole run at once, but reads the pairs
as a stream and keeps only a few numbers per pair in memory.

``LengthRatioFilterStage`` (divide_and_conquer) runs the length-ratio search: for
r = 0, 0.02, ..., 0.98 it keeps the pairs with chosen != rejected and
(rejected words - chosen words) / rejected words <= r, and picks the r whose kept pairs have
mean chosen and rejected lengths closest (relative to the mean rejected length).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dpo_engine.text import reference_word_count

from ._base import ModelFree

RATIOS = np.round(np.arange(0, 1, 0.02), 2)


def length_balance(diffs: np.ndarray, limit: float) -> np.ndarray:
    """Boolean mask of pairs kept after popping the largest differences until mean <= limit."""
    n = len(diffs)
    keep = np.ones(n, dtype=bool)
    if n == 0 or diffs.mean() <= limit:
        return keep
    order = np.argsort(-diffs, kind="stable")
    removed = np.cumsum(diffs[order])  # sum of the m+1 largest
    remaining = n - np.arange(1, n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = (diffs.sum() - removed) / remaining
    ok = np.nonzero((remaining > 0) & (means <= limit))[0]
    cut = int(ok[0]) + 1 if len(ok) else n
    keep[order[:cut]] = False
    return keep


class _RunFilter(ModelFree):
    """A filter over all pairs of the run; it returns the kept (rid, ord) shuffled with the seed."""

    name = "filter"
    after = ("pair",)
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    scope = "run"

    @staticmethod
    def shuffled(rids: np.ndarray, ords: np.ndarray, seed: int) -> list[tuple[int, int]]:
        perm = np.random.default_rng(seed).permutation(len(rids))
        return list(zip(rids[perm].tolist(), ords[perm].tolist()))


class FilterStage(_RunFilter):

    def settings(self, config) -> dict:
        compat = {"compat": config.compat} if config.compat != "off" else {}
        return {"max_pairs_per_idx": config.max_pairs_per_idx,
                "length_balance": config.length_balance, "seed": config.seed, **compat}

    def wants_texts(self, config) -> bool:
        return config.compat == "reference"  # it counts words its own way: reference_word_count

    def process_run(self, pairs: Iterable[tuple], config) -> list[tuple[int, int]]:
        """``pairs``: (rid, ord, chosen_hash, rejected_hash, chosen_words, rejected_words) by
        rid and ord. Returns the kept (rid, ord) in output (shuffled) order."""
        rids: list[int] = []
        ords: list[int] = []
        diffs: list[int] = []
        current, seen, count = None, set(), 0
        count_words = reference_word_count if self.wants_texts(config) else None
        for rid, ord_, ch, rh, cw, rw in pairs:
            if count_words is not None:
                cw, rw = count_words(cw), count_words(rw)
            if rid != current:
                current, seen, count = rid, set(), 0
            if ch == rh or (ch, rh) in seen or count >= config.max_pairs_per_idx:
                continue
            seen.add((ch, rh))
            count += 1
            rids.append(rid)
            ords.append(ord_)
            diffs.append(cw - rw)
        keep = length_balance(np.asarray(diffs, dtype=np.float64), config.length_balance)
        return self.shuffled(np.asarray(rids, dtype=np.int64)[keep], np.asarray(ords, dtype=np.int64)[keep],
                             config.seed)


def best_ratio(chosen_words: np.ndarray, rejected_words: np.ndarray, distinct: np.ndarray) -> tuple[float, np.ndarray]:
    """The r of the length-ratio search and the mask of pairs it keeps."""
    ratio = (rejected_words - chosen_words) / np.maximum(rejected_words, 1)
    best_r, best_gap, best_keep = float(RATIOS[-1]), np.inf, distinct & (ratio <= RATIOS[-1])
    for r in RATIOS:
        keep = distinct & (ratio <= r)
        if not keep.any():
            continue
        mean_rejected = rejected_words[keep].mean()
        gap = abs(chosen_words[keep].mean() - mean_rejected) / max(mean_rejected, 1e-9)
        if gap < best_gap:
            best_r, best_gap, best_keep = float(r), gap, keep
    return best_r, best_keep


class LengthRatioFilterStage(_RunFilter):

    def settings(self, config) -> dict:
        return {"seed": config.seed, "ratios": [float(r) for r in RATIOS]}

    def process_run(self, pairs: Iterable[tuple], config) -> list[tuple[int, int]]:
        rows = np.array(list(pairs), dtype=np.int64).reshape(-1, 6)
        if len(rows) == 0:
            return []
        rids, ords, ch, rh, cw, rw = rows.T
        _, keep = best_ratio(cw.astype(np.float64), rw.astype(np.float64), ch != rh)
        return self.shuffled(rids[keep], ords[keep], config.seed)
