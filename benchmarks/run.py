"""Speed and memory figures for dpo-engine. The last stdout line is a JSON object.

    python benchmarks/run.py [--quick]

* sample_speedup_vs_reference: samples/s of our sampling (several records per generate
  call, k answers per prompt, each image encoded once) over the reference's way (one record
  per call, its k repeats as a batch with the image re-encoded for each).
* score_speedup_vs_reference: answers/s of our log-prob scoring (image + prompt encoded once
  per record, its k answers scored against the cached prefix) over the reference's (batch
  size 1, the full sequence per answer, each answer scored twice).
* check_speedup_vs_reference: claims/s of divide_and_conquer's check (all claims of a record's
  answers against one image: image and prompt head encoded once, only the last position
  projected) over the reference's (one question per forward pass, the image encoded each time).
* split_speedup_vs_reference: replies/s of the split stage's batched generation (all answers
  of several records in one left-padded ``generate``) over one answer at a time.
* dashboard_10hz_slowdown: a full run's wall time with a dashboard process polling its store
  ten times a second, over the same run unwatched (1.0 = no slowdown).
* pairing_1m_seconds / pairing_1m_peak_rss_mb: reward + pair + filter over 1,000,000
  synthetic samples (100,000 records x 10) already in a store, in a fresh process.
* pairing_scaling_10x: that time over the time for 100,000 samples.
* workers_2_speedup: a full dpo_reward run with ``--workers 2`` (one torch thread each) over
  the same run in one process with one thread, wall time of the whole command (start-up, worker
  start-up and model loads included); workers_2_stage_speedup: the same over the stages' time
  only; workers_2_same_output says the bytes matched.
* ray_overhead_share: the same run on 2 Ray actors (a local cluster started by the run) over
  the 2 worker processes, minus 1 (0.1 = 10% slower); ray_same_output: the bytes matched.
* lease_reclaim_seconds: from a joined process's kill -9 until the run has taken back every
  record it held (2-second lease); lease_reclaim_frozen_seconds: the same for a process frozen
  with SIGSTOP, which only its leases' expiry can free.
* engine_overhead_share: share of a full run's wall time spent outside model calls
  (SQLite, bookkeeping, image decoding) on a small (>5M parameter) model.
* ingest_rss_rowgroup_ratio: peak memory reading a 2,000 x 100 KB dataset written as one row
  group over the same in row groups of 64 (benchmarks/ingest_memory.py, which explains the
  ``_big_pages`` variant and prints each peak).
* store_bytes_per_record_excl_samples: engine.db's bytes per record besides the answers and
  what is computed from them, after a full run on that 2,000 x 100 KB dataset (images stay in
  the dataset: the store keeps where each lies and its hash); store_run_seconds: that run's
  wall time (benchmarks/store_size.py, whose ``--copy-images`` gives the figures of a store
  that copies the images).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- models
def model_figures(tmp: Path, quick: bool) -> dict:
    import torch

    from dpo_engine.demo.world import write_dataset
    from dpo_engine.dataset import decode_image, iter_records, open_dataset
    from dpo_engine.models.tiny import build_tiny_llava
    from dpo_engine.models.hf.vlm import ImageTextModel

    torch.manual_seed(0)
    path = build_tiny_llava(tmp / "small", seed=0, size="small")
    model = ImageTextModel(path, device="auto")
    params = sum(p.numel() for p in model.model.parameters())
    n, k, new = (8, 10, 32) if quick else (24, 10, 64)
    data = write_dataset(tmp / "bench.parquet", n=n)
    recs = list(iter_records(open_dataset(data)))
    images = [decode_image(r.image) for r in recs]
    questions = [r.question for r in recs]
    model.generate(images[:1], questions[:1], keys=[0], k=2, max_new_tokens=4, temperature=0.7, seed=0)

    t0 = time.perf_counter()
    ours = []
    for i in range(0, n, 8):
        ours += model.generate(images[i:i + 8], questions[i:i + 8], keys=list(range(i, min(n, i + 8))),
                               k=k, max_new_tokens=new, temperature=0.7, seed=0)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for img, q in zip(images, questions):
        model.generate_reference_way(img, q, k=k, max_new_tokens=new, temperature=0.7)
    t_ref = time.perf_counter() - t0
    log(f"sampling: ours {n * k / t_ours:.1f} samples/s, reference way {n * k / t_ref:.1f} samples/s")

    answers = [[g.text for g in gens] for gens in ours]
    t0 = time.perf_counter()
    for img, q, ans in zip(images, questions, answers):
        model.score(img, q, ans)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    for img, q, ans in zip(images, questions, answers):
        for _ in range(2):
            model.score_full(img, q, ans, batch_size=1)
    t_score_ref = time.perf_counter() - t0
    log(f"scoring: ours {n * k / t_score:.1f} answers/s, reference way {n * k / t_score_ref:.1f} answers/s")
    return {
        "model_parameters": params,
        "device": model.device,
        "sample_speedup_vs_reference": round(t_ref / t_ours, 2),
        "score_speedup_vs_reference": round(t_score_ref / t_score, 2),
        "model_path": str(path),
    }


def dnc_figures(tmp: Path, model_path: str, quick: bool) -> dict:
    import random

    from dpo_engine.demo import world as world
    from dpo_engine.prompts import YES_NO_SUFFIX, cut_words, fill, template
    from dpo_engine.models.hf.chat import TextChatModel
    from dpo_engine.models.tiny import build_tiny_chat
    from dpo_engine.models.hf.vlm import ImageTextModel

    rng = random.Random(0)
    labeler = ImageTextModel(model_path, device="auto")
    n_images, claims = (4, 60) if quick else (12, 60)  # 10 answers x ~6 claims per record
    scenes = [world.random_scene(rng) for _ in range(n_images)]
    from PIL import Image
    import io

    images = [Image.open(io.BytesIO(world.render(s, rng))).convert("RGB") for s in scenes]
    checks = [[f"is there a {rng.choice(list(world.COLOURS))} {rng.choice(list(world.SHAPES))} at the "
               f"{rng.choice(world.CELLS)}?{YES_NO_SUFFIX}" for _ in range(claims)] for _ in images]
    labeler.yes_no(images[0], checks[0][:2])
    t0 = time.perf_counter()
    for image, qs in zip(images, checks):
        labeler.yes_no(image, qs)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for image, qs in zip(images, checks):
        for q in qs:
            labeler.yes_no_full(image, [q], batch_size=1)
    t_ref = time.perf_counter() - t0
    total = n_images * claims
    log(f"check: ours {total / t_ours:.0f} claims/s, reference way {total / t_ref:.0f} claims/s")
    labeler.close()

    chat = TextChatModel(build_tiny_chat(tmp / "chat", seed=0, size="small"), device="auto")
    n_prompts, new = (20, 48) if quick else (40, 96)
    text = template("split", None)
    prompts = [cut_words(fill(text, question=world.DESCRIBE, answer=world.answer(s, world.DESCRIBE)), 300)
               for s in (world.random_scene(rng) for _ in range(n_prompts))]
    keys = [(i, 0, 1) for i in range(n_prompts)]
    kw = dict(max_new_tokens=new, temperature=0.2, top_p=0.9, seed=0)
    chat.chat(prompts[:2], keys=keys[:2], **{**kw, "max_new_tokens": 4})
    t0 = time.perf_counter()
    batched = chat.chat(prompts, keys=keys, **kw)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [chat.chat([p], keys=[key], **kw)[0] for p, key in zip(prompts, keys)]
    t_single = time.perf_counter() - t0
    same = sum(a.text == b.text for a, b in zip(batched, single))
    log(f"split: batched {n_prompts / t_batch:.1f} replies/s, one at a time {n_prompts / t_single:.1f} "
        f"replies/s ({same}/{n_prompts} replies identical)")
    return {"check_speedup_vs_reference": round(t_ref / t_ours, 2),
            "split_speedup_vs_reference": round(t_single / t_batch, 2),
            "split_batched_equals_single_share": round(same / n_prompts, 3)}


POLLER = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from dpo_engine.store import Store
from dpo_engine.tui.snapshot import take_snapshot
db = Path({db!r})
while not db.exists():
    time.sleep(0.01)
store = Store(db, create=False)
polls = 0
while True:
    take_snapshot(store, time.time())
    polls += 1
    time.sleep(0.1)
"""


