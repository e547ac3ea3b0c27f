"""split: the split model lists the facts each answer states.

One prompt per answer: the record's question and the answer filled into the split template.
An answer whose reply has no ``- `` items gets no facts, and a note saying why (``status``
counts them).
"""

from __future__ import annotations

from dpo_engine.prompts import fill, parse_list, template
from dpo_engine.stage import Batch, FactRow, NoteRow, Outputs

from ._chat import ChatStage


class SplitStage(ChatStage):
    name = "split"
    after = ("sample",)
    reads = ("records", "samples")
    writes = ("facts", "notes:split")
    model_role = "split"
    template_kind = "split"

    def _prompt_file(self, config) -> str | None:
        return config.split_prompt

    def process(self, batch: Batch, model, config) -> Outputs:
        text = template("split", config.split_prompt)
        jobs = [(rid, s.inner_idx, fill(text, question=batch.records[rid].question, answer=s.text))
                for rid in batch.rids for s in batch.samples.get(rid, [])]
        out = Outputs()
        for (rid, inner, _), reply in zip(jobs, self._replies(model, config, jobs)):
            out.tokens += reply.n_tokens
            facts, reason = parse_list(reply.text)
            if reason:
                out.notes.append(NoteRow("split", rid, inner, reason))
            out.facts.extend(FactRow(rid, inner, i, f) for i, f in enumerate(facts))
        return out
