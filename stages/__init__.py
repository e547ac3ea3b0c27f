"""The stages, one module each. ``build_pipeline`` turns a pipeline's stage names into objects."""

from __future__ import annotations

from dpo_engine.pipelines import PIPELINES

from .check import CheckStage, ScoreStage
from .dnc_pairs import LengthRatioFilterStage, ScorePairStage
from .filters import FilterStage
from .logps import LogpsStage
from .pair import PairStage
from .reward import RewardStage
from .sample import SampleStage
from .split import QuestionsStage, SplitStage

FACTORIES = {
    "dpo_reward": {
        "sample": SampleStage,
        "logps_instruct": lambda: LogpsStage("instruct"),
        "logps_reward": lambda: LogpsStage("reward"),
        "reward": RewardStage,
        "pair": PairStage,
        "filter": FilterStage,
    },
    "divide_and_conquer": {
        "sample": SampleStage,
        "split": SplitStage,
        "questions": QuestionsStage,
        "check": CheckStage,
        "score": ScoreStage,
        "pair": ScorePairStage,
        "filter": LengthRatioFilterStage,
    },
}


def build_pipeline(name: str) -> list:
    return [FACTORIES[name][stage]() for stage in PIPELINES[name]]
