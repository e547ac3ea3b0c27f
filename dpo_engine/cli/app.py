"""The Typer CLI: parse, call the core, render with rich. Errors become one line here."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__, engine
from ..config import MAX_IMAGE_PIXELS, MAX_QUESTION_CHARS, RunConfig
from ..errors import ConfigError, Terminated
from ..store import DB_NAME
from .output import report_error, show_status
from .reward_paths import reward_side

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
IMAGE_ROOT_HELP = ("Only read image_path files inside this folder (for datasets from elsewhere, whose paths "
                   "may point anywhere); a row naming one outside it is invalid. Default: no limit.")
MAX_PIXELS_HELP = "A row whose image has more pixels is invalid (read from the image header, undecoded)."
MAX_CHARS_HELP = "A row whose question is longer (in characters) is invalid."
BACKEND_HELP = ("Model backend: hf (transformers, the default) or vllm (pip extra 'vllm'; "
                "sampling, checks and the text roles on vLLM engines).")
SCORE_BACKEND_HELP = ("Backend of both log-prob stages (one backend for both, so the implicit reward "
                      "never mixes engines): auto (hf, the faster scorer), hf or vllm.")


# Every command takes --debug; it is read by ``handle_errors``.
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


def handle_errors(func):
    """Turn errors into one line and an exit code; a traceback only with --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with terminate_like_ctrl_c():
                return func(*args, **kwargs)
        except typer.Exit:
            raise
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the last line of defence
            raise typer.Exit(report_error(exc, err_console, kwargs.get("debug", False))) from None

    return wrapper


