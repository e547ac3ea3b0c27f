"""Stages of the ``logps`` pipeline, whose answers are given rather than sampled: a DPO dataset
already holds its pairs (``chosen``, ``rejected``), and all it lacks is the log-probs RLAIF-V's
trainer reads.

``AnswersStage`` takes each record's two answers from its input columns (answer 0 the chosen,
answer 1 the rejected); ``GivenPairStage`` pairs them as given; ``KeepAllStage`` keeps every
pair, in the dataset's order (nothing is filtered or shuffled: the file is the user's).
"""

from __future__ import annotations

from collections.abc import Iterable

from dpo_engine.stage import Batch, Outputs, PairRow, SampleRow
from dpo_engine.text import text_hash, word_count

from ._base import ModelFree

GIVEN = ("chosen", "rejected")


class AnswersStage(ModelFree):
    name = "answers"
    after: tuple[str, ...] = ()
    reads = ("records", "extras")
    writes = ("samples",)

    def settings(self, config) -> dict:
        return {"columns": list(GIVEN)}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            extra = batch.extras.get(rid, {})
            bad = [c for c in GIVEN if not isinstance(extra.get(c), str) or not extra[c].strip()]
            if bad:
                out.failed[rid] = f"no {' or '.join(bad)} answer (a non-empty text column) in this row"
                continue
            for j, column in enumerate(GIVEN):  # n_tokens 0: nothing was generated
                text = extra[column]
                out.samples.append(SampleRow(rid, j, text, 0, word_count(text), text_hash(text)))
        return out


class GivenPairStage(ModelFree):
    name = "pair"
    after = ("logps_instruct",)
    reads = ("samples",)
    writes = ("pairs",)

    def settings(self, config) -> dict:
        return {"as_given": True}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            if len(batch.samples.get(rid, [])) == 2:
                out.pairs.append(PairRow(rid, 0, 0, 1))
        return out


class KeepAllStage(ModelFree):
    name = "filter"
    after = ("pair",)
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    scope = "run"

    def settings(self, config) -> dict:
        return {"keep": "all"}

    def process_run(self, pairs: Iterable[tuple], config) -> list[tuple[int, int]]:
        return [(rid, ord_) for rid, ord_, *_ in pairs]
