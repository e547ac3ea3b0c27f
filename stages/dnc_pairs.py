"""pair and filter of divide_and_conquer.

``pair``: within one record (one image and question), every two answers whose scores differ
by at least ``score_gap`` make a pair, the higher score chosen; then at most
``pairs_per_question`` of them are drawn at random, from a stream seeded by (seed, record) so
a rerun draws the same ones.

``filter``: the length-ratio search over all pairs of the run. For r = 0, 0.02, ..., 0.98 it
keeps the pairs with chosen != rejected and (rejected words - chosen words) / rejected words
<= r, and picks the r whose kept pairs have mean chosen and rejected lengths closest
(relative to the mean rejected length). The kept pairs are then shuffled with the seed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dpo_engine.stage import Batch, Outputs, PairRow

from ._base import ModelFree

RATIOS = np.round(np.arange(0, 1, 0.02), 2)


class ScorePairStage(ModelFree):
    name = "pair"
    after = ("score",)
    reads = ("scores",)
    writes = ("pairs",)
    scope = "record"

    def settings(self, config) -> dict:
        return {"score_gap": config.score_gap, "pairs_per_question": config.pairs_per_question,
                "seed": config.seed}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            scores = batch.scores.get(rid, [])
            candidates = []
            for i, a in enumerate(scores):
                for b in scores[i + 1:]:
                    if abs(a.score - b.score) >= config.score_gap:
                        hi, lo = (a, b) if a.score > b.score else (b, a)
                        candidates.append((hi.inner_idx, lo.inner_idx))
            if len(candidates) > config.pairs_per_question:
                rng = np.random.default_rng([config.seed, rid])
                picked = rng.choice(len(candidates), config.pairs_per_question, replace=False)
                candidates = [candidates[i] for i in picked]
            out.pairs.extend(PairRow(rid, o, c, r) for o, (c, r) in enumerate(candidates))
        return out


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


class LengthRatioFilterStage(ModelFree):
    name = "filter"
    after = ("pair",)
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    scope = "run"

    def settings(self, config) -> dict:
        return {"seed": config.seed, "ratios": [float(r) for r in RATIOS]}

    def process_run(self, pairs: Iterable[tuple], config) -> list[tuple[int, int]]:
        rows = np.array(list(pairs), dtype=np.int64).reshape(-1, 6)
        if len(rows) == 0:
            return []
        rids, ords, ch, rh, cw, rw = rows.T
        self.ratio, keep = best_ratio(cw.astype(np.float64), rw.astype(np.float64), ch != rh)
        kept_rids, kept_ords = rids[keep], ords[keep]
        perm = np.random.default_rng(config.seed).permutation(len(kept_rids))
        return list(zip(kept_rids[perm].tolist(), kept_ords[perm].tolist()))