@contextlib.contextmanager
def terminate_like_ctrl_c():
    """While a command runs, SIGTERM and SIGHUP stop it as Ctrl-C does (``Terminated``)."""
    def stop(signum, frame):
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
    image_root: Optional[Path] = typer.Option(None, "--image-root", help=IMAGE_ROOT_HELP),
    copy_images: bool = typer.Option(False, "--copy-images", help=(
        "Keep a copy of every image in engine.db. By default the store notes where each image lies in the dataset "
        "(and its hash) and reads it from there, so the dataset must stay in place until the run is exported.")),
    max_image_pixels: int = typer.Option(MAX_IMAGE_PIXELS, "--max-image-pixels", min=1, help=MAX_PIXELS_HELP),
    max_question_chars: int = typer.Option(MAX_QUESTION_CHARS, "--max-question-chars", min=1,
                                           help=MAX_CHARS_HELP),
    instruct_model: Path = typer.Option(..., "--instruct-model", "--instruct_model_path",
                                        help="The model to be trained (samples answers; the DPO reference)."),
    reward_model: Optional[str] = typer.Option(
        None, "--reward-model", "--reward_model_path",
        help="dpo_reward: a DPO-trained VLM whose implicit reward scores answers. "
        "divide_and_conquer: may name all three reward-side models as LABELER,CHANGEQ,SPLIT."),
    pipeline: str = typer.Option("dpo_reward", "--pipeline", "--pipeline_name",
                                 help="Scoring pipeline: dpo_reward or divide_and_conquer."),
    reference_model: Optional[Path] = typer.Option(
        None, "--reference-model", help="dpo_reward: the model the reward model was DPO-trained from, the "
        "implicit reward's denominator (default: the instruct model, as the reference computes it)."),
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
    reward_margin: float = typer.Option(0.0, "--reward-margin", min=0.0, help="dpo_reward: pair answers only if "
                                        "the chosen one's reward sum is higher by more than this (0: the reference)."),
    compat: str = typer.Option("off", "--compat", help="reference: dpo_reward pairs and rewards exactly as the "
                               "reference's code computes them (see the README's differences table); off: ours."),
    repeated_facts: Optional[str] = typer.Option(
        None, "--repeated-facts", help="divide_and_conquer: false (default) counts a fact an answer states a second "
        "time as a claim judged false; judged asks the labeler about it like any other, as the reference does "
        "(the default under --compat reference)."),
    seed: int = typer.Option(0, "--seed", help="Seeds sampling, shuffles and random choices."),
    batch_size: int = typer.Option(4, "--batch-size", "--batch_size", help="Records per model batch."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", "--max_new_tokens",
                                       help="Longest sampled answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature."),
    top_k: int = typer.Option(50, "--top-k", help="Sample among the K most likely tokens only (0: off; 50: "
                              "transformers' default, which the reference samples with)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample among the most likely tokens whose mass reaches P "
                                "(1.0: off)."),
    beta: float = typer.Option(0.1, "--beta", help="DPO beta of the implicit reward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (cuda:N)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes on --device, each with its own copy of "
                                "the model (1: everything runs in this process). The dataset is the same as one "
                                "process writes with the same torch threads per process."),
    devices: Optional[str] = typer.Option(None, "--devices",
                                          help="One worker process per device, e.g. cuda:0,cuda:1 (instead of "
                                          "--workers)."),
    join: bool = typer.Option(False, "--join",
                              help="Work on the live run of --work-dir as more workers (pass the live run's "
                              "options; --workers/--devices may differ). Records are shared out by leases."),
    executor: str = typer.Option("local", "--executor",
                                 help="local (this process or worker processes) or ray (one Ray actor per "
                                 "device or --workers; pip extra 'ray'). The store stays with this process."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="--executor ray: the cluster to use (e.g. 10.0.0.1:6379); "
                                              "default: start a local one."),
    lease_seconds: float = typer.Option(60.0, "--lease-seconds",
                                       help="How long records held by a process that stopped answering wait "
                                       "before another takes them over (a dead process here is seen at once)."),
    dtype: str = typer.Option("auto", "--dtype",
                              help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16."),
    backend: str = typer.Option("hf", "--backend", help=BACKEND_HELP),
    score_backend: str = typer.Option("auto", "--score-backend", help=SCORE_BACKEND_HELP),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--gpu-memory-utilization", help="vllm: share of GPU memory an engine may take (default 0.85; on a "
        "CPU build, the share of RAM for its KV cache, default 0.05)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len",
                                                help="vllm: longest prompt + answer (default: the model's)."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size",
                                             help="vllm: GPUs per engine, for models one GPU cannot hold."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run the model code a checkpoint ships (auto_map in its config.json); "
                                           "off by default, since that code runs with your rights."),
    restart: bool = typer.Option(False, "--restart",
                                 help="Discard this work dir's store and start over."),
    json_out: bool = typer.Option(False, "--json", help="End with a one-line JSON summary on stdout."),
    dashboard: bool = typer.Option(False, "--dashboard",
                                   help="Show the live dashboard in this terminal while the run works "
                                   "(the run goes on in a child process, its log in WORK_DIR/run.log)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks, and write what every stage computed "
                               "to WORK_DIR/debug/ (samples.jsonl: each answer with its log-probs, rewards, "
                               "claims and score; pairs.jsonl: every pair, kept or filtered out)."),
    reward_model_name: Optional[str] = typer.Option(None, "--reward_model_name", hidden=True),
    instruct_model_name: Optional[str] = typer.Option(None, "--instruct_model_name", hidden=True),
    run_stage: Optional[str] = typer.Option(None, "--run_stage", "--run-stage", help="Recompute this stage and "
                                            "every later one for every record (e.g. after fixing a model), keeping "
                                            "the earlier stages' results."),
    continue_from_stage: Optional[str] = typer.Option(None, "--continue_from_stage", hidden=True),
    reward_model_python_path: Optional[str] = typer.Option(None, "--reward_model_python_path", hidden=True),
):
    """Sample answers, score them, pair and filter them, and write the DPO dataset.

    Resumes by itself: rerun the same command after a crash and only unfinished records are
    computed. Changing a setting recomputes only the stages it affects."""
    from .render import RichObserver, print_summary

    if dashboard:
        return _run_with_dashboard(work_dir)
    console = err_console if json_out else Console(soft_wrap=True)
    for name, value in (("--reward_model_name", reward_model_name),
                        ("--instruct_model_name", instruct_model_name)):
        if value:
            console.print(f"[dim]note: {name} is not needed: the model family is read from config.json[/]")
    if continue_from_stage:
        console.print("[dim]note: stages resume by themselves; --continue_from_stage is not needed[/]")
    if reward_model_python_path:
        console.print("[dim]note: --reward_model_python_path is not needed: all models run in this process[/]")
    models = {"instruct": str(instruct_model), "reference": str(reference_model) if reference_model else None,
              **reward_side(pipeline, reward_model, labeler_model, split_model, question_model)}
    config = RunConfig(
        pipeline=pipeline, dataset=str(dataset), work_dir=str(work_dir),
        image_root=str(image_root) if image_root else None, copy_images=copy_images,
        max_image_pixels=max_image_pixels, max_question_chars=max_question_chars,
        models={role: path for role, path in models.items() if path},
        split_prompt=str(split_prompt) if split_prompt else None,
        question_prompt=str(question_prompt) if question_prompt else None,
        sample_k=sample_k, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, beta=beta,
        rank=rank, distance=distance, strict_follow_rank=strict_follow_rank, reward_margin=reward_margin, compat=compat, seed=seed,
        repeated_facts=repeated_facts,
        batch_size=batch_size, device=device, dtype=dtype, workers=workers,
        devices=tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else (),
        executor=executor, ray_address=ray_address, lease_seconds=lease_seconds,
        backend=backend, score_backend=score_backend, gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
        trust_remote_code=trust_remote_code,
    )
    if join and restart:
        raise ConfigError("--join and --restart do not go together", "--join works on the live run as it is")
    with RichObserver(console) as observer:
        summary = engine.run_pipeline(config, observer, restart=restart, join=join, rerun_from=run_stage)
    print_summary(console, summary)
    if debug:
        folder = engine.write_debug(work_dir)
        console.print(f"debug files: {folder}", markup=False, highlight=False)
    if json_out:
        print(json.dumps(summary.to_dict()))
    if summary.failed:
        raise typer.Exit(3)


