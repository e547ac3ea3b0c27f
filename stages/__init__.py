"""The stages, one module each. ``build_pipeline`` turns a pipeline's stage names into objects."""

from __future__ import annotations

from dpo_engine.pipelines import PIPELINES

from .filters import FilterStage
from .logps import LogpsStage
from .pair import PairStage
from .reward import RewardStage
from .sample import SampleStage

FACTORIES = {
    "sample": SampleStage,
    "logps_instruct": lambda: LogpsStage("instruct"),
    "logps_reward": lambda: LogpsStage("reward"),
    "reward": RewardStage,
    "pair": PairStage,
    "filter": FilterStage,
}


def build_pipeline(name: str) -> list:
    return [FACTORIES[stage]() for stage in PIPELINES[name]]
