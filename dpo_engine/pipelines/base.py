"""What a pipeline is, and the checks and dependency arithmetic over its stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig, settings_hash
from ..roles import Role


@dataclass(frozen=True)
class Pipeline:
    name: str
    roles: tuple[Role, ...]
    stages: tuple[Any, ...]  # Stage objects, in run order
    description: str = ""
    check: Callable[[RunConfig], None] | None = None  # raises ConfigError
    # (config) -> (config with model facts filled in, notes for the user)
    prepare: Callable[[RunConfig], tuple[RunConfig, list[str]]] | None = None
    export_columns: tuple[Any, ...] = ()  # column sets added to every export format
    missing_hint: str = ""  # said when a role's model is missing
    rows_share_idx: bool = False  # one row per pair: rows may repeat an idx (see ingest)

    def model_paths(self, config: RunConfig) -> dict[str, str]:
        """The configured checkpoint of each of this pipeline's roles that has one."""
        return {r.name: config.model_path(r.name) for r in self.roles if config.model_path(r.name)}


def stage_hashes(stages: Sequence, config: RunConfig) -> dict[str, str]:
    """Each stage's settings hash, chained through the hashes of the stages it reads."""
    hashes: dict[str, str] = {}
    for stage in stages:
        hashes[stage.name] = settings_hash({
            "stage": stage.name,
            "settings": stage.settings(config),
            "after": {name: hashes[name] for name in stage.after},
        })
    return hashes


def downstream(stages: Sequence, name: str) -> list[str]:
    """Names of all stages that read, directly or not, from ``name``."""
    found: list[str] = []
    frontier = {name}
    for stage in stages:
        if frontier & set(stage.after):
            found.append(stage.name)
            frontier.add(stage.name)
    return found