def _run_with_dashboard(work_dir: Path) -> None:
    """The same run in a child process (its output in WORK_DIR/run.log), the dashboard here."""
    import os
    import subprocess
    import time

    from ..tui.app import Dashboard

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
        err_console.print(f"[bold red]error:[/] the run stopped before it started (see {escape(str(log))})",
                          highlight=False)
        raise typer.Exit(child.returncode or 1)
    Dashboard(work_dir).run()
    if child.poll() is None:
        Console().print(f"the run goes on in the background (pid {child.pid}, log {log}); "
                        f"`dpo-engine dashboard {work_dir}` shows it again", highlight=False, markup=False)
        return
    Console().print(f"the run ended with exit code {child.returncode} (log {log})", highlight=False, markup=False)
    raise typer.Exit(child.returncode)


# ---------------------------------------------------------------------------------- dashboard
@app.command()
@handle_errors
def dashboard(
    work_dir: Path = typer.Argument(..., help="A work dir used by `dpo-engine run` (live, finished or crashed)."),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot",
                                              help="Render one frame headless into this SVG file and exit."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between polls of the store."),
    debug: Debug = False,
):
    """Watch a run: progress and throughput per stage, devices, failures, and the data itself.

    Keys: p pause/resume the run (it stops between batches), r retry failed items, o open the
    record browser (n/p next/previous, escape back), q quit. The dashboard only reads the store,
    apart from those requests, and never slows the run."""
    from ..iterate import follow_rounds
    from ..tui.app import Dashboard
    from ..tui.app import screenshot as take_screenshot

    follow = follow_rounds(work_dir)  # an iteration's folder: show the round being worked on
    if follow is None:
        engine.check_work_dir(work_dir)  # a clear error for a wrong folder
    if interval <= 0:
        raise ConfigError("--interval must be > 0")
    if screenshot is not None:
        path = take_screenshot(work_dir, screenshot, follow=follow)
        Console().print(f"wrote {path}", highlight=False, markup=False)
        return
    Dashboard(work_dir, interval=interval, follow=follow).run()