def dashboard_figure(tmp: Path, model_path: str, quick: bool) -> dict:
    """The same small run twice: alone, then watched by a 10 Hz poller in another process."""
    from dpo_engine.demo.world import write_dataset

    n = 12 if quick else 32
    data = write_dataset(tmp / "dash.parquet", n=n, seed=5)
    times = []
    for watched in (None, False, True, False, True):  # None: a warm-up run, not counted
        work = tmp / f"dash-{len(times)}-{watched}"
        poller = None
        if watched:
            code = POLLER.format(repo=str(REPO), db=str(work / "engine.db"))
            poller = subprocess.Popen([sys.executable, "-c", code])
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dpo_engine", "run", "--dataset", str(data), "--work-dir", str(work),
                        "--instruct-model", model_path, "--reward-model", model_path, "--sample-k", "10",
                        "--max-new-tokens", "32", "--batch-size", "4"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if watched is not None:
            times.append(time.perf_counter() - t0)
        if poller:
            poller.kill()
            poller.wait()
    alone, watched_t = (times[0] + times[2]) / 2, (times[1] + times[3]) / 2
    log(f"dashboard: run {alone:.2f}s alone, {watched_t:.2f}s with a 10 Hz poller")
    return {"dashboard_10hz_slowdown": round(watched_t / alone, 3)}


