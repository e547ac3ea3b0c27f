"""pair: chosen/rejected candidates within one record's answers.

``PairStage`` (dpo_reward) ranks the answers by reward:

1. Near-duplicates go first: in answer order, an answer whose word n-gram set has Jaccard
   similarity above the threshold with an already kept answer is dropped.
2. Chosen candidates are in the top ``rank`` by reward sum and by reward average; rejected
   candidates in the bottom ``rank`` by both.
3. With ``strict_follow_rank`` the i-th best chosen meets the i-th worst rejected; otherwise
   every chosen meets every rejected whose word count differs by less than ``distance``.

Beyond the reference: a pair needs its chosen answer to out-score its rejected one. With the
default k=10 and rank=3 the two candidate sets never overlap and this changes nothing; with a
small k (say 4) they do, and the reference would emit pairs whose "chosen" scored lower.
``reward_margin`` (default 0, the reference's behaviour) asks for more: a reward sum higher by
more than that, which drops pairs of answers the reward model barely tells apart.

``compat="reference"`` pairs as the reference's code does rather than as its names say: always
strict (its pipeline passes ``distance`` where ``strict_follow_rank`` goes), the rejected
candidates in descending reward order too (so rank 3 pairs the 1st with the 8th, the 2nd with
the 9th, the 3rd with the 10th), and no chosen-above-rejected check.

``ScorePairStage`` (divide_and_conquer): every two answers whose scores differ by at least
``score_gap`` make a pair, the higher score chosen; then at most ``pairs_per_question`` of
them are drawn at random, from a stream seeded by (seed, record) so a rerun draws the same.
"""

from __future__ import annotations

import numpy as np

from dpo_engine.stage import Batch, Outputs, PairRow
from dpo_engine.text import jaccard, ngram_set

from ._base import ModelFree


def drop_near_duplicates(texts: list[str], n: int, threshold: float) -> list[int]:
    """Indices of the texts kept, in order."""
    kept: list[int] = []
    sets: list[frozenset] = []
    for i, text in enumerate(texts):
        grams = ngram_set(text, n)
        duplicate = False
        if grams:
            for other in sets:
                small, large = sorted((len(grams), len(other)))
                # Jaccard can't exceed |small|/|large|: skip the intersection when that's too low.
                if large and small / large > threshold and jaccard(grams, other) > threshold:
                    duplicate = True
                    break
        if not duplicate:
            kept.append(i)
            sets.append(grams)
    return kept


class PairStage(ModelFree):
    name = "pair"
    after = ("reward",)
    reads = ("samples", "rewards")
    writes = ("pairs",)

    def settings(self, config) -> dict:
        # Settings at their defaults stay out, so the hashes of earlier runs stay the same.
        margin = {"reward_margin": config.reward_margin} if config.reward_margin else {}
        compat = {"compat": config.compat} if config.compat != "off" else {}
        return {"rank": config.rank, "distance": config.distance,
                "strict_follow_rank": config.strict_follow_rank,
                "ngram": config.ngram, "jaccard_threshold": config.jaccard_threshold, **margin, **compat}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            samples = batch.samples.get(rid, [])
            rewards = {r.inner_idx: r for r in batch.rewards.get(rid, [])}
            samples = [s for s in samples if s.inner_idx in rewards]
            keep = drop_near_duplicates([s.text for s in samples], config.ngram, config.jaccard_threshold)
            rows = [(s, rewards[s.inner_idx]) for s in (samples[i] for i in keep)]
            by_sum = sorted(rows, key=lambda x: (-x[1].sum, x[0].inner_idx))
            by_avg = sorted(rows, key=lambda x: (-x[1].avg, x[0].inner_idx))
            k = config.rank
            top = {s.inner_idx for s, _ in by_sum[:k]} & {s.inner_idx for s, _ in by_avg[:k]}
            bottom = {s.inner_idx for s, _ in by_sum[-k:]} & {s.inner_idx for s, _ in by_avg[-k:]}
            chosen = [x for x in by_sum if x[0].inner_idx in top]
            reference = config.compat == "reference"
            # ours: worst first, so the best meets the worst; the reference: best first
            rejected = [x for x in (by_sum if reference else reversed(by_sum)) if x[0].inner_idx in bottom]
            if config.strict_follow_rank or reference:
                candidates = list(zip(chosen, rejected))
            else:
                candidates = [(c, r) for c in chosen for r in rejected
                              if abs(c[0].n_words - r[0].n_words) < config.distance]
            order = 0
            for (cs, cr), (rs, rr) in candidates:
                if cs.inner_idx != rs.inner_idx and (reference or cr.sum - rr.sum > config.reward_margin):
                    out.pairs.append(PairRow(rid, order, cs.inner_idx, rs.inner_idx))
                    order += 1
        return out


class ScorePairStage(ModelFree):
    name = "pair"
    after = ("score",)
    reads = ("scores",)
    writes = ("pairs",)

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
