"""``rlaif-v``: the reference's columns ``idx, question, chosen, rejected, image`` plus the
carried input columns, and ``logps`` (the instruct model's log-probs of both answers, the
six-value JSON list RLAIF-V's trainer accepts as precomputed reference log-probs)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..dataset import decode_extra
from ._arrow import IMAGE_TYPE, Fields, value_feature

_OWN = ("idx", "question", "chosen", "rejected", "image", "logps")


@dataclass(frozen=True)
class RlaifV:
    name: str = "rlaif-v"

    def fields(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> Fields:
        fields = [("idx", idx_type), ("question", pa.string()), ("chosen", pa.string()),
                  ("rejected", pa.string()), ("image", IMAGE_TYPE), ("logps", pa.string())]
        return fields + [(n, t) for n, t in extra_types.items() if n not in _OWN]

    def features(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> dict:
        return {n: ({"_type": "Image"} if n == "image" else value_feature(t))
                for n, t in self.fields(idx_type, extra_types)}

    def append(self, columns: dict[str, list], row: dict, extra_types: Mapping[str, pa.DataType]) -> None:
        columns["idx"].append(json.loads(row["idx_value"]))
        columns["question"].append(row["question"])
        columns["chosen"].append(row["chosen"])
        columns["rejected"].append(row["rejected"])
        columns["image"].append({"bytes": row["image"], "path": row["image_path"] or None})
        columns["logps"].append(_logps(row))
        extra = decode_extra(row["extra"])
        for name, arrow_type in extra_types.items():
            if name not in columns or name in _OWN:
                continue
            value = extra.get(name)
            if arrow_type == pa.string() and value is not None and not isinstance(value, str):
                value = json.dumps(value, default=str)
            columns[name].append(value)


def _logps(row: dict) -> str | None:
    if row["chosen_per_token"] is None or row["rejected_per_token"] is None:
        return None
    chosen = np.frombuffer(row["chosen_per_token"], "<f4").tolist()
    rejected = np.frombuffer(row["rejected_per_token"], "<f4").tolist()
    return json.dumps([row["chosen_logp"], row["chosen_avg_logp"], chosen,
                       row["rejected_logp"], row["rejected_avg_logp"], rejected])


FORMAT = RlaifV()
