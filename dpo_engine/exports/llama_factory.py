"""``llama-factory``: LLaMA-Factory's ShareGPT-style ranking data: ``conversations`` (one
human turn, the image placeholder ``<image>`` before the question), ``chosen`` and
``rejected`` as ``{from: gpt, value}``, ``images`` (a list of one image), plus ``idx``.
LLaMA-Factory reads it through a ``dataset_info.json`` entry with ``"ranking": true`` and
``"formatting": "sharegpt"`` (README: Exports)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from ._arrow import IMAGE_TYPE, Fields, value_feature

TURN_TYPE = pa.struct([pa.field("from", pa.string()), pa.field("value", pa.string())])
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class LlamaFactory:
    name: str = "llama-factory"

    def fields(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> Fields:
        return [("conversations", pa.list_(TURN_TYPE)), ("chosen", TURN_TYPE), ("rejected", TURN_TYPE),
                ("images", pa.list_(IMAGE_TYPE)), ("idx", idx_type)]

    def features(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> dict:
        turn = {"from": value_feature(pa.string()), "value": value_feature(pa.string())}
        return {"conversations": {"_type": "List", "feature": turn}, "chosen": turn, "rejected": turn,
                "images": {"_type": "List", "feature": {"_type": "Image"}}, "idx": value_feature(idx_type)}

    def append(self, columns: dict[str, list], row: dict, extra_types: Mapping[str, pa.DataType]) -> None:
        columns["conversations"].append([{"from": "human", "value": IMAGE_PLACEHOLDER + row["question"]}])
        columns["chosen"].append({"from": "gpt", "value": row["chosen"]})
        columns["rejected"].append({"from": "gpt", "value": row["rejected"]})
        columns["images"].append([{"bytes": row["image"], "path": row["image_path"] or None}])
        columns["idx"].append(json.loads(row["idx_value"]))


FORMAT = LlamaFactory()
