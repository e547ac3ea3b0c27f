"""``ms-swift``: ms-swift's RLHF (DPO) rows: ``messages`` (the user turn, ``<image>`` before
the question, then the chosen answer as the assistant turn), ``rejected_response``,
``images`` (a list of one image), plus ``idx``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from ._arrow import IMAGE_TYPE, MESSAGE_TYPE, Fields, value_feature
from .llama_factory import IMAGE_PLACEHOLDER


@dataclass(frozen=True)
class MsSwift:
    name: str = "ms-swift"

    def fields(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> Fields:
        return [("messages", MESSAGE_TYPE), ("rejected_response", pa.string()),
                ("images", pa.list_(IMAGE_TYPE)), ("idx", idx_type)]

    def features(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> dict:
        message = {"_type": "List", "feature": {"role": value_feature(pa.string()),
                                                "content": value_feature(pa.string())}}
        return {"messages": message, "rejected_response": value_feature(pa.string()),
                "images": {"_type": "List", "feature": {"_type": "Image"}}, "idx": value_feature(idx_type)}

    def append(self, columns: dict[str, list], row: dict, extra_types: Mapping[str, pa.DataType]) -> None:
        columns["messages"].append([{"role": "user", "content": IMAGE_PLACEHOLDER + row["question"]},
                                    {"role": "assistant", "content": row["chosen"]}])
        columns["rejected_response"].append(row["rejected"])
        columns["images"].append([{"bytes": row["image"], "path": row["image_path"] or None}])
        columns["idx"].append(json.loads(row["idx_value"]))


FORMAT = MsSwift()
