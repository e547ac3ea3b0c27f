"""Which stages make each pipeline, and the dependency arithmetic over them.

The stage objects live in ``stages/`` (the CLI builds them); this module only knows names
and works on whatever objects it is given.
"""

from __future__ import annotations

from ..config import settings_hash

# Run order. logps_instruct runs right after sample so the instruct model stays loaded.
PIPELINES: dict[str, tuple[str, ...]] = {
    "dpo_reward": ("sample", "logps_instruct", "logps_reward", "reward", "pair", "filter"),
    "divide_and_conquer": ("sample", "split", "questions", "check", "score", "pair", "filter"),
}


def stage_hashes(stages, config) -> dict[str, str]:
    """Each stage's settings hash, chained through the hashes of the stages it reads."""
    hashes: dict[str, str] = {}
    for stage in stages:
        hashes[stage.name] = settings_hash({
            "stage": stage.name,
            "settings": stage.settings(config),
            "after": {name: hashes[name] for name in stage.after},
        })
    return hashes


def downstream(stages, name: str) -> list[str]:
    """Names of all stages that read, directly or not, from ``name``."""
    found: list[str] = []
    frontier = {name}
    for stage in stages:
        if frontier & set(stage.after):
            found.append(stage.name)
            frontier.add(stage.name)
    return found
