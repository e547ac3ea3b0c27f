"""Iterative rounds, as the RLAIF-V paper trains: sample from the model trained in the round
before, on a fresh slice of the questions.

``WORK_DIR`` of an iteration holds ``iterate.db`` (the plan and each round's step), the
question slices (``slices/round-R.jsonl``, written once, seeded) and one ordinary run work dir
per round (``round-R/``: its ``engine.db``, its pairs in TRL's format ``pairs.trl.parquet`` and
the model trained on them, ``model/``). A round goes through these steps, each of which
resumes by itself after a crash (the run per record, training from TRL's last checkpoint, the
export is rewritten whole, selection from the scores already taken):

    run -> export -> train [-> select] -> done

so a rerun of the same command goes on from the step ``iterate.db`` names, and the model
that round R trained is round R+1's instruct model. With ``select_cmd`` (the paper keeps each
round's best checkpoint) training also saves the model at each epoch's end, the command scores
each of them (lower is better; its last line of output is the score, kept in
``round-R/select.json``) and the round's model is the best one.
"""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, DpoEngineError, IterationChanged, WorkDirBusy
from .observer import Observer, Silent
from .store.rounds import ITERATE_DB, Rounds, RoundState
from .training import TrainSettings

STEPS = ("run", "export", "train", "select", "done")
PAIRS = "pairs.trl.parquet"
MODEL = "model"
SCORES = "select.json"


@dataclass(frozen=True)
class IterateSettings:
    rounds: int
    split_seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    # A shell command that trains instead of the built-in trainer; {dataset}, {model}, {out}.
    train_cmd: str | None = None
    # dpo_reward: one reward model per round; empty: the run's reward model in every round.
    reward_models: tuple[str, ...] = ()
    # dpo_reward: the implicit reward's denominator in every round: "base" (round 1's instruct
    # model, the one the reward model was trained from: the reward side stays fixed) or
    # "instruct" (each round's own instruct model, as one run per round computes it).
    reference: str = "base"
    # Round r trains at the learning rate times lr_decay ** (r - 1): later rounds learn from
    # fewer, less varied pairs of a model already trained (1.0: the same rate every round).
    lr_decay: float = 1.0
    # Keep each round's best epoch: a shell command with {model} (and {python}, this Python)
    # whose last line of output is the model's score, lower is better; or with {models}, run
    # once for all of them, printing one score per model.
    select_cmd: str | None = None

    def train_for(self, r: int) -> TrainSettings:
        """Round ``r``'s (1-based) training settings."""
        train = replace(self.train, keep_epochs=True) if self.select_cmd else self.train
        if self.lr_decay == 1.0 or r <= 1:
            return train
        return replace(train, learning_rate=train.learning_rate * self.lr_decay ** (r - 1))

    def check(self) -> None:
        if self.rounds < 1:
            raise ConfigError("--rounds must be 1 or more")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay {self.lr_decay}: use a factor in (0, 1]")
        if self.reference not in ("base", "instruct"):
            raise ConfigError(f"--reference {self.reference!r}: use base or instruct")
        if self.reward_models and len(self.reward_models) != self.rounds:
            raise ConfigError(f"{len(self.reward_models)} reward models for {self.rounds} rounds",
                              "give --round-reward-model once per round, or not at all")
        if self.train_cmd is not None and self.lr_decay != 1.0:
            raise ConfigError("--lr-decay applies to the built-in trainer, not to --train-cmd",
                              "set each round's rate in your own trainer, or leave --lr-decay at 1")
        if self.select_cmd is not None and "{model}" not in self.select_cmd and "{models}" not in self.select_cmd:
            raise ConfigError("--select-cmd lacks {model} (or {models})",
                              "it is run per epoch's model with {model} filled in and prints a score, or once "
                              "with {models} and prints one score per model")
        if self.select_cmd is not None and self.train_cmd is not None:
            raise ConfigError("--select-cmd chooses among the built-in trainer's epochs; --train-cmd keeps none",
                              "leave one of them out")
        if self.train_cmd is not None:
            missing = [p for p in ("{dataset}", "{model}", "{out}") if p not in self.train_cmd]
            if missing:
                raise ConfigError(f"--train-cmd lacks {', '.join(missing)}",
                                  "it is run with {dataset} (the TRL parquet), {model} (the model to train) "
                                  "and {out} (where the trained model must go) filled in")
        self.train_for(1).check()  # as round 1 will train (epochs kept when selecting)


