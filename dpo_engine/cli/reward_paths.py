"""The reward side's model paths, as the commands that run pipelines take them."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def reward_side(pipeline: str, reward: str | None, labeler: Path | None, split: Path | None,
                 question: Path | None) -> dict:
    """The reward-side model paths, with the reference's comma form
    ``--reward_model_path labeler,changeq,split`` for divide_and_conquer."""
    if pipeline == "divide_and_conquer" and reward:
        parts = [p.strip() for p in reward.split(",")]
        if len(parts) != 3 or not all(parts):
            raise ConfigError("divide_and_conquer takes --reward_model_path as LABELER,CHANGEQ,SPLIT "
                              f"(three comma-separated paths), not {reward!r}",
                              "or pass --labeler-model, --question-model and --split-model")
        named = {"--labeler-model": labeler, "--question-model": question, "--split-model": split}
        clash = [flag for flag, value in named.items() if value]
        if clash:
            raise ConfigError(f"give the reward-side models once: {', '.join(clash)} and the comma form both name them")
        labeler, question, split = (Path(p) for p in parts)
        reward = None
    elif reward and "," in reward:
        raise ConfigError(f"--reward-model {reward!r} lists several paths",
                          "the comma form is for --pipeline_name divide_and_conquer")
    return {"reward": reward,
            "labeler": str(labeler) if labeler else None,
            "split": str(split) if split else None,
            "question": str(question) if question else None}
