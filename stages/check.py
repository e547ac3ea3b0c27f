"""check and score: the labeler VLM judges each claim; an answer scores -(claims judged false).

``check`` asks the labeler every yes/no question of every answer of a record against the
record's image in one call: the image and the prompt text before the question are encoded
once, and only the last position's logits are computed. A claim is true when
p("yes") + p("Yes") > p("no") + p("No") on the first answer token. Answers whose questions do
not match their facts one to one are skipped here, as ``score`` would discard them anyway.

``score`` = (claims judged true) - (claims) for each answer; an answer whose number of
judged claims differs from its number of facts gets no score and a note instead.
"""

from __future__ import annotations

from dpo_engine.dataset import decode_image
from dpo_engine.stage import Batch, JudgmentRow, NoteRow, Outputs, ScoreRow

from ._base import ModelFree
from ._models import open_image_text_model


def _by_answer(rows) -> dict[int, list]:
    grouped: dict[int, list] = {}
    for row in rows:
        grouped.setdefault(row.inner_idx, []).append(row)
    return grouped


class CheckStage:
    name = "check"
    after = ("questions",)
    reads = ("records", "facts", "questions")
    writes = ("judgments",)
    scope = "record"
    model_role = "labeler"

    def settings(self, config) -> dict:
        return {"model": config.model_fingerprints.get("labeler", config.labeler_model), "dtype": config.dtype}

    def batch_size(self, config) -> int:
        return config.batch_size

    def model_key(self, config) -> str:
        return config.labeler_model

    def open_model(self, config):
        return open_image_text_model(config.labeler_model, config)

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            facts = _by_answer(batch.facts.get(rid, []))
            rows = [q for inner, qs in _by_answer(batch.questions.get(rid, [])).items()
                    if len(qs) == len(facts.get(inner, ())) for q in qs]
            if not rows:
                continue
            record = batch.records[rid]
            probs = model.yes_no(decode_image(record.image), [q.text for q in rows])
            for q, (p_yes, p_no) in zip(rows, probs.tolist()):
                out.judgments.append(JudgmentRow(rid, q.inner_idx, q.ord, p_yes, p_no))
            out.tokens += len(rows)
        return out


class ScoreStage(ModelFree):
    name = "score"
    after = ("check",)
    reads = ("samples", "facts", "judgments")
    writes = ("scores", "notes:score")
    scope = "record"

    def settings(self, config) -> dict:
        return {}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            facts = _by_answer(batch.facts.get(rid, []))
            judged = _by_answer(batch.judgments.get(rid, []))
            for s in batch.samples.get(rid, []):
                n_facts = len(facts.get(s.inner_idx, ()))
                verdicts = [j.p_yes > j.p_no for j in judged.get(s.inner_idx, ())]
                if len(verdicts) != n_facts:
                    out.notes.append(NoteRow("score", rid, s.inner_idx,
                                             "discarded: judged claims differ from facts"))
                    continue
                out.scores.append(ScoreRow(rid, s.inner_idx, sum(verdicts) - n_facts, n_facts))
        return out
