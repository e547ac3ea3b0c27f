"""A pipeline defined in this file, and nowhere else, runs end to end through the engine.

``toy`` drafts k answers per record from the question's own words (no model), grades each by
how many words it repeats, pairs the best with the worst, and keeps every pair. It proves that a
new pipeline needs no edit to any other module, and that it gets per-record resume for free:
a run killed with SIGKILL and run again writes the same dataset as a run left alone.

Run as a script (``python tests/test_pipeline_api.py WORK DATA``) it does one toy run; the
kill test uses that to have a real process to kill.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shapes_rows, write_parquet
from test_resume import done_count

from dpo_engine import engine
from dpo_engine.config import RunConfig
from dpo_engine.errors import WorkDirBusy
from dpo_engine.pipelines import Pipeline, get_pipeline, register
from dpo_engine.stage import Outputs, PairRow, SampleRow, ScoreRow
from dpo_engine.text import text_hash, word_count


class ToyStage:
    """What the toy stages share: per record, no model, no settings of their own."""

    scope = "record"
    model_role = None

    def settings(self, config) -> dict:
        return {}

    def batch_size(self, config) -> int:
        return 64


class Draft(ToyStage):
    name = "draft"
    after: tuple[str, ...] = ()
    reads = ("records",)
    writes = ("samples",)

    def settings(self, config) -> dict:
        return {"k": config.sample_k, "seed": config.seed}

    def batch_size(self, config) -> int:
        return config.batch_size

    def process(self, batch, model, config) -> Outputs:
        time.sleep(float(os.environ.get("TOY_SLEEP", "0")))  # slow enough to be killed mid-stage
        out = Outputs()
        for rid in batch.rids:
            words = batch.records[rid].question.split()
            rng = random.Random(f"{config.seed}:{rid}")
            for j in range(config.sample_k):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
                out.samples.append(SampleRow(rid, j, text, len(text), word_count(text), text_hash(text)))
        return out


class Grade(ToyStage):
    name = "grade"
    after = ("draft",)
    reads = ("samples",)
    writes = ("scores",)

    def process(self, batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            for s in batch.samples.get(rid, []):
                repeats = s.n_words - len(set(s.text.split()))
                out.scores.append(ScoreRow(rid, s.inner_idx, -repeats, s.n_words))
        return out


class Match(ToyStage):
    name = "match"
    after = ("grade",)
    reads = ("scores",)
    writes = ("pairs",)

    def process(self, batch, model, config) -> Outputs:
        out = Outputs()
        for rid in batch.rids:
            ranked = sorted(batch.scores.get(rid, []), key=lambda s: (-s.score, s.inner_idx))
            if len(ranked) >= 2 and ranked[0].score > ranked[-1].score:
                out.pairs.append(PairRow(rid, 0, ranked[0].inner_idx, ranked[-1].inner_idx))
        return out


class KeepAll(ToyStage):
    name = "keep"
    after = ("match",)
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    scope = "run"

    def process_run(self, pairs, config) -> list[tuple[int, int]]:
        return [(rid, order) for rid, order, *_ in pairs]


TOY = Pipeline(name="toy", roles=(), stages=(Draft(), Grade(), Match(), KeepAll()),
               description="a pipeline that lives in a test file")


def toy_config(work: Path, data: Path) -> RunConfig:
    return RunConfig(pipeline="toy", dataset=str(data), work_dir=str(work), sample_k=4, batch_size=1)


def toy_data(tmp_path: Path) -> Path:
    rows = shapes_rows(10)
    for i, row in enumerate(rows):
        row["question"] = f"which shape is left of the red one in picture {i} and what colour is it"
    return write_parquet(tmp_path / "toy.parquet", rows)


def test_a_toy_pipeline_runs_through_the_engine(tmp_path):
    data = toy_data(tmp_path)
    summary = engine.run_pipeline(toy_config(tmp_path / "run", data), pipeline=TOY)
    assert [r.name for r in summary.reports] == ["draft", "grade", "match", "keep"]
    assert summary.samples == 40 and 0 < summary.pairs <= 10
    assert Path(summary.output).is_file()
    again = engine.run_pipeline(toy_config(tmp_path / "run", data), pipeline=TOY)
    assert all(r.computed == 0 and r.reused == 10 for r in again.reports[:3])  # nothing recomputed

    register(TOY)  # by name, as --pipeline toy would find it
    assert get_pipeline("toy") is TOY and "toy" in engine.pipeline_names()


def test_a_toy_run_killed_with_sigkill_resumes_to_the_same_dataset(tmp_path):
    data = toy_data(tmp_path)
    alone = engine.run_pipeline(toy_config(tmp_path / "A", data), pipeline=TOY)

    work = tmp_path / "B"
    env = {**os.environ, "TOY_SLEEP": "0.3", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, __file__, str(work), str(data)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while done_count(work / "engine.db", "draft") < 3:
            assert proc.poll() is None, "the toy run ended before it could be killed"
            assert time.time() < deadline, "timed out waiting for progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = done_count(work / "engine.db", "draft")
    assert 3 <= killed_at < 10

    resumed = engine.run_pipeline(toy_config(work, data), pipeline=TOY)
    draft = resumed.reports[0]
    assert (draft.reused, draft.computed) == (killed_at, 10 - killed_at)  # only the rest is drafted
    assert Path(resumed.output).read_bytes() == Path(alone.output).read_bytes()
    con = sqlite3.connect(work / "engine.db")
    assert con.execute("SELECT COUNT(*) FROM (SELECT rid, inner_idx FROM sample GROUP BY 1, 2"
                       " HAVING COUNT(*) > 1)").fetchone()[0] == 0


def test_a_second_run_on_a_live_work_dir_is_refused_until_the_first_is_gone(tmp_path):
    data = toy_data(tmp_path)
    work = tmp_path / "W"
    env = {**os.environ, "TOY_SLEEP": "0.5", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, __file__, str(work), str(data)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while done_count(work / "engine.db", "draft") < 1:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        for restart in (False, True):  # --restart must not delete a live run's store either
            with pytest.raises(WorkDirBusy, match=f"live run \\(pid {proc.pid} on "):
                engine.run_pipeline(toy_config(work, data), pipeline=TOY, restart=restart)
        assert proc.poll() is None and done_count(work / "engine.db", "draft") >= 1  # the live run goes on
    finally:
        proc.kill()
        proc.wait()
    # Killed, it is no longer live: the same command resumes it.
    resumed = engine.run_pipeline(toy_config(work, data), pipeline=TOY)
    assert resumed.reports[0].reused >= 1 and resumed.samples == 40


if __name__ == "__main__":
    engine.run_pipeline(toy_config(Path(sys.argv[1]), Path(sys.argv[2])), pipeline=TOY)
