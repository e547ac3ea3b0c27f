"""The ShapesWorld demo's runs, on top of the engine: one run measured against the world's
truth (``dpo-engine demo``), and the iterated proof that training on the pairs makes the model
hallucinate less (``dpo-engine demo --iterate``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import engine
from .config import RunConfig
from .engine import RunSummary
from .observer import Observer, Silent
from .store import Store


# The demo's dpo_reward runs pair answers only when the reward tells them apart by more than
# this (``run --reward-margin``; the reference has no margin). Two faithful answers with nearly
# equal rewards are a tie as the world's reader sees them: they were most of the one-run demo's
# wrong pairs (plain kernels: 0.932 -> 0.939, AVX2: 0.935 -> 0.953), and after round 1 of
# ``--iterate``, when the model answers most questions alike, half of round 2's pairs.
DEMO_REWARD_MARGIN = 0.5


@dataclass
class DemoResult:
    summary: RunSummary
    quality: dict
    examples: list[dict]
    models_dir: Path
    dataset: Path
    roles: tuple[str, ...]


def run_demo(work_dir: str | Path, *, pipeline: str = "dpo_reward", records: int = 60, sample_k: int = 10,
             max_new_tokens: int = 40, seed: int = 0, backend: str = "hf", score_backend: str = "auto",
             observer: Observer | None = None) -> DemoResult:
    """Train the ShapesWorld models (once per work dir), draw a dataset, run the pipeline on
    them and measure the pairs against the world's truth (``WORK_DIR/quality.json``)."""
    import itertools

    from .demo.quality import quality_report
    from .demo.trainers import build_world_models
    from .demo.world import write_dataset
    from .pipelines import get_pipeline

    observer = observer or Silent()
    work = Path(work_dir)
    chosen = get_pipeline(pipeline)
    roles = tuple(role.name for role in chosen.roles if role.default is None)
    models_dir = work / "models"
    dataset = work / "data" / "demo.parquet"
    paths = build_world_models(models_dir, roles=roles, seed=seed, log=lambda line: observer.note(line, "detail"))
    if not dataset.exists():
        # Multi-claim questions only: on one-token yes/no answers the implicit reward of a model
        # this small is close to a coin flip (see README), which would say nothing about the engine.
        write_dataset(dataset, n=records, seed=seed, yes_no_share=0.0)
    config = RunConfig(pipeline=pipeline, dataset=str(dataset), work_dir=str(work),
                       models={role: str(paths[role]) for role in roles},
                       sample_k=sample_k, max_new_tokens=max_new_tokens, seed=seed, backend=backend,
                       score_backend=score_backend,
                       reward_margin=DEMO_REWARD_MARGIN if pipeline == "dpo_reward" else 0.0)
    summary = engine.run_pipeline(config, observer, pipeline=chosen)
    store = Store.in_work_dir(work, create=False)
    try:
        report = quality_report(store).to_dict()
        examples = list(itertools.islice(store.iter_kept_pairs(images=False), 3))
    finally:
        store.close()
    (work / "quality.json").write_text(json.dumps({pipeline: report}, indent=2) + "\n")
    return DemoResult(summary, report, examples, models_dir, dataset, roles)


# What the demo's rounds train with. The reference's lr 5e-7 is for 7B models; a model this
# small needs a far larger step. With pure DPO at this rate the tiny model drifts into broken
# sentences (fewer mentions, so fewer hallucinations, but most objects left out): the chosen
# answers' NLL beside it keeps it speaking, ours and the control alike. Its weight, measured on
# round 1 (divide_and_conquer, AVX2): 0.3 fell short of -40 %, 1.0 let the random-pair control
# (whose "chosen" NLL distils its own samples) fall half as far as ours; 0.5 gives -46 % / -15 %.
# The rate is the same in every round, and low enough that round 1 leaves work for round 2: at
# 1e-4 round 1 fell by 85-88 % and its model answered most questions alike, so round 2 got few
# pairs, mostly ties and wrong ones (dpo_reward on AVX2: 78-108 pairs, accuracy 0.32-0.53), and
# came out no better; at 4e-5 round 1 falls by 83 % and round 2 gets 170 pairs at 0.72.
DEMO_TRAIN = {"beta": 0.1, "learning_rate": 4e-5, "epochs": 4.0, "batch_size": 8, "sft_weight": 0.5,
              "save_steps": 4}
DEMO_LR_DECAY = 1.0
# The rounds (and the held-out figures) sample at T=1.0. The chosen answers' NLL trains a model
# towards whatever it is shown; at T<1 its own samples are a sharpened copy of it, so even the
# random-pair control learnt from them (-11 to -34 % at T=0.7). At T=1.0 they teach it nothing
# on average, and what the pairs carry is all that is left (the control moved -7 to +17 %).
DEMO_ITERATE_TEMPERATURE = 1.0


@dataclass
class IterateDemoResult:
    rounds: list  # iterate.RoundState per round
    results: dict  # what iterate.json holds
    work_dir: Path


def run_iterate_demo(work_dir: str | Path, *, pipeline: str = "dpo_reward", rounds: int = 2,
                     records: int = 150, sample_k: int = 10, max_new_tokens: int = 40, seed: int = 0,
                     max_steps: int = -1, held_out: int = 192, observer: Observer | None = None,
                     log=lambda line: None) -> IterateDemoResult:
    """``rounds`` rounds of ``dpo-engine iterate`` in ShapesWorld (``records`` new questions
    each), then the held-out figures of every round's model and of the random-pair control
    (``WORK_DIR/iterate.json``, ``WORK_DIR/iterate.svg``; see ``demo.proof``). Rerun to resume."""
    from .demo import selection
    from .demo.proof import measure, record
    from .demo.trainers import build_world_models
    from .demo.world import write_dataset
    from .errors import IterationChanged
    from .iterate import IterateSettings, iterate
    from .pipelines import get_pipeline
    from .training import TrainSettings

    observer = observer or Silent()
    work = Path(work_dir)
    roles = tuple(role.name for role in get_pipeline(pipeline).roles if role.default is None)
    paths = build_world_models(work / "models", roles=roles, seed=seed, log=lambda line: observer.note(line, "detail"))
    dataset = work / "data" / f"iterate-{rounds}x{records}.parquet"
    if not dataset.exists():
        write_dataset(dataset, n=records * rounds, seed=seed + 7, yes_no_share=0.0)
    loop = work / pipeline
    config = RunConfig(pipeline=pipeline, dataset=str(dataset), work_dir=str(loop),
                       models={role: str(paths[role]) for role in roles}, sample_k=sample_k,
                       max_new_tokens=max_new_tokens, seed=seed, temperature=DEMO_ITERATE_TEMPERATURE,
                       reward_margin=DEMO_REWARD_MARGIN if pipeline == "dpo_reward" else 0.0)
    train = TrainSettings(**DEMO_TRAIN, max_steps=max_steps, seed=seed)
    plan = IterateSettings(rounds=rounds, split_seed=seed, train=train, lr_decay=DEMO_LR_DECAY,
                           select_cmd=selection.command(DEMO_ITERATE_TEMPERATURE, config.top_k, held_out))
    try:
        states = iterate(config, plan, observer, log=log)
    except IterationChanged as exc:  # the demo's own settings changed with the code: no --restart here
        raise IterationChanged(exc.message, f"remove {loop} or give the demo another work dir") from exc
    entry = measure(loop, config, states, Path(paths["instruct"]), plan, seed, held_out, observer, log)
    return IterateDemoResult(states, record(work, pipeline, entry), work)