def round_dir(work: Path, r: int) -> Path:
    return work / f"round-{r}"


def is_iterate_dir(path: str | Path) -> bool:
    return (Path(path) / ITERATE_DB).is_file()


def read_rounds(work: str | Path) -> tuple[dict, list[RoundState]]:
    """The plan and the rounds of an iteration (read-only; safe while it runs)."""
    rounds = Rounds(Path(work), readonly=True)
    try:
        return rounds.plan() or {}, rounds.rounds()
    finally:
        rounds.close()


def current_round(work: str | Path) -> RoundState | None:
    """The round being worked on (or the last one, once all are done); None before the first."""
    _, states = read_rounds(work)
    return _current(states)


def _current(states: list[RoundState]) -> RoundState | None:
    return next((s for s in states if s.step != "done"), states[-1] if states else None)


def follow_rounds(work: str | Path) -> Callable[[], tuple[Path, str]] | None:
    """For the dashboard: None unless ``work`` is an iteration's folder; else a function that
    gives the work dir of the round being worked on and a label naming the round and step."""
    if not is_iterate_dir(work):
        return None

    def now() -> tuple[Path, str]:
        plan, states = read_rounds(work)
        state = _current(states)
        if state is None:
            raise ConfigError(f"{work}: the iteration has not started its first round yet")
        return Path(state.work_dir), f"round {state.round}/{plan.get('rounds')} · {state.step} · {work}"

    return now


# ---------------------------------------------------------------------------------- the slices
def write_slices(dataset: str, work: Path, rounds: int, seed: int, image_root: str | None = None) -> list[Path]:
    """Split the dataset's rows into ``rounds`` seeded slices of (almost) equal size, one JSONL
    file each. Rows keep their idx (a row without one gets its row number in the whole dataset)
    and relative image paths become absolute, so each slice reads exactly the rows it names."""
    import base64

    from .dataset import iter_rows, open_dataset

    source = open_dataset(dataset, image_root)
    base = source.path if source.path.is_dir() else source.path.parent
    total = sum(1 for _ in iter_rows(source))
    order = list(range(total))
    random.Random(seed).shuffle(order)
    which = [0] * total
    for position, row in enumerate(order):
        which[row] = position * rounds // max(total, 1)
    folder = work / "slices"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"round-{r + 1}.jsonl" for r in range(rounds)]
    staged = [p.with_suffix(".jsonl.tmp") for p in paths]

    def plain(value):
        if isinstance(value, (bytes, bytearray)):
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(p.open("w", encoding="utf-8")) for p in staged]
        for row_no, (_, row, _) in enumerate(iter_rows(source)):
            if isinstance(row, Exception):  # kept as it is, so the round's run reports it
                files[which[row_no]].write("{unparseable row}\n")
                continue
            row = dict(row)
            if "idx" not in row and "question_id" not in row:
                row["idx"] = row_no
            image = row.get("image")
            if isinstance(image, dict):  # {bytes, path}: JSONL has image (base64) and image_path
                row["image"] = image.get("bytes") or None
                if image.get("path") and not row.get("image_path"):
                    row["image_path"] = image["path"]
            path = row.get("image_path")
            if not row.get("image") and isinstance(path, str) and path and not Path(path).is_absolute():
                row["image_path"] = str(base / path)  # read from there; a path beside bytes is kept as given
            files[which[row_no]].write(json.dumps(plain(row), default=str) + "\n")
    for tmp, path in zip(staged, paths):
        tmp.replace(path)
    return paths


# ---------------------------------------------------------------------------------- the loop
# Run settings that say where and how fast a round runs, not what it computes: a rerun may change them.
_HOW = ("work_dir", "dataset", "device", "dtype", "batch_size", "workers", "devices", "executor", "ray_address",
        "lease_seconds", "backend", "score_backend", "gpu_memory_utilization", "max_model_len",
        "tensor_parallel_size", "trust_remote_code", "model_fingerprints", "shared_tokenizer")


