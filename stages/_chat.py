"""What the two text-model stages of divide_and_conquer share (``split`` and ``questions``).

Both fill a prompt template, cut the prompt to its first ``prompt_words`` words, sample with
temperature 0.2 and top-p 0.9 (the defaults) up to 256 new tokens, and read the reply's ``- ``
lines. Every answer of a record goes through together; the records of a batch share one
``chat`` call, and each reply draws from its own seeded stream.
"""

from __future__ import annotations

from dpo_engine.prompts import cut_words, template

from ._base import ModelStage

# Mixed into each reply's random stream, so split and questions never share draws.
_STREAM = {"split": 1, "questions": 2}


class ChatStage(ModelStage):
    name = ""
    after: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    model_role = ""
    template_kind = ""

    def _prompt_file(self, config) -> str | None:
        raise NotImplementedError

    def settings(self, config) -> dict:
        return {
            "model": config.model_id(self.model_role),
            "template": template(self.template_kind, self._prompt_file(config)),
            "temperature": config.chat_temperature,
            "top_p": config.chat_top_p,
            "max_new_tokens": config.chat_max_new_tokens,
            "prompt_words": config.prompt_words,
            "seed": config.seed,
            "dtype": config.dtype,
            **self.backend_settings(config),
        }

    def _replies(self, model, config, jobs: list[tuple[int, int, str]]) -> list:
        """Generate one reply per (rid, inner_idx, filled prompt)."""
        prompts = [cut_words(text, config.prompt_words) for _, _, text in jobs]
        keys = [(rid, inner, _STREAM[self.name]) for rid, inner, _ in jobs]
        return model.chat(prompts, keys=keys, max_new_tokens=config.chat_max_new_tokens,
                          temperature=config.chat_temperature, top_p=config.chat_top_p, seed=config.seed)