def workers_figure(tmp: Path, model_path: str, quick: bool, *, ray: bool = True) -> dict:
    """A full dpo_reward run with 2 worker processes x 1 torch thread over 1 process x 1 thread,
    after a warm-up run; then the same run on 2 Ray actors (a local cluster) against the two
    workers. Every run must write the same bytes."""
    from dpo_engine.demo.world import write_dataset

    n = 16 if quick else 96
    data = write_dataset(tmp / "workers.parquet", n=n, seed=7)
    runs = [("warm-up", 1, ()), ("one", 1, ()), ("two", 2, ())]
    if ray:
        runs.append(("ray", 2, ("--executor", "ray")))
    seconds, stages, outputs = {}, {}, {}
    for label, workers, extra in runs:
        work = tmp / f"workers-{label}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, in this process or each worker
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "dpo_engine", "run", "--dataset", str(data), "--work-dir",
                              str(work), "--instruct-model", model_path, "--reward-model", model_path,
                              "--sample-k", "10", "--max-new-tokens", "32", "--batch-size", "4",
                              "--workers", str(workers), "--device", "cpu", *extra, "--json"],
                             check=True, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True).stdout
        seconds[label] = time.perf_counter() - t0
        stages[label] = sum(s["seconds"] for s in json.loads(out.splitlines()[-1])["stages"])
        outputs[label] = (work / "dataset" / "dpo_dataset.parquet").read_bytes()
    same = outputs["one"] == outputs["two"]
    log(f"workers ({n} records): 1 x 1 thread {seconds['one']:.2f}s ({stages['one']:.2f}s in stages), "
        f"2 x 1 thread {seconds['two']:.2f}s ({stages['two']:.2f}s in stages), same bytes: {same}")
    figures = {"workers_2_speedup": round(seconds["one"] / seconds["two"], 3),
               "workers_2_stage_speedup": round(stages["one"] / stages["two"], 3), "workers_2_same_output": same}
    if ray:
        log(f"ray: 2 actors {seconds['ray']:.2f}s ({stages['ray']:.2f}s in stages), "
            f"same bytes: {outputs['ray'] == outputs['one']}")
        figures.update({"ray_overhead_share": round(seconds["ray"] / seconds["two"] - 1, 3),
                        "ray_stage_overhead_share": round(stages["ray"] / stages["two"] - 1, 3),
                        "ray_same_output": outputs["ray"] == outputs["one"]})
    return figures