def _plan_settings(config: RunConfig, settings: IterateSettings) -> dict:
    """What must stay the same for a rerun to continue this iteration (a finished round is not
    run again, so a changed pairing or sampling setting could not reach it)."""
    what = {k: v for k, v in asdict(config).items() if k not in _HOW}
    return {**json.loads(json.dumps(what)), "dataset": str(Path(config.dataset).resolve()),
            "rounds": settings.rounds, "split_seed": settings.split_seed,
            "train": {k: v for k, v in asdict(settings.train).items() if k != "keep_epochs"},  # select_cmd says
            "train_cmd": settings.train_cmd, "reward_models": list(settings.reward_models),
            "reference": settings.reference, **({"select_cmd": settings.select_cmd} if settings.select_cmd else {}),
            **({"lr_decay": settings.lr_decay} if settings.lr_decay != 1.0 else {})}


@contextlib.contextmanager
def _exclusive(work: Path) -> Iterator[None]:
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    with open(work / "iterate.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkDirBusy(f"another `dpo-engine iterate` is working on {work}",
                              f"watch it with `dpo-engine status {work}`") from None
        yield


def _clear(work: Path) -> None:
    """What ``--restart`` removes: only what an iteration writes."""
    for path in [work / ITERATE_DB, work / f"{ITERATE_DB}-wal", work / f"{ITERATE_DB}-shm"]:
        path.unlink(missing_ok=True)
    for path in [work / "slices", *work.glob("round-*")]:
        if path.is_dir():
            shutil.rmtree(path)


def iterate(config: RunConfig, settings: IterateSettings, observer: Observer | None = None, *,
            restart: bool = False, log: Callable[[str], None] = lambda line: None) -> list[RoundState]:
    """Run ``settings.rounds`` rounds into ``config.work_dir`` (see the module's text);
    ``config`` is the first round's run configuration (its instruct model the base model)."""
    from .pipelines import validate

    settings.check()
    validate(config)
    observer = observer or Silent()
    work = Path(config.work_dir)
    with _exclusive(work):
        if restart:
            _clear(work)
        rounds = Rounds(work, create=True)
        try:
            wanted = _plan_settings(config, settings)
            plan = rounds.plan()
            if plan is None:
                write_slices(config.dataset, work, settings.rounds, settings.split_seed, config.image_root)
                rounds.save_plan(wanted)
            elif plan != wanted:
                changed = sorted(k for k in wanted if plan.get(k) != wanted[k])
                raise IterationChanged(f"{work} holds an iteration with other settings (changed: {', '.join(changed)})",
                                  "rerun with the same settings to continue it, pass --restart to start over, "
                                  "or use another --work-dir")
            instruct = config.model_path("instruct")
            for r in range(1, settings.rounds + 1):
                state = _round_state(rounds, work, r, instruct)
                if state.step != "done":
                    state = _work_round(rounds, state, config, settings, observer, log)
                instruct = state.model
            return rounds.rounds()
        finally:
            rounds.close()


def _round_state(rounds: Rounds, work: Path, r: int, instruct: str) -> RoundState:
    known = {s.round: s for s in rounds.rounds()}
    if r not in known:
        folder = round_dir(work, r)
        rounds.begin(RoundState(r, STEPS[0], instruct, str(folder), str(folder / MODEL)))
        known = {s.round: s for s in rounds.rounds()}
    return known[r]


