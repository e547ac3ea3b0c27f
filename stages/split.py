"""split and questions: the two text-model steps of divide_and_conquer.

* ``split``: the split model lists the facts each answer states (one prompt per answer, the
  record's question and the answer filled into the split template).
* ``questions``: the question-change model turns all facts of one answer, in one prompt, into
  yes/no questions; each gets the suffix `` Please answer yes or no.``

Both cut their prompt to its first ``prompt_words`` words, sample with temperature 0.2 and
top-p 0.9 (the defaults) up to 256 new tokens, and read the reply's ``- `` lines. Every answer
of a record goes through together; the records of a batch share one ``generate`` call. An
answer whose reply has no items gets none, and a note saying why (``status`` counts them).
"""

from __future__ import annotations

from dpo_engine.prompts import YES_NO_SUFFIX, bullet_list, cut_words, fill, parse_list, template
from dpo_engine.stage import Batch, FactRow, NoteRow, Outputs, QuestionRow

from ._models import open_text_chat_model

# Mixed into each reply's random stream, so split and questions never share draws.
_STREAM = {"split": 1, "questions": 2}


class _ChatStage:
    name = ""
    after: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    scope = "record"
    model_role = ""
    template_kind = ""

    def _model_path(self, config) -> str:
        raise NotImplementedError

    def _prompt_file(self, config) -> str | None:
        raise NotImplementedError

    def settings(self, config) -> dict:
        return {
            "model": config.model_fingerprints.get(self.model_role, self._model_path(config)),
            "template": template(self.template_kind, self._prompt_file(config)),
            "temperature": config.chat_temperature,
            "top_p": config.chat_top_p,
            "max_new_tokens": config.chat_max_new_tokens,
            "prompt_words": config.prompt_words,
            "seed": config.seed,
            "dtype": config.dtype,
        }

    def batch_size(self, config) -> int:
        return config.batch_size

    def model_key(self, config) -> tuple[str, str]:
        return ("chat", self._model_path(config))

    def open_model(self, config):
        return open_text_chat_model(self._model_path(config), config)

    def _replies(self, model, config, jobs: list[tuple[int, int, str]]) -> list:
        """Generate one reply per (rid, inner_idx, filled prompt)."""
        prompts = [cut_words(text, config.prompt_words) for _, _, text in jobs]
        keys = [(rid, inner, _STREAM[self.name]) for rid, inner, _ in jobs]
        return model.chat(prompts, keys=keys, max_new_tokens=config.chat_max_new_tokens,
                          temperature=config.chat_temperature, top_p=config.chat_top_p, seed=config.seed)


class SplitStage(_ChatStage):
    name = "split"
    after = ("sample",)
    reads = ("records", "samples")
    writes = ("facts", "notes:split")
    model_role = "split"
    template_kind = "split"

    def _model_path(self, config) -> str:
        return config.split_model

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


class QuestionsStage(_ChatStage):
    name = "questions"
    after = ("split",)
    reads = ("facts",)
    writes = ("questions", "notes:questions")
    model_role = "question"
    template_kind = "questions"

    def _model_path(self, config) -> str:
        return config.question_model

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
