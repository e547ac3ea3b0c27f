"""divide_and_conquer: answers split into claims, each claim checked by a labeler VLM.

sample -> split -> questions -> check -> score -> pair -> filter; an answer scores
-(claims judged false). Its exports carry each answer's score and claims.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..exports.claims import CLAIMS
from ..roles import INSTRUCT, LABELER, QUESTION, SPLIT
from ..stages.check import CheckStage
from ..stages.filters import LengthRatioFilterStage
from ..stages.pair import ScorePairStage
from ..stages.questions import QuestionsStage
from ..stages.sample import SampleStage
from ..stages.score import ScoreStage
from ..stages.split import SplitStage
from .base import Pipeline


def _check(config: RunConfig) -> None:
    for flag, path in (("--split-prompt", config.split_prompt), ("--question-prompt", config.question_prompt)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{flag} {path} is not a file")
    checks = [
        (config.chat_max_new_tokens >= 1, "the split/question max new tokens must be >= 1"),
        (config.prompt_words >= 1, "the prompt word limit must be >= 1"),
        (0 < config.chat_top_p <= 1, "the split/question top-p must be in (0, 1]"),
        (config.score_gap >= 1, "the score gap must be >= 1"),
        (config.pairs_per_question >= 1, "pairs per question must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


PIPELINE = Pipeline(
    name="divide_and_conquer",
    description="score = -(claims judged false): split into claims, ask a labeler VLM about each",
    roles=(INSTRUCT, SPLIT, QUESTION, LABELER),
    stages=(SampleStage(), SplitStage(), QuestionsStage(), CheckStage(), ScoreStage(), ScorePairStage(),
            LengthRatioFilterStage()),
    check=_check,
    export_columns=(CLAIMS,),
    missing_hint="or pass all three as --reward_model_path labeler,changeq,split",
)
