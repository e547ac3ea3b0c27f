"""logps_instruct / logps_reward: per-token log-probs of every answer under one model.

Each answer is scored once per model. The record's image and prompt are encoded once and
its k answers are scored together against that shared prefix.
"""

from __future__ import annotations

from dpo_engine.dataset import decode_image
from dpo_engine.stage import Batch, LogprobRow, Outputs

from ._base import ModelStage


class LogpsStage(ModelStage):
    reads = ("records", "samples")
    after = ("sample",)

    def __init__(self, role: str, model_role: str | None = None):
        """``role`` names the log-probs it writes; ``model_role`` the model that computes them
        (default: the role's own)."""
        self.role = role
        self.name = f"logps_{role}"
        self.model_role = model_role or role
        self.writes = (f"logprob:{role}",)

    model_use = "score"
    path_use = "score"

    def settings(self, config) -> dict:
        return {"model": config.model_id(self.model_role), "dtype": config.dtype, **self.backend_settings(config)}

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
