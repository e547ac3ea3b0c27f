"""Train the instruct model on a run's pairs with TRL's ``DPOTrainer`` (the ``train`` extra).

No DPO loop of our own: the pairs go to TRL in its own conversational vision format (our
``trl`` export), and what comes back is a plain checkpoint folder that ``dpo-engine run``
loads as an instruct model (LoRA adapters are merged into it). TRL's checkpoints live under
``OUT/checkpoints``; a rerun of the same command resumes from the newest one, and a folder
that already holds the finished model (``OUT/dpo_engine_train.json``) is left as it is.

With ``keep_epochs`` the model as it stands at the end of each epoch (and of training) is also
saved, whole and loadable, to ``OUT/epochs/step-N`` (the paper keeps the best epoch, chosen on a benchmark; see
``iterate.pick_best``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError, DpoEngineError

DONE = "dpo_engine_train.json"
CHECKPOINTS = "checkpoints"
EPOCHS = "epochs"
TRL_COLUMNS = ("images", "prompt", "chosen", "rejected")


@dataclass(frozen=True)
class TrainSettings:
    """What the reference's trainer uses by default (RLAIF-V: beta 0.1, lr 5e-7, 4 epochs)."""

    beta: float = 0.1
    learning_rate: float = 5e-7
    epochs: float = 4.0
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = -1  # > 0 overrides epochs
    lora_rank: int = 0  # 0: full fine-tuning
    sft_weight: float = 0.0  # > 0: add the chosen answers' NLL (TRL's "sft" loss) with this weight
    save_steps: int = 50
    keep_epochs: bool = False  # also save the model at each epoch's end (OUT/epochs/step-N)
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda

    def check(self) -> None:
        if self.beta <= 0 or self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("--beta, --lr, --batch-size and --grad-accum must be positive")
        if self.sft_weight < 0:
            raise ConfigError("--sft-weight must be 0 or more")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("nothing to train: --epochs and --max-steps are both 0")
        if self.keep_epochs and self.lora_rank:
            raise ConfigError("keeping each epoch's model is not supported with --lora-rank yet",
                              "train all weights (--lora-rank 0), or keep only the last model")


@dataclass(frozen=True)
class TrainReport:
    out: Path
    pairs: int
    steps: int
    resumed_from: str | None  # the TRL checkpoint training went on from, if any
    seconds: float
    already_done: bool = False


def _require_trl():
    try:
        import trl  # noqa: F401
    except ImportError as exc:
        raise DpoEngineError("training needs TRL, which is not installed",
                             "pip install 'dpo-engine[train]'") from exc


def _load_pairs(path: Path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read {path} as parquet ({exc})",
                          "pass a run's work dir or a file written by `dpo-engine export --format trl`") from exc
    missing = [c for c in TRL_COLUMNS if c not in meta.schema_arrow.names]
    if missing:
        raise ConfigError(f"{path} is not in TRL's format (no {', '.join(missing)} column)",
                          "export it with `dpo-engine export WORK_DIR --format trl`, or pass the work dir")
    if meta.metadata.num_rows == 0:
        raise DpoEngineError(f"{path} holds no pairs: there is nothing to train on",
                             "check the run's filter settings (`dpo-engine status`) or add records")
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


def _last_complete_checkpoint(checkpoints: Path, log) -> str | None:
    """The newest TRL checkpoint that was written whole. transformers writes a checkpoint's
    ``trainer_state.json`` after its weights, optimizer, scheduler and RNG state, so a kill in
    the middle of a save leaves a folder without it (or with it cut short): such a folder is
    removed, and training goes on from the one before."""
    import shutil

    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True) if checkpoints.is_dir() else []
    for path in found:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log(f"removing {path}: it was cut short by a crash while being written")
            shutil.rmtree(path)
    return None


