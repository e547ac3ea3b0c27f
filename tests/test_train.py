"""`dpo-engine train`: TRL's DPOTrainer on a run's pairs, a model `run` loads, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, cli, run_args

pytest.importorskip("trl")

TRAIN = ("--batch-size", "2", "--lr", "1e-4", "--save-steps", "1")


@pytest.fixture(scope="module")
def finished_run(tiny_models, demo_parquet, tmp_path_factory):
    work = tmp_path_factory.mktemp("train") / "run"
    cli(*run_args(tiny_models, demo_parquet, work))
    return work


def test_train_writes_a_model_that_run_loads_and_a_rerun_keeps_it(tiny_models, demo_parquet, finished_run, tmp_path):
    out = tmp_path / "trained"
    first = cli("train", finished_run, "--out", out, "--max-steps", "2", *TRAIN)
    assert "trained on" in first.stdout and (out / "dpo_engine_train.json").is_file()
    info = json.loads((out / "dpo_engine_train.json").read_text())
    assert info["steps"] == 2 and info["base"] == str(tiny_models["instruct"])  # the run's instruct model
    assert (out / "model.safetensors").read_bytes() != (tiny_models["instruct"] / "model.safetensors").read_bytes()
    again = cli("train", finished_run, "--out", out, "--max-steps", "2", *TRAIN)
    assert "already holds this model" in again.stdout
    other = cli("train", finished_run, "--out", out, "--max-steps", "3", *TRAIN, check=False)
    assert other.returncode == 2 and "other settings" in other.stderr
    models = {**tiny_models, "instruct": out}
    summary = json.loads(cli(*run_args(models, demo_parquet, tmp_path / "next", "--sample-k", "2", "--json"))
                         .stdout.splitlines()[-1])
    assert summary["samples"] > 0


def test_lora_adapters_are_merged_into_a_plain_checkpoint(tiny_models, finished_run, tmp_path):
    out = tmp_path / "lora"
    cli("train", finished_run, "--out", out, "--max-steps", "1", "--lora-rank", "4", *TRAIN)
    assert not (out / "adapter_config.json").exists()  # merged, not an adapter folder
    from transformers import LlavaForConditionalGeneration

    merged = LlavaForConditionalGeneration.from_pretrained(out)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_models["instruct"])
    assert merged.state_dict().keys() == base.state_dict().keys()  # plain weights, no lora_ names


def test_a_dataset_without_pairs_is_refused_clearly(tiny_models, tmp_path):
    image = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    message = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.schema([("images", pa.list_(image)), ("prompt", message), ("chosen", message),
                              ("rejected", message)]).empty_table(), empty)
    proc = cli("train", empty, "--model", tiny_models["instruct"], "--out", tmp_path / "o", check=False)
    assert proc.returncode != 0 and "holds no pairs" in proc.stderr and "Traceback" not in proc.stderr
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"question": ["q"]}), wrong)
    proc = cli("train", wrong, "--model", tiny_models["instruct"], "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "not in TRL's format" in proc.stderr


def test_training_killed_with_kill_9_resumes_from_its_last_checkpoint(finished_run, tmp_path):
    out = tmp_path / "resumed"
    args = ["train", str(finished_run), "--out", str(out), "--max-steps", "8", *TRAIN]
    proc = subprocess.Popen([sys.executable, "-m", "dpo_engine", *args], cwd=REPO, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "checkpoint-2").is_dir():
            assert proc.poll() is None and time.time() < deadline, "training ended or stalled before the kill"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "dpo_engine_train.json").exists()
    done = cli(*args)
    assert "resuming from" in done.stdout and "checkpoint-" in done.stdout
    assert json.loads((out / "dpo_engine_train.json").read_text())["steps"] == 8
