"""logps_instruct / logps_reward: per-token log-probs of every answer under one model.

Each answer is scored once per model. The record's image and prompt are encoded once and
its k answers are scored together against that shared prefix.
"""

from __future__ import annotations

from dpo_engine.dataset import decode_image
from dpo_engine.stage import Batch, LogprobRow, Outputs

from ._models import open_image_text_model


class LogpsStage:
    reads = ("records", "samples")
    after = ("sample",)
    scope = "record"

    def __init__(self, role: str):
        self.role = role
        self.name = f"logps_{role}"
        self.model_role = role
        self.writes = (f"logprob:{role}",)

    def _path(self, config) -> str:
        return config.instruct_model if self.role == "instruct" else config.reward_model

    def settings(self, config) -> dict:
        return {"model": config.model_fingerprints.get(self.role, self._path(config)),
                "dtype": config.dtype}

    def batch_size(self, config) -> int:
        return config.batch_size

    def model_key(self, config) -> str:
        return self._path(config)

    def open_model(self, config):
        return open_image_text_model(self._path(config), config)

    def process(self, batch: Batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            record = batch.records[rid]
            samples = batch.samples.get(rid, [])
            values = model.score(decode_image(record.image), record.question, [s.text for s in samples])
            for s, v in zip(samples, values):
                total = float(v.sum(dtype="float64"))
                out.logprobs.append(LogprobRow(rid, s.inner_idx, self.role, len(v), total,
                                               total / len(v), v.astype("<f4").tobytes()))
                out.tokens += len(v)
        return out