# ---------------------------------------------------------------------------------- status
@app.command()
@handle_errors
def status(
    work_dir: Path = typer.Argument(..., help="A work dir used by `dpo-engine run`."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    debug: Debug = False,
):
    """Show each stage's done/pending/failed counts and throughput (safe while a run writes);
    for an iteration's folder (`dpo-engine iterate`), its rounds and the current round's stages."""
    show_status(work_dir, json_out, Console())


# ---------------------------------------------------------------------------------- retry
@app.command()
@handle_errors
def retry(
    work_dir: Path = typer.Argument(..., help="A work dir used by `dpo-engine run`."),
    debug: Debug = False,
):
    """Put a run's failed records back, those set aside after the process died while holding
    them included (a record in flight at two deaths, kill -9 or the OOM killer, is set aside
    so that reruns go on without it). The next `dpo-engine run` takes them; a live run takes
    them between batches."""
    count, live = engine.retry_failed(work_dir)
    if live:
        Console().print(f"asked the live run to retry its {count} failed record-stages", markup=False, highlight=False)
    else:
        Console().print(f"put back {count} failed record-stages: rerun the same `dpo-engine run` command to "
                        "compute them", markup=False, highlight=False)


# ---------------------------------------------------------------------------------- export
@app.command()
@handle_errors
def export(
    work_dir: Path = typer.Argument(..., help="A work dir used by `dpo-engine run`."),
    fmt: Optional[str] = typer.Option(None, "--format",
                                      help="pairs: rlaif-v (the default: the reference's parquet; logps where "
                                      "the store has them), rlaif-v-logps (logps required on every pair), trl (TRL "
                                      "DPOTrainer, vision), llama-factory (ShareGPT ranking data), ms-swift (RLHF "
                                      "rows). samples: parquet (the default) or jsonl."),
    out: Path = typer.Option(..., "--out", help="File to write."),
    what: str = typer.Option("pairs", "--what", help="pairs (the training dataset) or samples (one row per "
                             "sampled answer with its log-probs, rewards, claims, score and pair status)."),
    debug: Debug = False,
):
    """Write the run's pairs as a parquet dataset in the chosen format, or every sample."""
    if what == "samples":
        rows = engine.export_samples(work_dir, out, fmt or "parquet")
        Console().print(f"wrote {rows} samples to {out}", markup=False, highlight=False)
        return
    if what != "pairs":
        raise ConfigError(f"--what {what!r}: use pairs or samples")
    fmt = fmt or "rlaif-v"
    report = engine.export_run(work_dir, out, fmt)
    console = Console()
    if report.note:
        console.print(f"[yellow]{escape(report.note)}[/]")
    console.print(f"wrote {report.pairs} pairs ({fmt}, settings {report.settings_hash}) to [bold]{escape(str(report.path))}[/]")


# ---------------------------------------------------------------------------------- convert
@app.command()
@handle_errors
def convert(
    src: Path = typer.Argument(..., help="An original-layout LLaVA checkpoint (liuhaotian/llava-v1.5-7b, "
                               "openbmb/RLAIF-V-7B): config.json with mm_vision_tower."),
    dst: Path = typer.Argument(..., help="Where to write the HF-native llava checkpoint."),
    vision_tower: Optional[Path] = typer.Option(
        None, "--vision-tower", help="A local CLIP checkpoint folder (e.g. openai/clip-vit-large-patch14-336), "
        "needed when SRC holds no vision tower weights."),
    debug: Debug = False,
):
    """Convert an original-layout LLaVA checkpoint to the HF-native layout every backend loads,
    with a processor (square padding when the checkpoint pads) and the reference's llava_v1 prompt."""
    console = Console(highlight=False, soft_wrap=True)
    path = engine.convert_checkpoint(src, dst, vision_tower, log=lambda line: console.print(line, markup=False))
    console.print(f"next: dpo-engine run --instruct-model {path} ... (or --reward-model {path})", markup=False)


# ---------------------------------------------------------------------------------- validate
@app.command()
@handle_errors
def validate(
    path: Path = typer.Argument(..., help=DATASET_HELP),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help=IMAGE_ROOT_HELP),
    max_image_pixels: int = typer.Option(MAX_IMAGE_PIXELS, "--max-image-pixels", min=1, help=MAX_PIXELS_HELP),
    max_question_chars: int = typer.Option(MAX_QUESTION_CHARS, "--max-question-chars", min=1,
                                           help=MAX_CHARS_HELP),
    debug: Debug = False,
):
    """Check every row of a dataset. Exit 0: all valid; 1: some rows invalid; 2: unreadable."""
    console = Console(highlight=False, soft_wrap=True)
    report = engine.validate_dataset(path, on_bad=lambda line: console.print(line, markup=False),
                                     image_root=image_root, max_image_pixels=max_image_pixels,
                                     max_question_chars=max_question_chars)
    console.print(f"{report.total} rows: {report.valid} valid, {report.invalid} invalid")
    raise typer.Exit(1 if report.invalid else 0)


