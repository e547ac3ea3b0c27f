"""Seeded sampling: each output row draws from its own random stream.

A row's stream is seeded by ``(seed, *key)`` (e.g. record id and answer index), so what it
samples does not depend on which other rows shared its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class SeededSampler:
    """A logits processor that samples each row from its own pre-drawn uniform stream, after
    temperature, top-k (0: off) and top-p (1.0: off), in transformers' order.

    It returns logits that are ``-inf`` everywhere but at the drawn token, so ``generate``'s own
    multinomial draw becomes a formality and the result depends only on this row's stream.
    """

    def __init__(self, uniforms: torch.Tensor, temperature: float, top_p: float, prompt_len: int,
                 top_k: int = 0):
        self.uniforms = uniforms
        self.temperature = max(float(temperature), 1e-5)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        probs = self.probs(scores)
        cdf = probs.cumsum(dim=-1)
        u = self.uniforms[:, step : step + 1].to(cdf.dtype) * cdf[:, -1:]
        token = torch.searchsorted(cdf, u).clamp_(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token, 0.0)

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        """The distribution each row draws from (unnormalised after top-p)."""
        logits = scores.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            # As transformers' top-k warper: keep every token at least as likely as the k-th.
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # top-p sees the top-k tokens' renormalised mass
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
        return probs


def row_uniforms(seed: int, keys: Sequence[tuple[int, ...]], length: int) -> np.ndarray:
    """One uniform stream per key (e.g. record, answer index), independent of batch composition."""
    return np.stack([np.random.default_rng([seed, *key]).random(length) for key in keys])
