"""What a pipeline is, where pipelines are registered, and the dependency arithmetic over stages.

A pipeline is one value: its name, the model roles it needs, its stages in run order, the
checks it adds to the shared ones, an optional ``prepare`` step that settles facts about the
models before the run (dpo_reward checks whether the two models share a tokenizer), and the
extra columns it adds to every export format. Each built-in pipeline is one module in this
package that defines ``PIPELINE``; modules are found by listing the package, so a new
pipeline is one new file. ``register`` adds one from anywhere else (a test, a plugin).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..config import RunConfig
from ..errors import ConfigError
from .base import Pipeline, downstream, stage_hashes

_registry: dict[str, Pipeline] = {}
_discovered = False


def register(pipeline: Pipeline) -> Pipeline:
    """Make a pipeline available by name (``--pipeline NAME``, ``get_pipeline``)."""
    _registry[pipeline.name] = pipeline
    return pipeline


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            found = getattr(module, "PIPELINE", None)
            if isinstance(found, Pipeline):
                _registry.setdefault(found.name, found)


def pipeline_names() -> list[str]:
    _discover()
    return list(_registry)


def get_pipeline(name: str) -> Pipeline:
    _discover()
    if name not in _registry:
        raise ConfigError(f"unknown pipeline {name!r}", f"use one of {', '.join(_registry)}")
    return _registry[name]


def validate(config: RunConfig, pipeline: Pipeline | None = None) -> Pipeline:
    """All checks of a run's settings, before anything loads: the shared ones, that every
    role has a model, and the pipeline's own. Returns the pipeline."""
    pipeline = pipeline or get_pipeline(config.pipeline)
    config.validate()
    missing = [role for role in pipeline.roles if not config.model_path(role.name)]
    unused = sorted(set(config.models) - {role.name for role in pipeline.roles})
    if unused:
        raise ConfigError(f"the {pipeline.name} pipeline has no {', '.join(unused)} model", "leave that option out")
    if missing:
        hint = pipeline.missing_hint or (missing[0].hint if len(missing) == 1 else "")
        raise ConfigError(f"the {pipeline.name} pipeline needs {', '.join(r.flag for r in missing)}",
                          hint or None)
    if pipeline.check:
        pipeline.check(config)
    return pipeline


__all__ = ["Pipeline", "downstream", "get_pipeline", "pipeline_names", "register", "stage_hashes", "validate"]
