"""The Typer CLI: parse, call the core, render with rich. Errors become one line here."""

from __future__ import annotations

import functools
import itertools
import json
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..config import RunConfig
from ..errors import ConfigError, DpoEngineError
from ..store import DB_NAME, Store

app = typer.Typer(
    name="dpo-engine",
    help="Build DPO preference datasets for vision-language models. Every record's progress "
    "is kept in WORK_DIR/engine.db: kill a run at any moment and rerun the same command to "
    "continue where it stopped.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True, soft_wrap=True)

DATASET_HELP = ("Input dataset: a .parquet (idx, question, image{bytes,path}) or .jsonl (question, "
                "image as base64 or image_path) file, or a folder of such shards.")


def handle_errors(func):
    """Turn errors into one line and an exit code; a traceback only with --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except DpoEngineError as exc:
            if debug:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {exc.line()}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted:[/] finished batches are saved; rerun the same "
                              "command to continue", highlight=False)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc} (rerun with --debug "
                              "for the traceback)", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool):
    if value:
        print(f"dpo-engine {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


# ---------------------------------------------------------------------------------- run
@app.command()
@handle_errors
def run(
    dataset: Path = typer.Option(..., "--dataset", "--dataset_path", help=DATASET_HELP),
    work_dir: Path = typer.Option(..., "--work-dir", "--work_dir",
                                  help="Where engine.db, logs and dataset/dpo_dataset.parquet go."),
    instruct_model: Path = typer.Option(..., "--instruct-model", "--instruct_model_path",
                                        help="The model to be trained (samples answers; the DPO reference)."),
    reward_model: Optional[str] = typer.Option(
        None, "--reward-model", "--reward_model_path",
        help="dpo_reward: a DPO-trained VLM whose implicit reward scores answers. "
        "divide_and_conquer: may name all three reward-side models as LABELER,CHANGEQ,SPLIT."),
    pipeline: str = typer.Option("dpo_reward", "--pipeline", "--pipeline_name",
                                 help="Scoring pipeline: dpo_reward or divide_and_conquer."),
    labeler_model: Optional[Path] = typer.Option(
        None, "--labeler-model", help="divide_and_conquer: the VLM that answers each claim's yes/no question."),
    split_model: Optional[Path] = typer.Option(
        None, "--split-model", help="divide_and_conquer: the text chat model that lists an answer's facts."),
    question_model: Optional[Path] = typer.Option(
        None, "--question-model", help="divide_and_conquer: the text chat model that turns facts into yes/no questions."),
    split_prompt: Optional[Path] = typer.Option(
        None, "--split-prompt", help="Split prompt template file with {question} and {answer} "
        "(default: the shipped dpo_engine/prompts/split.txt)."),
    question_prompt: Optional[Path] = typer.Option(
        None, "--question-prompt", help="Question-change prompt template file with {facts} "
        "(default: the shipped dpo_engine/prompts/question.txt)."),
    sample_k: int = typer.Option(10, "--sample-k", "--sample_k", help="Answers sampled per question."),
    rank: int = typer.Option(3, "--rank", help="Chosen from the top RANK, rejected from the bottom RANK."),
    distance: int = typer.Option(25, "--distance",
                                 help="Pair answers only if their word counts differ by less than this."),
    strict_follow_rank: bool = typer.Option(False, "--strict-follow-rank", "--strict_follow_rank",
                                            help="Pair the i-th best with the i-th worst only."),
    seed: int = typer.Option(0, "--seed", help="Seeds sampling, shuffles and random choices."),
    batch_size: int = typer.Option(4, "--batch-size", "--batch_size", help="Records per model batch."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", "--max_new_tokens",
                                       help="Longest sampled answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature."),
    beta: float = typer.Option(0.1, "--beta", help="DPO beta of the implicit reward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (cuda:N)."),
    dtype: str = typer.Option("auto", "--dtype",
                              help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16."),
    restart: bool = typer.Option(False, "--restart",
                                 help="Discard this work dir's store and start over."),
    json_out: bool = typer.Option(False, "--json", help="End with a one-line JSON summary on stdout."),
    dashboard: bool = typer.Option(False, "--dashboard",
                                   help="Show the live dashboard in this terminal while the run works "
                                   "(the run goes on in a child process, its log in WORK_DIR/run.log)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    reward_model_name: Optional[str] = typer.Option(None, "--reward_model_name", hidden=True),
    instruct_model_name: Optional[str] = typer.Option(None, "--instruct_model_name", hidden=True),
    run_stage: Optional[str] = typer.Option(None, "--run_stage", hidden=True),
    continue_from_stage: Optional[str] = typer.Option(None, "--continue_from_stage", hidden=True),
    reward_model_python_path: Optional[str] = typer.Option(None, "--reward_model_python_path", hidden=True),
):
    """Sample answers, score them, pair and filter them, and write the DPO dataset.

    Resumes by itself: rerun the same command after a crash and only unfinished records are
    computed. Changing a setting recomputes only the stages it affects."""
    from .running import execute

    if dashboard:
        return _run_with_dashboard(work_dir)
    console = err_console if json_out else Console(soft_wrap=True)
    for name, value in (("--reward_model_name", reward_model_name),
                        ("--instruct_model_name", instruct_model_name)):
        if value:
            console.print(f"[dim]note: {name} is not needed: the model family is read from config.json[/]")
    if run_stage or continue_from_stage:
        console.print("[dim]note: stages resume by themselves; --run_stage/--continue_from_stage are ignored[/]")
    if reward_model_python_path:
        console.print("[dim]note: --reward_model_python_path is not needed: all models run in this process[/]")
    models = _reward_side(pipeline, reward_model, labeler_model, split_model, question_model)
    config = RunConfig(
        pipeline=pipeline, dataset=str(dataset), work_dir=str(work_dir),
        instruct_model=str(instruct_model), **models,
        split_prompt=str(split_prompt) if split_prompt else None,
        question_prompt=str(question_prompt) if question_prompt else None,
        sample_k=sample_k, temperature=temperature, max_new_tokens=max_new_tokens, beta=beta,
        rank=rank, distance=distance, strict_follow_rank=strict_follow_rank, seed=seed,
        batch_size=batch_size, device=device, dtype=dtype,
    )
    summary = execute(config, restart=restart, console=console)
    if json_out:
        print(json.dumps(summary))
    if any(s["failed"] for s in summary["stages"]):
        raise typer.Exit(3)


def _reward_side(pipeline: str, reward: str | None, labeler: Path | None, split: Path | None,
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
    return {"reward_model": reward,
            "labeler_model": str(labeler) if labeler else None,
            "split_model": str(split) if split else None,
            "question_model": str(question) if question else None}


def _run_with_dashboard(work_dir: Path) -> None:
    """The same run in a child process (its output in WORK_DIR/run.log), the dashboard here."""
    import os
    import subprocess
    import time

    from dpo_engine.tui.app import Dashboard

    args = [a for a in sys.argv[1:] if a != "--dashboard"]
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / "run.log"
    with log.open("ab") as fh:
        child = subprocess.Popen([sys.executable, "-m", "dpo_engine", *args], stdout=fh, stderr=fh,
                                 env={**os.environ, "COLUMNS": "120"})
    deadline = time.time() + 120
    while not (work_dir / DB_NAME).exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if not (work_dir / DB_NAME).exists():
        child.wait()
        err_console.print(f"[bold red]error:[/] the run stopped before it started (see {log})", highlight=False)
        raise typer.Exit(child.returncode or 1)
    Dashboard(work_dir).run()
    if child.poll() is None:
        Console().print(f"the run goes on in the background (pid {child.pid}, log {log}); "
                        f"`dpo-engine dashboard {work_dir}` shows it again", highlight=False)
        return
    Console().print(f"the run ended with exit code {child.returncode} (log {log})", highlight=False)
    raise typer.Exit(child.returncode)


# ---------------------------------------------------------------------------------- dashboard
@app.command()
@handle_errors
def dashboard(
    work_dir: Path = typer.Argument(..., help="A work dir used by `dpo-engine run` (live, finished or crashed)."),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot",
                                              help="Render one frame headless into this SVG file and exit."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between polls of the store."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Watch a run: progress and throughput per stage, devices, failures, and the data itself.

    Keys: p pause/resume the run (it stops between batches), r retry failed items, o open the
    record browser (n/p next/previous, escape back), q quit. The dashboard only reads the store,
    apart from those requests, and never slows the run."""
    from dpo_engine.tui.app import Dashboard, screenshot as take_screenshot

    Store.in_work_dir(work_dir, create=False).close()  # a clear error for a wrong folder
    if interval <= 0:
        raise ConfigError("--interval must be > 0")
    if screenshot is not None:
        path = take_screenshot(work_dir, screenshot)
        Console().print(f"wrote {path}", highlight=False)
        return
    Dashboard(work_dir, interval=interval).run()


# ---------------------------------------------------------------------------------- status
@app.command()
@handle_errors
def status(
    work_dir: Path = typer.Argument(..., help="A work dir used by `dpo-engine run`."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Show each stage's done/pending/failed counts and throughput (safe while a run writes)."""
    store = Store.in_work_dir(work_dir, create=False)
    snap = store.status()
    store.close()
    if json_out:
        print(json.dumps({
            "pipeline": snap.pipeline,
            "records": asdict(snap.records),
            "stages": [asdict(s) for s in snap.stages],
        }))
        return
    console = Console()
    r = snap.records
    console.print(f"[bold]{work_dir}[/]  pipeline {snap.pipeline or '?'}  records {r.total} "
                  f"(valid {r.valid}, invalid {r.invalid})")
    table = Table("stage", "done", "pending", "failed", "items/s", "tokens/s")
    for s in snap.stages:
        table.add_row(s.name, str(s.done), str(s.pending), str(s.failed),
                      f"{s.items_per_s:.1f}" if s.items_per_s else "-",
                      f"{s.tokens_per_s:.0f}" if s.tokens_per_s else "-")
    console.print(table)
    for s in snap.stages:
        for reason, n in s.notes.items():
            console.print(f"  {s.name}: {n} answers with {reason}", highlight=False)


# ---------------------------------------------------------------------------------- export
@app.command()
@handle_errors
def export(
    work_dir: Path = typer.Argument(..., help="A work dir used by `dpo-engine run`."),
    fmt: str = typer.Option("rlaif-v", "--format",
                            help="rlaif-v (the reference's parquet) or trl (TRL DPOTrainer, vision)."),
    out: Path = typer.Option(..., "--out", help="Parquet file to write."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Write the run's pairs as a parquet dataset in the chosen format."""
    from ..exports import export as do_export

    store = Store.in_work_dir(work_dir, create=False)
    report = do_export(store, out, fmt)
    store.close()
    Console().print(f"wrote {report.pairs} pairs ({fmt}) to [bold]{report.path}[/]")


# ---------------------------------------------------------------------------------- validate
@app.command()
@handle_errors
def validate(
    path: Path = typer.Argument(..., help=DATASET_HELP),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Check every row of a dataset. Exit 0: all valid; 1: some rows invalid; 2: unreadable."""
    from ..validate import validate_dataset

    console = Console(highlight=False, soft_wrap=True)
    report = validate_dataset(path, on_bad=lambda line: console.print(line, markup=False))
    console.print(f"{report.total} rows: {report.valid} valid, {report.invalid} invalid")
    raise typer.Exit(1 if report.invalid else 0)


# ---------------------------------------------------------------------------------- demo
@app.command()
@handle_errors
def demo(
    work_dir: Path = typer.Argument(Path("demo-run"), help="Where the demo's models, data and run go."),
    pipeline: str = typer.Option("dpo_reward", "--pipeline",
                                 help="Scoring pipeline: dpo_reward or divide_and_conquer."),
    records: int = typer.Option(60, "--records", help="ShapesWorld records to draw."),
    sample_k: int = typer.Option(10, "--sample-k", help="Answers sampled per question."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", help="Longest sampled answer."),
    seed: int = typer.Option(0, "--seed", help="Seeds the world, the training and the run."),
    json_out: bool = typer.Option(False, "--json", help="End with a one-line JSON summary on stdout."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Run a pipeline in ShapesWorld, a miniature world whose truth is known, and report quality.

    Trains small ShapesWorld models offline (on a 2-core CPU about 1.5 minutes for dpo_reward,
    2.5 for divide_and_conquer; once per WORK_DIR) into WORK_DIR/models/ROLE/, draws a dataset of coloured-shape images to
    WORK_DIR/data/demo.parquet, runs the pipeline with WORK_DIR as its work dir and writes how
    often the chosen answer hallucinates less than the rejected one to WORK_DIR/quality.json."""
    from dpo_engine.demo.trainers import build_world_models

    from ..demo.quality import quality_report
    from ..demo.world import write_dataset
    from .running import execute

    console = err_console if json_out else Console(soft_wrap=True)
    models_dir = work_dir / "models"
    dataset = work_dir / "data" / "demo.parquet"
    roles = DEMO_ROLES.get(pipeline)
    if roles is None:
        raise ConfigError(f"unknown pipeline {pipeline!r}", f"use one of {', '.join(DEMO_ROLES)}")
    paths = build_world_models(models_dir, roles=roles, seed=seed,
                               log=lambda line: console.print(f"[dim]{line}[/]", highlight=False))
    if not dataset.exists():
        # Multi-claim questions only: on one-token yes/no answers the implicit reward of a model
        # this small is close to a coin flip (see README), which would say nothing about the engine.
        write_dataset(dataset, n=records, seed=seed, yes_no_share=0.0)
    config = RunConfig(pipeline=pipeline, dataset=str(dataset), work_dir=str(work_dir),
                       instruct_model=str(paths["instruct"]),
                       **{f"{role}_model": str(paths[role]) for role in roles if role != "instruct"},
                       sample_k=sample_k, max_new_tokens=max_new_tokens, seed=seed)
    summary = execute(config, restart=False, console=console)
    store = Store.in_work_dir(work_dir, create=False)
    try:
        report = quality_report(store).to_dict()
        examples = list(itertools.islice(store.iter_kept_pairs(), 3))
    finally:
        store.close()
    (work_dir / "quality.json").write_text(json.dumps({pipeline: report}, indent=2) + "\n")
    summary["quality"] = report
    _print_quality(console, report, examples)
    console.print(f"models:  {models_dir}/{{{','.join(roles)}}}\ndataset: {dataset}\n"
                  f"store:   {work_dir / DB_NAME}\noutput:  {summary['output']}\n"
                  f"quality: {work_dir / 'quality.json'}\n"
                  f"next:    dpo-engine status {work_dir}", highlight=False)
    if json_out:
        print(json.dumps(summary))


DEMO_ROLES = {"dpo_reward": ("instruct", "reward"),
              "divide_and_conquer": ("instruct", "split", "question", "labeler")}


def _print_quality(console: Console, q: dict, examples: list[dict]) -> None:
    table = Table("quality (ShapesWorld truth)", "value", title=None)
    table.add_row("pairs", str(q["pairs"]))
    table.add_row("pair accuracy (chosen hallucinates less)", f"{q['pair_accuracy']:.3f}")
    table.add_row("random baseline", f"{q['random_baseline']:.3f}")
    table.add_row("ties", f"{q['tie_share']:.3f}")
    table.add_row("chosen with a hallucination", f"{q['chosen_hallucination_rate']:.3f}")
    table.add_row("rejected with a hallucination", f"{q['rejected_hallucination_rate']:.3f}")
    table.add_row("samples with a hallucination", f"{q['sample_hallucination_rate']:.3f}")
    console.print(table)
    for row in examples:
        console.print(f"[bold]{row['question']}[/]\n  chosen:   {row['chosen']}\n  rejected: {row['rejected']}",
                      highlight=False)


def main() -> None:
    app(prog_name="dpo-engine")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
