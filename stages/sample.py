"""sample: the instruct model answers each record's question k times (temperature, top-k and
top-p sampling)."""

from __future__ import annotations

from dpo_engine.dataset import decode_image
from dpo_engine.stage import Batch, Outputs, SampleRow
from dpo_engine.text import text_hash, word_count

from ._base import ModelStage


class SampleStage(ModelStage):
    name = "sample"
    path_use = "sample"
    after: tuple[str, ...] = ()
    reads = ("records",)
    writes = ("samples",)
    model_role = "instruct"

    def settings(self, config) -> dict:
        return {
            "model": config.model_id("instruct"),
            "k": config.sample_k,
            "temperature": config.temperature,
            # Off (top-k 0, top-p 1.0) they stay out: the hash runs before top-k had.
            **({"top_k": config.top_k} if config.top_k else {}),
            **({"top_p": config.top_p} if config.top_p < 1.0 else {}),
            "max_new_tokens": config.max_new_tokens,
            "seed": config.seed,
            "dtype": config.dtype,
            **self.backend_settings(config),
        }

    def process(self, batch: Batch, model, config) -> Outputs:
        records = [batch.records[rid] for rid in batch.rids]
        images = [decode_image(r.image) for r in records]
        answers = model.generate(
            images, [r.question for r in records], keys=batch.rids, k=config.sample_k,
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed,
            top_p=config.top_p, top_k=config.top_k,
        )
        out = Outputs()
        for rid, gens in zip(batch.rids, answers):
            for j, g in enumerate(gens):
                out.samples.append(SampleRow(rid, j, g.text, g.n_tokens, word_count(g.text), text_hash(g.text)))
                out.tokens += g.n_tokens
        return out
