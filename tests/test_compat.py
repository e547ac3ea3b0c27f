"""`--compat reference`: dpo_reward's pairs and rewards as the reference's code computes them,
checked against hand-worked expectations."""

from __future__ import annotations

import numpy as np

from dpo_engine.config import RunConfig
from dpo_engine.stage import Batch, LogprobRow, RewardRow, SampleRow
from dpo_engine.stages.pair import PairStage
from dpo_engine.stages.filters import FilterStage
from dpo_engine.stages.reward import RewardStage
from dpo_engine.text import reference_word_count, word_count


def _config(**kw) -> RunConfig:
    return RunConfig("dpo_reward", "d.parquet", "w", **kw)


def _batch(words: list[int]) -> Batch:
    """Ten answers of one record; answer j has reward 10 - j (so j=0 is best) and ``words[j]``
    words, each text distinct enough never to be a near-duplicate."""
    batch = Batch(rids=[0])
    for j, n in enumerate(words):
        text = " ".join(f"w{j}x{i}" for i in range(n))
        batch.samples.setdefault(0, []).append(SampleRow(0, j, text, n, n, j))
        batch.rewards.setdefault(0, []).append(RewardRow(0, j, 10.0 - j, (10.0 - j) / n, None, None))
    return batch


def _pairs(batch: Batch, config: RunConfig) -> list[tuple[int, int]]:
    return [(p.chosen, p.rejected) for p in PairStage().process(batch, None, config).pairs]


def test_the_reference_pairs_strictly_best_with_eighth_even_when_asked_for_distance():
    batch = _batch([20] * 10)
    assert _pairs(batch, _config(compat="reference")) == [(0, 7), (1, 8), (2, 9)]
    assert _pairs(batch, _config(compat="reference", strict_follow_rank=True)) == [(0, 7), (1, 8), (2, 9)]
    # ours: strict pairs the best with the worst; by default every chosen meets every rejected
    assert _pairs(batch, _config(strict_follow_rank=True)) == [(0, 9), (1, 8), (2, 7)]
    assert len(_pairs(batch, _config())) == 9


def test_the_reference_never_uses_the_distance():
    words = [10, 10, 10, 10, 10, 10, 10, 60, 60, 60]  # the rejected answers are 50 words longer
    batch = _batch(words)
    assert _pairs(batch, _config()) == []  # ours: |10 - 60| >= distance 25, no pair
    assert _pairs(batch, _config(compat="reference")) == [(0, 7), (1, 8), (2, 9)]


def test_the_reference_applies_beta_twice_to_avg_and_keeps_the_ranking():
    rng = np.random.default_rng(0)
    batch = Batch(rids=[0])
    n = [3, 5, 4]
    for role in ("instruct", "reward"):
        for j, tokens in enumerate(n):
            values = rng.normal(-2, 1, tokens).astype("<f4")
            batch.logprobs.setdefault(role, {}).setdefault(0, []).append(
                LogprobRow(0, j, role, tokens, float(values.sum()), float(values.mean()), values.tobytes()))
    ours = RewardStage().process(batch, None, _config(beta=0.1)).rewards
    reference = RewardStage().process(batch, None, _config(beta=0.1, compat="reference")).rewards
    for a, b, tokens in zip(ours, reference, n):
        d = (np.frombuffer(batch.logprobs["reward"][0][a.inner_idx].per_token, "<f4").astype(np.float64)
             - np.frombuffer(batch.logprobs["instruct"][0][a.inner_idx].per_token, "<f4").astype(np.float64))
        assert np.isclose(a.sum, 0.1 * d.sum()) and np.isclose(b.sum, a.sum)
        assert np.isclose(a.avg, 0.1 * d.sum() / tokens) and np.isclose(b.avg, 0.1 * d.sum() / tokens * 0.1)
    assert sorted(range(3), key=lambda j: ours[j].avg) == sorted(range(3), key=lambda j: reference[j].avg)


def test_compat_off_leaves_the_settings_hashes_as_they_were():
    from dpo_engine.pipelines import get_pipeline, stage_hashes

    stages = get_pipeline("dpo_reward").stages
    # at their defaults the new settings are not hashed at all, so stores of earlier runs resume
    assert all("compat" not in s.settings(_config()) and "reward_margin" not in s.settings(_config())
               for s in stages)
    changed = stage_hashes(stages, _config(compat="reference"))
    assert changed["sample"] == stage_hashes(stages, _config())["sample"] and changed["pair"] != \
        stage_hashes(stages, _config())["pair"]
    # top-k 50 (the reference's sampling, our default) is hashed; off, sampling hashes as before it
    sample = next(s for s in stages if s.name == "sample")
    assert sample.settings(_config())["top_k"] == 50 and "top_p" not in sample.settings(_config())
    assert "top_k" not in sample.settings(_config(top_k=0))


def test_the_reference_counts_punctuation_and_clitics_as_words():
    # worked by hand from the Penn Treebank rules nltk's word_tokenize applies
    cases = {"There is a red circle.": ["There", "is", "a", "red", "circle", "."],
             "The cat's on the mat, isn't it?": ["The", "cat", "'s", "on", "the", "mat", ",", "is", "n't", "it", "?"],
             "I can't see 3.5 shapes (maybe 1,000).": ["I", "ca", "n't", "see", "3.5", "shapes", "(", "maybe",
                                                       "1,000", ")", "."],
             "A well-known shape... They're blue!": ["A", "well-known", "shape", "...", "They", "'re", "blue", "!"],
             "It cannot be 3:30 -- not yet": ["It", "can", "not", "be", "3:30", "--", "not", "yet"]}
    for text, words in cases.items():
        assert reference_word_count(text) == len(words), text
    assert [word_count(t) for t in cases] == [5, 7, 7, 5, 7]  # ours: whitespace


def test_the_reference_length_filter_counts_words_its_way():
    """Pair 0's chosen is as long as its rejected by whitespace (4 and 4) but longer by the
    reference's count (8: every comma and the period are words), so the mean difference (0 against
    2) decides whether the length filter keeps it."""
    texts = [("a, b, c, d.", "x y z w"), ("p q", "r s")]
    ours = [(rid, 0, 2 * rid, 2 * rid + 1, word_count(c), word_count(r)) for rid, (c, r) in enumerate(texts)]
    reference = [(rid, 0, 2 * rid, 2 * rid + 1, c, r) for rid, (c, r) in enumerate(texts)]
    stage = FilterStage()
    assert not stage.wants_texts(_config()) and stage.wants_texts(_config(compat="reference"))
    assert sorted(stage.process_run(ours, _config())) == [(0, 0), (1, 0)]
    assert stage.process_run(reference, _config(compat="reference")) == [(1, 0)]


def test_a_compat_run_goes_through_the_store_and_writes_pairs(tiny_models, demo_parquet, tmp_path):
    """The reference's word counts reach the filter from the store's texts on a real run."""
    import json

    from conftest import cli, run_args

    summary = json.loads(cli(*run_args(tiny_models, demo_parquet, tmp_path / "W", "--compat", "reference",
                                       "--json")).stdout.splitlines()[-1])
    assert summary["pairs"] > 0 and all(s["failed"] == 0 for s in summary["stages"])
