"""``dpo-engine train`` (TRL's DPOTrainer on a run's pairs) and ``dpo-engine iterate`` (rounds
of run -> export -> train, each sampling from the model the round before trained; see
``dpo_engine.iterate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .. import engine
from ..config import RunConfig
from .app import BACKEND_HELP, DATASET_HELP, Debug, app, err_console, handle_errors
from .reward_paths import reward_side


@app.command()
@handle_errors
def iterate(
    dataset: Path = typer.Option(..., "--dataset", help=DATASET_HELP + " Split into --rounds seeded slices, "
                                 "one per round."),
    work_dir: Path = typer.Option(..., "--work-dir", help="The iteration's folder: iterate.db, the slices and "
                                  "one run work dir per round (round-R/, its model in round-R/model)."),
    rounds: int = typer.Option(..., "--rounds", min=1, help="Rounds (the RLAIF-V paper: 4)."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seeds which questions go to which round."),
    instruct_model: Path = typer.Option(..., "--instruct-model", help="Round 1's instruct model; each later "
                                        "round samples from the model the round before trained."),
    reward_model: Optional[str] = typer.Option(
        None, "--reward-model", help="dpo_reward: the reward model of every round (the paper keeps the reward "
        "side fixed). divide_and_conquer: may name LABELER,CHANGEQ,SPLIT."),
    round_reward_model: Optional[list[str]] = typer.Option(
        None, "--round-reward-model", help="dpo_reward: a reward model per round instead (give it --rounds times, "
        "in order), e.g. one you trained between rounds."),
    reference: str = typer.Option(
        "base", "--reference", help="dpo_reward: the implicit reward's denominator in each round: base (round 1's "
        "instruct model, which the reward model was trained from: the whole reward side stays fixed) or instruct "
        "(each round's own instruct model, what one reference run per round computes)."),
    reference_model: Optional[Path] = typer.Option(None, "--reference-model", help="dpo_reward: the model the "
                                                   "reward model was trained from, if not round 1's instruct model."),
    pipeline: str = typer.Option("dpo_reward", "--pipeline", help="Scoring pipeline: dpo_reward or "
                                 "divide_and_conquer."),
    labeler_model: Optional[Path] = typer.Option(None, "--labeler-model", help="divide_and_conquer: the labeler VLM."),
    split_model: Optional[Path] = typer.Option(None, "--split-model", help="divide_and_conquer: the split model."),
    question_model: Optional[Path] = typer.Option(None, "--question-model",
                                                  help="divide_and_conquer: the question-change model."),
    sample_k: int = typer.Option(10, "--sample-k", help="Answers sampled per question."),
    reward_margin: float = typer.Option(0.0, "--reward-margin", min=0.0, help="dpo_reward: pair answers only if "
                                        "the chosen one's reward sum is higher by more than this (0: the reference)."),
    repeated_facts: Optional[str] = typer.Option(None, "--repeated-facts", help="divide_and_conquer: false (default) counts "
                                       "a fact an answer states a second time as judged false; judged: as the reference."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest sampled answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature."),
    top_k: int = typer.Option(50, "--top-k", help="Sample among the K most likely tokens only (0: off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample among the most likely tokens whose mass reaches P "
                                "(1.0: off)."),
    seed: int = typer.Option(0, "--seed", help="Seeds sampling, pairing and training."),
    batch_size: int = typer.Option(4, "--batch-size", help="Records per model batch in the runs."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (runs and training)."),
    backend: str = typer.Option("hf", "--backend", help=BACKEND_HELP),
    beta: float = typer.Option(0.1, "--beta", help="DPO beta, of the implicit reward and of training."),
    lr: float = typer.Option(5e-7, "--lr", help="Training learning rate (the paper: 5e-7)."),
    epochs: float = typer.Option(4.0, "--epochs", help="Training passes over each round's pairs (the paper: 4)."),
    train_batch_size: int = typer.Option(8, "--train-batch-size", help="Pairs per device per training step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Steps whose gradients add up to one update."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Training updates per round (overrides --epochs)."),
    lr_decay: float = typer.Option(1.0, "--lr-decay", help="Round R trains at --lr times this to the power R-1 "
                                   "(built-in trainer; 1: the same rate every round)."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="Train LoRA adapters (merged when saved); 0: all weights."),
    sft_weight: float = typer.Option(0.0, "--sft-weight", help="Add the chosen answers' NLL with this weight."),
    save_steps: int = typer.Option(50, "--save-steps", help="Training checkpoint every this many updates."),
    train_cmd: Optional[str] = typer.Option(
        None, "--train-cmd", help="Train with your own trainer instead: a shell command with {dataset} (the round's "
        "pairs, TRL parquet), {model} (the model to train) and {out} (where it must save the trained model). "
        "Rerun after a crash: it is run again, so make it resume by itself."),
    select_cmd: Optional[str] = typer.Option(
        None, "--select-cmd", help="Keep each round's best epoch, as the paper keeps its best checkpoint: training "
        "also saves the model at each epoch's end, and this shell command is run once per saved model with {model} "
        "(and {python}, this Python) filled in; the last line it prints is the score, lower is better (for example a "
        "hallucination rate on your validation set); with {models} instead it runs once for all of them and prints "
        "one score per model, in order. The best becomes the next round's instruct model."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with "
                                           "the checkpoints."),
    restart: bool = typer.Option(False, "--restart", help="Discard this folder's iteration and start over."),
    json_out: bool = typer.Option(False, "--json", help="End with a one-line JSON summary on stdout."),
    debug: Debug = False,
):
    """Iterate as the RLAIF-V paper trains: per round, run the pipeline on a new slice of the
    questions with the current instruct model, export its pairs (TRL format), DPO-train on them
    (TRL, or --train-cmd), and sample the next round from the trained model.

    Kill it at any moment and rerun the same command: it resumes at the round and step it
    stopped in (the run per record, training from its last checkpoint). `dpo-engine status
    WORK_DIR` and `dpo-engine dashboard WORK_DIR` show the current round."""
    from ..iterate import IterateSettings
    from ..iterate import iterate as run_rounds
    from ..training import TrainSettings
    from .render import RichObserver

    console = err_console if json_out else Console(soft_wrap=True)
    models = {"instruct": str(instruct_model), "reference": str(reference_model) if reference_model else None,
              **reward_side(pipeline, reward_model, labeler_model, split_model, question_model)}
    config = RunConfig(pipeline=pipeline, dataset=str(dataset), work_dir=str(work_dir),
                       models={role: path for role, path in models.items() if path}, sample_k=sample_k,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                       batch_size=batch_size,
                       reward_margin=reward_margin, repeated_facts=repeated_facts,
                       device=device, backend=backend, beta=beta, trust_remote_code=trust_remote_code)
    settings = IterateSettings(
        rounds=rounds, split_seed=split_seed, train_cmd=train_cmd, reference=reference, reward_models=tuple(round_reward_model or ()), lr_decay=lr_decay,
        select_cmd=select_cmd,
        train=TrainSettings(beta=beta, learning_rate=lr, epochs=epochs, batch_size=train_batch_size,
                            grad_accum=grad_accum, max_steps=max_steps, lora_rank=lora_rank, sft_weight=sft_weight,
                            save_steps=save_steps, seed=seed, device=device))
    with RichObserver(console) as observer:
        states = run_rounds(config, settings, observer, restart=restart,
                            log=lambda line: console.print(line, markup=False, highlight=False))
    for s in states:
        console.print(f"round {s.round}: {s.records} records, {s.pairs} pairs, model {s.model}",
                      markup=False, highlight=False)
    console.print(f"final model: {states[-1].model}\nnext:        dpo-engine status {work_dir}",
                  markup=False, highlight=False)
    if json_out:
        print(json.dumps({"rounds": [{"round": s.round, "records": s.records, "pairs": s.pairs, "model": s.model}
                                     for s in states]}))


@app.command()
@handle_errors
def train(
    source: Path = typer.Argument(..., help="A work dir of a finished run (its pairs are exported in TRL's "
                                  "format first) or a TRL-format parquet (`export --format trl`)."),
    out: Path = typer.Option(..., "--out", help="Folder for the trained model; `run --instruct-model OUT` "
                             "loads it. TRL's checkpoints go to OUT/checkpoints and a rerun resumes from them."),
    model: Optional[Path] = typer.Option(None, "--model", help="The model to train (default: the run's "
                                         "instruct model)."),
    beta: float = typer.Option(0.1, "--beta", help="DPO beta."),
    lr: float = typer.Option(5e-7, "--lr", help="Learning rate (the reference: 5e-7)."),
    epochs: float = typer.Option(4.0, "--epochs", help="Passes over the pairs (the reference: 4)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per device per step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Steps whose gradients add up to one update."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after this many updates (overrides --epochs)."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="Train LoRA adapters of this rank (0: all weights); "
                                  "they are merged into the saved model."),
    sft_weight: float = typer.Option(0.0, "--sft-weight", help="Add the chosen answers' NLL (TRL's sft loss) with "
                                     "this weight (0: pure DPO)."),
    save_steps: int = typer.Option(50, "--save-steps", help="Checkpoint every this many updates."),
    seed: int = typer.Option(0, "--seed", help="Seeds TRL's shuffling and initialisation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with "
                                           "the checkpoint."),
    debug: Debug = False,
):
    """DPO-train the instruct model on a run's pairs with TRL (pip install 'dpo-engine[train]')."""
    from ..training import TrainSettings

    settings = TrainSettings(beta=beta, learning_rate=lr, epochs=epochs, batch_size=batch_size,
                             grad_accum=grad_accum, max_steps=max_steps, lora_rank=lora_rank,
                             save_steps=save_steps, seed=seed, device=device, sft_weight=sft_weight)
    console = Console()
    report = engine.train_run(source, out, model=model, settings=settings, trust_remote_code=trust_remote_code,
                              log=lambda line: console.print(line, markup=False, highlight=False))
    if report.already_done:
        console.print(f"{out} already holds this model ({report.pairs} pairs, {report.steps} steps)",
                      markup=False, highlight=False)
        return
    console.print(f"trained on {report.pairs} pairs, {report.steps} steps in {report.seconds:.0f}s: "
                  f"{report.out}\nnext:    dpo-engine run --instruct-model {report.out} ...",
                  markup=False, highlight=False)
