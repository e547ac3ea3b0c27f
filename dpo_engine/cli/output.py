"""What every command prints the same way: an error as one line, and a run's status.

Kept apart from the Typer app so that ``status`` can print without building it (see
``fast.py``). User text is printed as text, never parsed as rich markup.
"""

from __future__ import annotations

import json
import signal
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import DpoEngineError, Terminated


def disk_full(exc: BaseException) -> str | None:
    """What ran out of space, when ``exc`` (or an error it was raised from) says a disk is full."""
    import errno
    import sqlite3

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"writing {exc.filename}" if exc.filename else exc.strerror or "no space left"
        if isinstance(exc, sqlite3.DatabaseError) and "disk is full" in str(exc):
            return "writing the run's store, engine.db"
        exc = exc.__cause__ or exc.__context__
    return None


def report_error(exc: BaseException, console: Console, debug: bool = False) -> int:
    """Print an error as one line (a traceback too with ``--debug``); return the exit code."""
    if isinstance(exc, Terminated):
        name = signal.Signals(exc.signum).name
        console.print(f"[yellow]stopped by {name}:[/] finished batches are saved; rerun the same "
                      "command to continue", highlight=False)
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        console.print("[yellow]interrupted:[/] finished batches are saved; rerun the same "
                      "command to continue", highlight=False)
        return 130
    if debug:
        traceback.print_exception(exc)
    full = disk_full(exc)
    if full is not None:
        console.print(Text.assemble(("error:", "bold red"), f" the disk is full ({full}). Nothing already "
                                    "committed is lost (the run's store, an earlier output file): free some space, "
                                    "then rerun the same command to continue where it stopped"), highlight=False)
        return 1
    if isinstance(exc, DpoEngineError):
        console.print(Text.assemble(("error:", "bold red"), f" {exc.line()}"), highlight=False)
        return exc.exit_code
    console.print(Text.assemble(("error:", "bold red"), f" {type(exc).__name__}: {exc} (rerun with --debug "
                                "for the traceback)"), highlight=False)
    return 1


def worker_fields(w, now: float) -> dict:
    """One worker as ``status --json`` and the dashboard show it."""
    return {"id": w.id, "device": w.device, "host": w.host, "pid": w.pid, "state": w.state, "stage": w.stage,
            "heartbeat_age": round(now - w.heartbeat, 1) if w.heartbeat else None, "items": w.items,
            "items_per_s": round(w.items_per_s, 3) if w.items_per_s else None, "holder": w.holder}


def status_json(snap) -> str:
    now = time.time()
    return json.dumps({"pipeline": snap.pipeline, "records": asdict(snap.records),
                       "stages": [asdict(s) for s in snap.stages],
                       "workers": [worker_fields(w, now) for w in snap.workers], "leases": snap.leases,
                       "set_aside": [{"stage": st, "idx": idx, "reason": why} for st, idx, why in snap.set_aside]})


def print_status(console: Console, work_dir, snap) -> None:
    r = snap.records
    console.print(Text.assemble((str(work_dir), "bold"), f"  pipeline {snap.pipeline or '?'}  records {r.total} "
                                f"(valid {r.valid}, invalid {r.invalid})"))
    table = Table("stage", "done", "pending", "failed", "items/s", "tokens/s", "backend")
    for s in snap.stages:
        table.add_row(s.name, str(s.done), str(s.pending), str(s.failed),
                      f"{s.items_per_s:.1f}" if s.items_per_s else "-",
                      f"{s.tokens_per_s:.0f}" if s.tokens_per_s else "-", s.backend or "-")
    console.print(table)
    for s in snap.stages:
        if s.path:
            console.print(Text(f"  {s.name}: {s.path}", style="dim"))
    for s in snap.stages:
        for reason, n in s.notes.items():
            console.print(f"  {s.name}: {n} answers with {reason}", highlight=False, markup=False)
    for stage, idx, reason in snap.set_aside:
        console.print(Text.assemble(("  set aside ", "red"), f"{stage} {idx}: {reason}"), highlight=False)
    if snap.workers:
        now = time.time()
        workers = Table("worker", "device", "host", "state", "stage", "heartbeat", "items", "items/s")
        for w in snap.workers:
            f = worker_fields(w, now)
            workers.add_row(Text(f["id"]), Text(f["device"] or "-"), Text(f["host"] or "-"), f["state"] or "-",
                            f["stage"] or "-", f"{f['heartbeat_age']}s ago" if f["heartbeat_age"] is not None
                            else "-", str(f["items"]), f"{f['items_per_s']:.2f}" if f["items_per_s"] else "-")
        console.print(workers)


def show_status(work_dir, json_out: bool, console: Console) -> None:
    """``status``: a run's stages; for an iteration (``dpo-engine iterate``) its rounds too,
    and the stages of the round being worked on."""
    from ..engine import read_status
    from ..iterate import current_round, is_iterate_dir, read_rounds
    from ..store import DB_NAME

    if not is_iterate_dir(work_dir):
        snap = read_status(work_dir)
        print(status_json(snap)) if json_out else print_status(console, work_dir, snap)
        return
    plan, rounds = read_rounds(work_dir)
    now = current_round(work_dir)
    snap = read_status(now.work_dir) if now and (Path(now.work_dir) / DB_NAME).is_file() else None
    if json_out:
        print(json.dumps({"iterate": {"rounds_planned": plan.get("rounds"), "current": now.round if now else None,
                                      "rounds": [asdict(r) for r in rounds]},
                          "run": json.loads(status_json(snap)) if snap else None}))
        return
    timed = ("run", "export", "train", "select") if plan.get("select_cmd") else ("run", "export", "train")
    table = Table("round", "step", "samples from", "records", "pairs", f"seconds ({'/'.join(timed)})")
    for r in rounds:
        secs = "/".join(f"{r.seconds[k]:.0f}" if k in r.seconds else "-" for k in timed)
        table.add_row(str(r.round), r.step, Text(r.instruct), str(r.records if r.records is not None else "-"),
                      str(r.pairs if r.pairs is not None else "-"), secs)
    console.print(Text.assemble((str(work_dir), "bold"), f"  iteration: {plan.get('rounds')} rounds, "
                                f"{plan.get('pipeline')}"))
    console.print(table)
    last = rounds[-1] if rounds else None
    if last is not None and last.step == "done" and plan.get("select_cmd"):
        console.print(Text(f"round {last.round} kept {last.model}"))
    if snap is not None:
        console.print(Text(f"round {now.round}:", style="bold"))
        print_status(console, now.work_dir, snap)
