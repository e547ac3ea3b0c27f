"""``trl``: TRL's conversational vision preference format: ``images`` (a list of one image),
``prompt``, ``chosen`` and ``rejected`` as message lists, plus ``idx``. Carried input
columns are left out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from ._arrow import IMAGE_TYPE, MESSAGE_TYPE, Fields, value_feature


@dataclass(frozen=True)
class Trl:
    name: str = "trl"

    def fields(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> Fields:
        return [("images", pa.list_(IMAGE_TYPE)), ("prompt", MESSAGE_TYPE),
                ("chosen", MESSAGE_TYPE), ("rejected", MESSAGE_TYPE), ("idx", idx_type)]

    def features(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> dict:
        message = {"_type": "List", "feature": {"role": value_feature(pa.string()),
                                                "content": value_feature(pa.string())}}
        return {"images": {"_type": "List", "feature": {"_type": "Image"}}, "prompt": message,
                "chosen": message, "rejected": message, "idx": value_feature(idx_type)}

    def append(self, columns: dict[str, list], row: dict, extra_types: Mapping[str, pa.DataType]) -> None:
        columns["images"].append([{"bytes": row["image"], "path": row["image_path"] or None}])
        columns["prompt"].append([{"role": "user", "content": row["question"]}])
        columns["chosen"].append([{"role": "assistant", "content": row["chosen"]}])
        columns["rejected"].append([{"role": "assistant", "content": row["rejected"]}])
        columns["idx"].append(json.loads(row["idx_value"]))


FORMAT = Trl()