def lease_figure(tmp: Path, model_path: str, lease: float = 2.0) -> dict:
    """Seconds from a joined process's death until the run has taken back every record it held:
    killed (kill -9: its pid is gone, seen at the run's next claim) and frozen (SIGSTOP: alive but
    silent, so only its leases' expiry frees them), with a 2-second lease."""
    import signal

    from dpo_engine.demo.world import write_dataset

    data = write_dataset(tmp / "lease.parquet", n=96, seed=9)
    figures = {}
    for how in ("killed", "frozen"):
        work = tmp / f"lease-{how}"
        args = [sys.executable, "-m", "dpo_engine", "run", "--dataset", str(data), "--work-dir", str(work),
                "--instruct-model", model_path, "--reward-model", model_path, "--sample-k", "4",
                "--max-new-tokens", "32", "--batch-size", "2", "--device", "cpu", "--lease-seconds", str(lease)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": REPO, "env": env}
        run = subprocess.Popen(args, **quiet)
        joiner = None
        try:
            db = work / "engine.db"
            _wait(lambda: db.exists() and _done(db) >= 1, "the run's first finished record", run)
            joiner = subprocess.Popen([*args, "--join"], **quiet)
            while True:  # freeze the joiner while it holds leases (it may commit between a look and a signal)
                _wait(lambda: _held_by(db, joiner.pid) > 0, "a lease held by the joiner", run, joiner)
                joiner.send_signal(signal.SIGSTOP)
                if _held_by(db, joiner.pid) > 0:
                    break
                joiner.send_signal(signal.SIGCONT)
            if how == "killed":
                joiner.send_signal(signal.SIGKILL)
            t0 = time.perf_counter()
            _wait(lambda: _held_by(db, joiner.pid) == 0, "the joiner's leases taken back", run)
            figures[f"lease_reclaim_{how}_seconds"] = round(time.perf_counter() - t0, 3)
            assert run.wait(timeout=600) == 0, "the run failed after taking back the joiner's records"
        finally:
            for proc in (run, joiner):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
    log(f"lease {lease}s: records of a killed joiner back after {figures['lease_reclaim_killed_seconds']}s, "
        f"of a frozen one after {figures['lease_reclaim_frozen_seconds']}s")
    figures["lease_reclaim_seconds"] = figures["lease_reclaim_killed_seconds"]
    figures["lease_seconds"] = lease
    return figures


def _wait(ready, what: str, *procs: subprocess.Popen, limit: float = 300.0) -> None:
    """Poll ``ready()`` until it holds; fail (never hang) if a process ends first or ``limit`` passes."""
    deadline = time.monotonic() + limit
    while not ready():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process ended before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {limit:.0f}s")
        time.sleep(0.01)


def _held_by(db: Path, pid: int) -> int:
    """Records held under a lease by the process ``pid`` (counting lapsed leases not yet cleared)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT COUNT(*) FROM lease WHERE holder LIKE ?", (f"%@{pid}:%",)).fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def _done(db: Path) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT COUNT(*) FROM stage_state WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def overhead_figure(tmp: Path, model_path: str, quick: bool) -> dict:
    from dpo_engine import engine
    from dpo_engine.config import RunConfig
    from dpo_engine.demo.world import write_dataset

    n = 16 if quick else 48
    data = write_dataset(tmp / "overhead.parquet", n=n, seed=3)
    work = tmp / "overhead-run"
    config = RunConfig(pipeline="dpo_reward", dataset=str(data), work_dir=str(work),
                       models={"instruct": model_path, "reward": model_path}, sample_k=10,
                       max_new_tokens=32, batch_size=8, device="auto", dtype="float32")
    t0 = time.perf_counter()
    summary = engine.run_pipeline(config)
    wall = time.perf_counter() - t0
    model_time = sum(r.model_seconds for r in summary.reports) + summary.model_load_seconds
    share = (wall - model_time) / wall
    log(f"full run: {wall:.2f}s wall, {model_time:.2f}s in model calls and loads -> overhead {share:.3f}")
    return {"engine_overhead_share": round(share, 4), "engine_overhead_run_seconds": round(wall, 2)}


# ------------------------------------------------------------------------------- pairing
def populate(db_dir: str, records: int, k: int = 10, seed: int = 0) -> None:
    """A store with records x k samples and both models' per-token log-probs, sample and
    logps stages marked done under the hashes a run with default settings computes."""
    import numpy as np

    from dpo_engine.dataset import RawRecord
    from dpo_engine.pipelines import stage_hashes
    from dpo_engine.stage import LogprobRow, Outputs, SampleRow
    from dpo_engine.pipelines import get_pipeline
    from dpo_engine.store import Store
    from dpo_engine.text import text_hash

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(400)] + ["the", "a", "red", "circle", "square"])
    store = Store.in_work_dir(db_dir)
    config = bench_config(db_dir)
    hashes = stage_hashes(get_pipeline("dpo_reward").stages, config)
    store.save_run("dpo_reward", "synthetic", {}, hashes, {})
    image = (REPO / "benchmarks" / "pixel.png").read_bytes() if (REPO / "benchmarks" / "pixel.png").exists() else b"png"
    chunk = 5000
    for start in range(0, records, chunk):
        rids = list(range(start, min(records, start + chunk)))
        store.insert_records([RawRecord(r, f"id{r}", f"id{r}", "Describe the image.", image, None,
                                        row_hash=str(r)) for r in rids])
        samples, logps = [], []
        lengths = rng.integers(20, 60, size=len(rids) * k)
        for i, (rid, j) in enumerate((rid, j) for rid in rids for j in range(k)):
            n = int(lengths[i])
            words = vocab[rng.integers(0, len(vocab), size=n)]
            text = " ".join(words.tolist())
            samples.append(SampleRow(rid, j, text, n + 1, n, text_hash(text)))
            for role in ("instruct", "reward"):
                v = rng.normal(-2.0, 1.0, size=n + 1).astype("<f4")
                s = float(v.sum())
                logps.append(LogprobRow(rid, j, role, n + 1, s, s / (n + 1), v.tobytes()))
        store.commit("sample", hashes["sample"], rids, Outputs(samples=samples), writes=["samples"],
                     downstream=[], seconds=0)
        for role in ("instruct", "reward"):
            store.commit(f"logps_{role}", hashes[f"logps_{role}"], rids,
                         Outputs(logprobs=[x for x in logps if x.role == role]),
                         writes=[f"logprob:{role}"], downstream=[], seconds=0)
    store.close()


def bench_config(work: str):
    from dpo_engine.config import RunConfig

    return RunConfig(pipeline="dpo_reward", dataset="synthetic", work_dir=work, models={"instruct": "i", "reward": "r"},
                     dtype="float32", model_fingerprints={"instruct": "i", "reward": "r"})


def pair_run(db_dir: str) -> None:
    """Child process: reward + pair + filter; prints its seconds."""
    from dpo_engine import engine
    from dpo_engine.store import Store

    t0 = time.perf_counter()
    reports = engine.run_stages(bench_config(db_dir))
    seconds = time.perf_counter() - t0
    store = Store.in_work_dir(db_dir)
    print(json.dumps({"seconds": seconds, "pairs": store.count("kept_pair"), "peak_rss_mb": peak_rss_mb(),
                      "computed": {r.name: r.computed for r in reports}}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, unlike ru_maxrss, is not inherited from
    the pre-exec image of the parent that forked us (which holds torch and a model)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_child(*args: str) -> tuple[dict, float]:
    out = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures, figures["peak_rss_mb"]


def pairing_figures(tmp: Path) -> dict:
    result = {}
    for records, key in ((10_000, "100k"), (100_000, "1m")):
        work = tmp / f"pairs-{key}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--populate", str(work), str(records)], check=True)
        log(f"populated {records * 10:,} samples in {time.perf_counter() - t0:.1f}s")
        figures, rss = timed_child("--pair-run", str(work))
        log(f"pairing {records * 10:,} samples: {figures['seconds']:.2f}s, peak RSS {rss:.0f} MB, "
            f"{figures['pairs']} pairs")
        result[key] = (figures["seconds"], rss)
    return {
        "pairing_1m_seconds": round(result["1m"][0], 2),
        "pairing_1m_peak_rss_mb": round(result["1m"][1], 1),
        "pairing_100k_seconds": round(result["100k"][0], 2),
        "pairing_scaling_10x": round(result["1m"][0] / result["100k"][0], 2),
    }


def ingest_figures() -> dict:
    """benchmarks/ingest_memory.py's figures (each reading in a fresh process)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("ingest_memory.py"))], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def store_figures() -> dict:
    """benchmarks/store_size.py's figures (a full run in a process of its own)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("store_size.py"))], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--populate":
        return populate(sys.argv[2], int(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "--pair-run":
        return pair_run(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model workloads (same 1M pairing)")
    parser.add_argument("--skip-pairing", action="store_true", help="leave out the 1M-sample figures")
    parser.add_argument("--only-dnc", action="store_true", help="only the divide_and_conquer figures")
    parser.add_argument("--only-dashboard", action="store_true", help="only the dashboard figure")
    parser.add_argument("--only-workers", action="store_true",
                        help="only the worker-processes, Ray and lease figures")
    parser.add_argument("--only-ingest", action="store_true", help="only the dataset-reading memory figures")
    parser.add_argument("--only-store", action="store_true", help="only the store-size figures")
    args = parser.parse_args()
    if args.only_ingest:
        print(json.dumps({"quick": args.quick, **ingest_figures()}))
        return
    if args.only_store:
        print(json.dumps({"quick": args.quick, **store_figures()}))
        return
    figures: dict = {"quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp_name:
        tmp = Path(tmp_name)
        from dpo_engine.models.runtime import quiet_transformers

        quiet_transformers()
        if args.only_dashboard:
            from dpo_engine.models.tiny import build_tiny_llava

            figures.update(dashboard_figure(tmp, str(build_tiny_llava(tmp / "small", seed=0, size="small")),
                                            args.quick))
            print(json.dumps(figures))
            return
        if args.only_workers:
            from dpo_engine.models.tiny import build_tiny_llava

            small = str(build_tiny_llava(tmp / "small", seed=0, size="small"))
            figures.update(workers_figure(tmp, small, args.quick))
            figures.update(lease_figure(tmp, small))
            print(json.dumps(figures))
            return
        if args.only_dnc:
            from dpo_engine.models.tiny import build_tiny_llava

            figures.update(dnc_figures(tmp, str(build_tiny_llava(tmp / "small", seed=0, size="small")), args.quick))
            print(json.dumps(figures))
            return
        m = model_figures(tmp, args.quick)
        figures.update({k: v for k, v in m.items() if k != "model_path"})
        figures.update(dnc_figures(tmp, m["model_path"], args.quick))
        figures.update(overhead_figure(tmp, m["model_path"], args.quick))
        figures.update(dashboard_figure(tmp, m["model_path"], args.quick))
        figures.update(workers_figure(tmp, m["model_path"], args.quick))
        figures.update(lease_figure(tmp, m["model_path"]))
        if not args.skip_pairing:
            figures.update(pairing_figures(tmp))
        figures.update(ingest_figures())
        figures.update(store_figures())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