# ---------------------------------------------------------------------------------- demo
@app.command()
@handle_errors
def demo(
    work_dir: Path = typer.Argument(Path("demo-run"), help="Where the demo's models, data and run go."),
    pipeline: str = typer.Option("dpo_reward", "--pipeline",
                                 help="Scoring pipeline: dpo_reward or divide_and_conquer."),
    records: Optional[int] = typer.Option(None, "--records", help="ShapesWorld records to draw (default 60; "
                                          "with --iterate, 150 per round)."),
    sample_k: int = typer.Option(10, "--sample-k", help="Answers sampled per question."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", help="Longest sampled answer."),
    seed: int = typer.Option(0, "--seed", help="Seeds the world, the training and the run."),
    backend: str = typer.Option("hf", "--backend", help=BACKEND_HELP),
    score_backend: str = typer.Option("auto", "--score-backend", help=SCORE_BACKEND_HELP),
    rounds: int = typer.Option(0, "--iterate", min=0, help="Instead: iterate this many rounds (run, train on the "
                               "pairs, sample from the trained model), --records new questions each, and measure "
                               "every round's model on held-out questions against a random-pair control "
                               "(WORK_DIR/iterate.json, iterate.svg)."),
    max_steps: int = typer.Option(-1, "--max-steps", help="--iterate: training updates per round (default: 4 "
                                  "epochs)."),
    held_out: int = typer.Option(192, "--held-out", min=1, help="--iterate: held-out images (10 answers each); "
                                 "as many validation images, seeded apart, pick each round's best epoch."),
    json_out: bool = typer.Option(False, "--json", help="End with a one-line JSON summary on stdout."),
    debug: Debug = False,
):
    """Run a pipeline in ShapesWorld, a miniature world whose truth is known, and report quality.

    Trains small ShapesWorld models offline (on a 2-core CPU about 3 minutes for dpo_reward,
    5 for divide_and_conquer; once per WORK_DIR) into WORK_DIR/models/ROLE/, draws a dataset of coloured-shape images to
    WORK_DIR/data/demo.parquet, runs the pipeline with WORK_DIR as its work dir and writes how
    often the chosen answer hallucinates less than the rejected one to WORK_DIR/quality.json.

    With --iterate N: N rounds of `dpo-engine iterate` (run, train on the pairs with TRL, sample
    from the trained model; each round keeps its best epoch on validation questions), then every
    round's model and a random-pair control answer held-out questions: WORK_DIR/iterate.json and
    the chart WORK_DIR/iterate.svg. Rerun to resume."""
    from .. import showcase
    from .render import RichObserver, print_iterate, print_quality, print_summary

    console = err_console if json_out else Console(soft_wrap=True)
    if rounds:
        with RichObserver(console) as observer:
            done = showcase.run_iterate_demo(work_dir, pipeline=pipeline, rounds=rounds, records=records or 150,
                                             sample_k=sample_k, max_new_tokens=max_new_tokens, seed=seed,
                                             max_steps=max_steps, held_out=held_out, observer=observer,
                                             log=lambda line: console.print(line, markup=False, highlight=False))
        print_iterate(console, done.results, work_dir)
        if json_out:
            print(json.dumps(done.results))
        return
    with RichObserver(console) as observer:
        result = showcase.run_demo(work_dir, pipeline=pipeline, records=records or 60, sample_k=sample_k,
                                 max_new_tokens=max_new_tokens, seed=seed, backend=backend,
                                 score_backend=score_backend, observer=observer)
    print_summary(console, result.summary)
    print_quality(console, result.quality, result.examples)
    console.print(f"models:  {result.models_dir}/{{{','.join(result.roles)}}}\ndataset: {result.dataset}\n"
                  f"store:   {Path(work_dir) / DB_NAME}\noutput:  {result.summary.output}\n"
                  f"quality: {Path(work_dir) / 'quality.json'}\n"
                  f"next:    dpo-engine status {work_dir}", highlight=False, markup=False)
    if json_out:
        print(json.dumps({**result.summary.to_dict(), "quality": result.quality}))


def main() -> None:
    app(prog_name="dpo-engine")
