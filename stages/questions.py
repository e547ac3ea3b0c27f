"""questions: the question-change model turns the facts of one answer into yes/no questions.

All facts of one answer go into one prompt; each question the reply lists gets the suffix
`` Please answer yes or no.`` A reply whose number of questions differs from the number of
facts keeps its questions, with a note (``check`` then skips that answer).
"""

from __future__ import annotations

from dpo_engine.prompts import YES_NO_SUFFIX, bullet_list, fill, parse_list, template
from dpo_engine.stage import Batch, NoteRow, Outputs, QuestionRow

from ._chat import ChatStage


class QuestionsStage(ChatStage):
    name = "questions"
    after = ("split",)
    reads = ("facts",)
    writes = ("questions", "notes:questions")
    model_role = "question"
    template_kind = "questions"

    def _prompt_file(self, config) -> str | None:
        return config.question_prompt

    def process(self, batch: Batch, model, config) -> Outputs:
        text = template("questions", config.question_prompt)
        jobs, counts = [], []
        for rid in batch.rids:
            by_answer: dict[int, list[str]] = {}
            for f in batch.facts.get(rid, []):
                by_answer.setdefault(f.inner_idx, []).append(f.text)
            for inner, facts in by_answer.items():
                jobs.append((rid, inner, fill(text, facts=bullet_list(facts))))
                counts.append(len(facts))
        out = Outputs()
        for (rid, inner, _), n_facts, reply in zip(jobs, counts, self._replies(model, config, jobs)):
            out.tokens += reply.n_tokens
            questions, reason = parse_list(reply.text)
            if reason is None and len(questions) != n_facts:
                reason = "question count differs from fact count"
            if reason:
                out.notes.append(NoteRow("questions", rid, inner, reason))
            out.questions.extend(QuestionRow(rid, inner, i, q + YES_NO_SUFFIX) for i, q in enumerate(questions))
        return out
