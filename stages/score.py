"""score: a divide_and_conquer answer scores -(claims judged false).

score = (claims judged true) - (claims). An answer whose number of judged claims differs from
its number of facts gets no score and a note instead.
"""

from __future__ import annotations

from dpo_engine.stage import Batch, NoteRow, Outputs, ScoreRow

from ._base import ModelFree, by_answer


class ScoreStage(ModelFree):
    name = "score"
    after = ("check",)
    reads = ("samples", "facts", "judgments")
    writes = ("scores", "notes:score")

    def settings(self, config) -> dict:
        return {}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            facts = by_answer(batch.facts.get(rid, []))
            judged = by_answer(batch.judgments.get(rid, []))
            for s in batch.samples.get(rid, []):
                n_facts = len(facts.get(s.inner_idx, ()))
                verdicts = [j.p_yes > j.p_no for j in judged.get(s.inner_idx, ())]
                if len(verdicts) != n_facts:
                    out.notes.append(NoteRow("score", rid, s.inner_idx,
                                             "discarded: judged claims differ from facts"))
                    continue
                out.scores.append(ScoreRow(rid, s.inner_idx, sum(verdicts) - n_facts, n_facts))
        return out
