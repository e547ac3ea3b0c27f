"""dpo_reward: answers scored by the implicit DPO reward of a DPO-trained reward VLM.

sample -> logps_instruct -> logps_reward -> reward -> pair -> filter. ``logps_instruct`` runs
right after ``sample`` so the instruct model stays loaded between the two. Its log-probs are the
implicit reward's denominator: the ``reference`` model's, which is the instruct model unless
``--reference-model`` names the model the reward model was trained from (as iterated rounds
do: the reward side stays fixed while the instruct model changes).
"""

from __future__ import annotations

from dataclasses import replace

from ..config import RunConfig
from ..roles import INSTRUCT, REFERENCE, REWARD
from ..stages.filters import FilterStage
from ..stages.logps import LogpsStage
from ..stages.pair import PairStage
from ..stages.reward import RewardStage
from ..stages.sample import SampleStage
from .base import Pipeline


def _prepare(config: RunConfig) -> tuple[RunConfig, list[str]]:
    """Per-token rewards need both models to map tokens to the same ids; find out."""
    from ..models import vocabulary_fingerprint

    instruct, reward = config.model_path("reference"), config.model_path("reward")
    shared = vocabulary_fingerprint(instruct) == vocabulary_fingerprint(reward)
    notes = [] if shared else [
        "the instruct and reward models use different tokenizers: rewards use sequence-level "
        "log-prob sums and averages (min/last left empty)"]
    return replace(config, shared_tokenizer=shared), notes


PIPELINE = Pipeline(
    name="dpo_reward",
    description="score = the implicit DPO reward: log-prob difference under the reward and instruct models",
    roles=(INSTRUCT, REWARD, REFERENCE),
    stages=(SampleStage(), LogpsStage("instruct", "reference"), LogpsStage("reward"), RewardStage(), PairStage(),
            FilterStage()),
    prepare=_prepare,
)
