"""``dpo-engine logps``: the reference's ``logps_gen.sh`` step as a command. A DPO dataset that
already holds its pairs gets the ``logps`` column RLAIF-V's trainer reads (the ``logps``
pipeline, then the ``rlaif-v-logps`` export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import engine
from ..config import RunConfig
from .app import IMAGE_ROOT_HELP, Debug, app, err_console, handle_errors


@app.command()
@handle_errors
def logps(
    dataset: Path = typer.Option(..., "--dataset", help="A DPO dataset: .parquet or .jsonl rows with question, "
                                 "image (or image_path), chosen and rejected; idx and any other columns are kept."),
    model: Path = typer.Option(..., "--model", help="The model the trainer will train (its DPO reference): the "
                               "log-probs are this model's."),
    work_dir: Path = typer.Option(..., "--work-dir", help="Where the store (engine.db) goes: rerun the same "
                                  "command after a crash and only the rows not yet scored are computed."),
    out: Path = typer.Option(..., "--out", help="The parquet to write: the dataset's rows with the logps column."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help=IMAGE_ROOT_HELP),
    batch_size: int = typer.Option(4, "--batch-size", help="Records per model batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (cuda:N)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, "
                              "bfloat16 or float16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the "
                                           "checkpoint."),
    restart: bool = typer.Option(False, "--restart", help="Discard this work dir's store and start over."),
    json_out: bool = typer.Option(False, "--json", help="End with a one-line JSON summary on stdout."),
    debug: Debug = False,
):
    """Add RLAIF-V's precomputed reference log-probs to a DPO dataset you already have.

    Each row's chosen and rejected answers are scored with its image by --model; --out gets the
    rows (in the dataset's order, other columns kept) with a logps column, the six-value JSON
    list RLAIF-V's trainer reads, so it skips its own pass over the data. A row without a
    chosen or rejected text fails alone, with the reason in `dpo-engine status WORK_DIR`."""
    from .render import RichObserver, print_summary

    console = err_console if json_out else Console(soft_wrap=True)
    config = RunConfig(pipeline="logps", dataset=str(dataset), work_dir=str(work_dir),
                       image_root=str(image_root) if image_root else None, models={"instruct": str(model)},
                       batch_size=batch_size, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    with RichObserver(console) as observer:
        summary = engine.run_pipeline(config, observer, restart=restart)
    print_summary(console, summary)
    report = engine.export_run(work_dir, out, "rlaif-v-logps")
    console.print(f"wrote {report.pairs} rows with logps to [bold]{escape(str(report.path))}[/]")
    if json_out:
        print(json.dumps({**summary.to_dict(), "out": str(report.path), "rows": report.pairs}))
    if summary.failed:
        raise typer.Exit(3)