def _work_round(rounds: Rounds, state: RoundState, config: RunConfig, settings: IterateSettings,
                observer: Observer, log: Callable[[str], None]) -> RoundState:
    from . import engine

    work = Path(state.work_dir)
    pairs = work / PAIRS
    r, total = state.round, settings.rounds
    while state.step != "done":
        started = time.perf_counter()
        observer.note(f"round {r}/{total}: {state.step}")
        if state.step == "run":
            models = {**config.models, "instruct": state.instruct}
            if config.pipeline == "dpo_reward":
                if settings.reward_models:
                    models["reward"] = settings.reward_models[r - 1]
                if settings.reference == "base" and not config.models.get("reference"):
                    models["reference"] = config.model_path("instruct")
            slice_path = work.parent / "slices" / f"round-{r}.jsonl"
            summary = engine.run_pipeline(replace(config, dataset=str(slice_path), work_dir=str(work),
                                                  models=models), observer)
            state = rounds.advance(state, "export", time.perf_counter() - started, records=summary.records["valid"])
        elif state.step == "export":
            report = engine.export_run(work, pairs, "trl")
            if report.pairs == 0:
                raise DpoEngineError(f"round {r} made no pairs: there is nothing to train on",
                                     f"see `dpo-engine status {work}`")
            state = rounds.advance(state, "train", time.perf_counter() - started, pairs=report.pairs)
        elif state.step == "train":
            _train(pairs, state, settings, config.trust_remote_code, log)
            state = rounds.advance(state, "select" if settings.select_cmd else "done", time.perf_counter() - started)
        elif state.step == "select":
            from .training import epoch_models

            best = pick_best(epoch_models(state.model), settings.select_cmd, work / SCORES, log)
            state = rounds.advance(state, "done", time.perf_counter() - started, model=str(best))
    return state


def pick_best(candidates: list[Path], command: str, scores_file: Path,
              log: Callable[[str], None] = lambda line: None) -> Path:
    """The candidate model whose score ``command`` finds lowest; on a tie the earlier one.

    ``command`` is run once per model with ``{model}`` filled in, or once for all the models not
    yet scored with ``{models}`` (one score per model, in order, on its last lines: an eval that
    loads once); ``{python}`` is this Python. Scores are kept in ``scores_file`` as they come,
    so a rerun scores only the rest."""
    import sys

    if not candidates:
        raise DpoEngineError(f"no epoch models to choose from in {scores_file.parent}",
                             "training saves one per epoch when selection is on: train again")
    scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    left = [m for m in candidates if str(m) not in scores]
    groups = [left] if "{models}" in command and left else [[m] for m in left]
    for group in groups:
        quoted = " ".join(shlex.quote(str(m)) for m in group)
        line = command.format(model=quoted, models=quoted, python=shlex.quote(sys.executable))
        done = subprocess.run(line, shell=True, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()[-len(group):]
        try:
            values = [float(text) for text in lines]
        except ValueError:
            values = []
        if done.returncode != 0 or len(values) != len(group):
            raise DpoEngineError(f"--select-cmd gave no score for {group[0] if len(group) == 1 else f'{len(group)} models'}"
                                 f" (exit code {done.returncode}, last lines {lines!r})",
                                 f"its error output ended: {done.stderr.strip()[-300:]}")
        for model, score in zip(group, values):
            scores[str(model)] = score
            log(f"{model.name}: score {score:g}")
        staged = scores_file.with_suffix(".tmp")
        staged.write_text(json.dumps(scores, indent=2) + "\n")
        staged.replace(scores_file)
    best = min(candidates, key=lambda m: scores[str(m)])
    log(f"kept {best.name} (score {scores[str(best)]:g})")
    return best


def _train(pairs: Path, state: RoundState, settings: IterateSettings, trust_remote_code: bool,
           log: Callable[[str], None]) -> None:
    from .training import train_dpo

    if settings.train_cmd is None:
        train_dpo(pairs, state.instruct, state.model, settings.train_for(state.round),
                  trust_remote_code=trust_remote_code, log=log)
        return
    command = settings.train_cmd.format(dataset=shlex.quote(str(pairs)), model=shlex.quote(state.instruct),
                                        out=shlex.quote(state.model))
    log(f"training with: {command}")
    with open(Path(state.work_dir) / "train.log", "ab") as fh:
        code = subprocess.run(command, shell=True, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise DpoEngineError(f"--train-cmd exited with code {code} in round {state.round}",
                             f"its output is in {Path(state.work_dir) / 'train.log'}; rerun to try again")
    if not (Path(state.model) / "config.json").is_file():
        raise DpoEngineError(f"--train-cmd finished but {state.model} holds no model (no config.json)",
                             "the command must save the trained model to {out}")
