"""``rlaif-v-logps``: the ``rlaif-v`` file with its ``logps`` column required on every row, so
that RLAIF-V's trainer finds the instruct model's log-probs precomputed and skips its own pass
over the data. The store holds them after a ``dpo_reward`` run (its ``logps_instruct``
stage); a pair without them stops the export, naming the pair."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from ..errors import DpoEngineError
from .rlaif_v import RlaifV


@dataclass(frozen=True)
class RlaifVLogps(RlaifV):
    name: str = "rlaif-v-logps"

    def append(self, columns: dict[str, list], row: dict, extra_types: Mapping[str, pa.DataType]) -> None:
        if row["chosen_per_token"] is None or row["rejected_per_token"] is None:
            raise DpoEngineError(
                f"record {json.loads(row['idx_value'])!r} has a pair without the instruct model's log-probs",
                "rlaif-v-logps needs them on every pair (a dpo_reward run computes them); "
                "export --format rlaif-v writes the file with logps empty where missing")
        super().append(columns, row, extra_types)


FORMAT = RlaifVLogps()
