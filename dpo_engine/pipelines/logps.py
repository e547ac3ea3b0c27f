"""logps: the log-probs RLAIF-V's trainer reads, for a DPO dataset that already has its pairs
(the reference's ``logps_gen.sh`` step; ``dpo-engine logps``).

answers -> logps_instruct -> pair -> filter: the rows' ``chosen`` and ``rejected`` columns are
the two answers, the model (``--instruct-model``: the model the trainer will train, its DPO
reference) scores both with the record's image, and every pair is kept in the dataset's order.
Export it as ``rlaif-v-logps``.
"""

from __future__ import annotations

from ..roles import INSTRUCT
from ..stages.given import AnswersStage, GivenPairStage, KeepAllStage
from ..stages.logps import LogpsStage
from .base import Pipeline


def _scorer() -> LogpsStage:
    stage = LogpsStage("instruct")
    stage.after = ("answers",)
    return stage


PIPELINE = Pipeline(
    name="logps",
    description="no sampling: a DPO dataset's own chosen/rejected answers, scored by the model it will train",
    roles=(INSTRUCT,),
    stages=(AnswersStage(), _scorer(), GivenPairStage(), KeepAllStage()),
    rows_share_idx=True,
)
