"""check: the labeler VLM judges each claim with one yes/no question.

Every yes/no question of every answer of a record is asked against the record's image in one
call: the image and the prompt text before the question are encoded once, and only the last
position's logits are computed. A claim is true when p("yes") + p("Yes") > p("no") + p("No")
on the first answer token. Answers whose questions do not match their facts one to one are
skipped here, as ``score`` would discard them anyway.
"""

from __future__ import annotations

from dpo_engine.dataset import decode_image
from dpo_engine.stage import Batch, JudgmentRow, Outputs

from ._base import ModelStage, by_answer


class CheckStage(ModelStage):
    name = "check"
    path_use = "check"
    after = ("questions",)
    reads = ("records", "facts", "questions")
    writes = ("judgments",)
    model_role = "labeler"

    def settings(self, config) -> dict:
        return {"model": config.model_id("labeler"), "dtype": config.dtype, **self.backend_settings(config)}

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            facts = by_answer(batch.facts.get(rid, []))
            rows = [q for inner, qs in by_answer(batch.questions.get(rid, [])).items()
                    if len(qs) == len(facts.get(inner, ())) for q in qs]
            if not rows:
                continue
            record = batch.records[rid]
            probs = model.yes_no(decode_image(record.image), [q.text for q in rows])
            for q, (p_yes, p_no) in zip(rows, probs.tolist()):
                out.judgments.append(JudgmentRow(rid, q.inner_idx, q.ord, p_yes, p_no))
            out.tokens += len(rows)
        return out