def epoch_models(out: str | Path) -> list[Path]:
    """The models ``keep_epochs`` saved under ``out`` (``epochs/step-N``), earliest first."""
    folder = Path(out) / EPOCHS
    found = [p for p in folder.glob("step-*") if p.name.split("-")[-1].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _epoch_saver(out: Path, processor):
    """A TRL callback that saves the model whole at each epoch's end and at the end of training
    (``--max-steps`` may stop mid-epoch), as ``OUT/epochs/step-N``: to a staged folder renamed
    into place, so a crash mid-save leaves no half model (resuming redoes that save)."""
    import shutil

    from transformers import TrainerCallback

    def save(state, model):
        final = out / EPOCHS / f"step-{state.global_step}"
        if final.is_dir() or not state.is_world_process_zero:
            return
        staged = final.with_name(final.name + ".tmp")
        shutil.rmtree(staged, ignore_errors=True)
        model.save_pretrained(staged)
        processor.save_pretrained(staged)
        staged.rename(final)

    class SaveEachEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            save(state, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            save(state, model)

    return SaveEachEpoch()


def train_dpo(pairs: str | Path, model: str | Path, out: str | Path, settings: TrainSettings = TrainSettings(), *,
              trust_remote_code: bool = False, log: Callable[[str], None] = lambda m: None) -> TrainReport:
    """DPO-train ``model`` on the TRL-format parquet ``pairs``; the result goes to ``out``."""
    from .models.family import detect_family

    settings.check()
    _require_trl()
    out = Path(out)
    done = out / DONE
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("settings") == asdict(settings) and info.get("base") == str(model):
            return TrainReport(out, info["pairs"], info["steps"], None, 0.0, already_done=True)
        raise ConfigError(f"{out} already holds a model trained with other settings or from another base",
                          "pass another --out, or delete that folder to train again")
    table = _load_pairs(Path(pairs))
    family = detect_family(model, trust_remote_code=trust_remote_code)

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    vision = family.kind == "image-text-to-text"
    cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    network = auto.from_pretrained(model, trust_remote_code=trust_remote_code,
                                   dtype=torch.bfloat16 if cuda else torch.float32)
    processor = (AutoProcessor if vision else AutoTokenizer).from_pretrained(model, trust_remote_code=trust_remote_code)
    peft_config = None
    if settings.lora_rank:
        try:
            from peft import LoraConfig
        except ImportError as exc:
            raise DpoEngineError("--lora-rank needs peft", "pip install 'dpo-engine[train]'") from exc
        peft_config = LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    checkpoints = out / CHECKPOINTS
    last = _last_complete_checkpoint(checkpoints, log)
    config = DPOConfig(output_dir=str(checkpoints), beta=settings.beta, learning_rate=settings.learning_rate,
                       num_train_epochs=settings.epochs, max_steps=settings.max_steps,
                       per_device_train_batch_size=settings.batch_size,
                       gradient_accumulation_steps=settings.grad_accum, seed=settings.seed, data_seed=settings.seed,
                       save_strategy="steps", save_steps=settings.save_steps, save_total_limit=2,
                       logging_steps=max(1, min(10, settings.save_steps)), report_to=[], use_cpu=not cuda,
                       bf16=cuda, disable_tqdm=False,
                       loss_type=["sigmoid", "sft"] if settings.sft_weight else ["sigmoid"],
                       loss_weights=[1.0, settings.sft_weight] if settings.sft_weight else None)
    trainer = DPOTrainer(model=network, args=config, train_dataset=table, processing_class=processor,
                         peft_config=peft_config,
                         callbacks=[_epoch_saver(out, processor)] if settings.keep_epochs else None)
    log(f"training {model} on {len(table)} pairs" + (f", resuming from {last}" if last else ""))
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    trained = trainer.model
    if peft_config is not None:
        trained = trained.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(out)
    processor.save_pretrained(out)
    steps = int(result.global_step)
    # Written last: its presence says the folder holds the finished model.
    staged = done.with_suffix(".tmp")
    staged.write_text(json.dumps({"base": str(model), "pairs": len(table), "steps": steps,
                                  "settings": asdict(settings)}, indent=2) + "\n")
    staged.replace(done)
    return TrainReport(out, len(table), steps, last, time.perf_counter() - start)
