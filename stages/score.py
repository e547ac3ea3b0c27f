"""score: a divide_and_conquer answer scores -(claims judged false).

score = (claims judged true) - (claims). An answer whose number of judged claims differs from
its number of facts gets no score and a note instead.

A fact the answer already stated (the same words, case, spacing and punctuation aside) counts
as judged false by default (``RunConfig.repeats_rule``): each copy is true on its own, so the
labeler passes "a red circle and a red circle", and an answer that names one object twice
would tie with a faithful one. ``repeated_facts="judged"`` (and ``compat="reference"``) scores
them as the reference does.
"""

from __future__ import annotations

import re

from dpo_engine.stage import Batch, NoteRow, Outputs, ScoreRow

from ._base import ModelFree, by_answer


def fact_key(text: str) -> str:
    """What two facts share when one repeats the other: their words, lower-cased."""
    return " ".join(re.findall(r"\w+", text.lower()))


def repeats(facts) -> list[bool]:
    """For each fact in order, whether an earlier fact of the same answer says the same."""
    seen: set[str] = set()
    flags = []
    for fact in facts:
        key = fact_key(fact.text)
        flags.append(key in seen)
        seen.add(key)
    return flags


class ScoreStage(ModelFree):
    name = "score"
    after = ("check",)
    reads = ("samples", "facts", "judgments")
    writes = ("scores", "notes:score")

    def settings(self, config) -> dict:
        # "judged" is what every earlier version computed: its hash stays the one it had.
        return {} if config.repeats_rule == "judged" else {"repeated_facts": config.repeats_rule}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            facts = by_answer(batch.facts.get(rid, []))
            judged = by_answer(batch.judgments.get(rid, []))
            for s in batch.samples.get(rid, []):
                stated = sorted(facts.get(s.inner_idx, ()), key=lambda f: f.ord)
                verdicts = [j.p_yes > j.p_no for j in sorted(judged.get(s.inner_idx, ()), key=lambda j: j.ord)]
                if len(verdicts) != len(stated):
                    out.notes.append(NoteRow("score", rid, s.inner_idx,
                                             "discarded: judged claims differ from facts"))
                    continue
                if config.repeats_rule == "false":
                    verdicts = [v and not again for v, again in zip(verdicts, repeats(stated))]
                out.scores.append(ScoreRow(rid, s.inner_idx, sum(verdicts) - len(stated), len(stated)))
        return out
