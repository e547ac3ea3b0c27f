"""reward: the implicit DPO reward of each answer, from the two models' log-probs.

Per token d_t = logp_reward(t) - logp_instruct(t). With beta: sum = beta * sum(d),
avg = beta * sum(d) / n, min = beta * min(d), last = beta * d_last. The reference multiplies
``avg`` by beta a second time; a positive constant factor changes no ranking, so we keep one
beta and the same order. When the two models do not share a tokenizer the per-token values
do not line up: sum and avg then come from each model's sequence totals, and min/last are
left empty.
"""

from __future__ import annotations

import numpy as np

from dpo_engine.stage import Batch, Outputs, RewardRow

from ._base import ModelFree


class RewardStage(ModelFree):
    name = "reward"
    after = ("logps_instruct", "logps_reward")
    reads = ("logprobs",)
    writes = ("rewards",)

    def settings(self, config) -> dict:
        compat = {"compat": config.compat} if config.compat != "off" else {}  # off: hashes as before
        return {"beta": config.beta, "shared_tokenizer": config.shared_tokenizer, **compat}

    def process(self, batch: Batch, model, config) -> Outputs:
        beta = config.beta
        avg_scale = beta if config.compat == "reference" else 1.0  # the reference applies beta twice to avg
        out = Outputs()
        inst_all = batch.logprobs.get("instruct", {})
        rew_all = batch.logprobs.get("reward", {})
        keys, inst_rows, rew_rows = [], [], []
        for rid in batch.rids:
            inst = {x.inner_idx: x for x in inst_all.get(rid, [])}
            rew = {x.inner_idx: x for x in rew_all.get(rid, [])}
            if set(inst) != set(rew):
                out.failed[rid] = "log-probs of the two models cover different answers"
                continue
            for j in sorted(inst):
                keys.append((rid, j))
                inst_rows.append(inst[j])
                rew_rows.append(rew[j])
        if not keys:
            return out
        n_inst = np.fromiter((x.n_tokens for x in inst_rows), np.int64, len(keys))
        n_rew = np.fromiter((x.n_tokens for x in rew_rows), np.int64, len(keys))
        if config.shared_tokenizer and np.array_equal(n_inst, n_rew):
            d = (np.frombuffer(b"".join(x.per_token for x in rew_rows), "<f4").astype(np.float64)
                 - np.frombuffer(b"".join(x.per_token for x in inst_rows), "<f4").astype(np.float64))
            starts = np.concatenate([[0], np.cumsum(n_inst)[:-1]])
            sums = np.add.reduceat(d, starts) * beta
            mins = np.minimum.reduceat(d, starts) * beta
            lasts = d[starts + n_inst - 1] * beta
            avgs = sums / n_inst * avg_scale
            for (rid, j), s, a, mn, ls in zip(keys, sums.tolist(), avgs.tolist(), mins.tolist(), lasts.tolist()):
                out.rewards.append(RewardRow(rid, j, s, a, mn, ls))
        else:
            for (rid, j), i, r in zip(keys, inst_rows, rew_rows):
                out.rewards.append(RewardRow(rid, j, beta * (r.sum - i.sum), beta * (r.avg - i.avg) * avg_scale,
                                             None, None))
        return out
