"""Ray actors (``RayExecutor``) on a real local Ray cluster: the same dataset as one process
writes, an actor killed mid-stage is replaced without losing or duplicating a record, and a
record that takes its actor down twice fails alone while the run goes on."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import cli, run_args
from test_resume import done_count

from dpo_engine import engine
from dpo_engine.config import RunConfig
from dpo_engine.errors import ConfigError, ModelError
from dpo_engine.executors.ray_actors import NAMESPACE, RayExecutor
from dpo_engine.pipelines import get_pipeline
from dpo_engine.stage import Batch

PIPELINE = get_pipeline("dpo_reward")


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; the executors join it and leave it running."""
    ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process(tiny_models, demo_parquet, tmp_path_factory) -> bytes:
    """The dataset the in-process executor writes, one torch thread as in each actor (another
    thread count may move float sums in the last bit)."""
    work = tmp_path_factory.mktemp("one")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        proc = cli(*run_args(tiny_models, demo_parquet, work, "--batch-size", "2", "--device", "cpu",
                             "--dtype", "float32", "--json"))
    return Path(json.loads(proc.stdout.splitlines()[-1])["output"]).read_bytes()


def config_for(models: dict, dataset: Path, work: Path) -> RunConfig:
    """What the CLI builds from ``run_args`` with ``--batch-size 2``, device and dtype given
    as the engine resolves them (the executor is built before the run resolves them)."""
    return RunConfig(pipeline="dpo_reward", dataset=str(dataset), work_dir=str(work),
                     models={"instruct": str(models["instruct"]), "reward": str(models["reward"])},
                     sample_k=4, max_new_tokens=24, batch_size=2, device="cpu", dtype="float32")


def alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def test_two_actors_write_the_dataset_one_process_writes(cluster, one_process, tiny_models, demo_parquet,
                                                         tmp_path):
    config = config_for(tiny_models, demo_parquet, tmp_path / "ray")
    executor = RayExecutor(config, PIPELINE.roles, 2, threads=1)
    names = list(executor.actor_names)
    summary = engine.run_pipeline(config, pipeline=PIPELINE, executor=executor)
    assert Path(summary.output).read_bytes() == one_process
    assert summary.failed == 0 and executor.replaced == 0 and executor.load_seconds > 0
    # The run closed the executor: its actors are gone (ray.kill is asynchronous), the cluster is not.
    deadline = time.time() + 30
    while any(alive(name) for name in names):
        assert time.time() < deadline, "the executor's actors outlived it"
        time.sleep(0.1)
    assert ray.is_initialized()


def test_an_actor_killed_mid_sample_is_replaced_and_nothing_is_lost(cluster, one_process, tiny_models,
                                                                     demo_parquet, tmp_path):
    work = tmp_path / "killed"
    config = config_for(tiny_models, demo_parquet, work)
    executor = RayExecutor(config, PIPELINE.roles, 2, threads=1)
    victim = executor.actor_names[0]
    killed = threading.Event()

    def kill_when_sampling() -> None:
        deadline = time.time() + 300
        while done_count(work / "engine.db", "sample") < 2 and time.time() < deadline:
            time.sleep(0.05)
        ray.kill(ray.get_actor(victim, namespace=NAMESPACE))
        killed.set()

    killer = threading.Thread(target=kill_when_sampling, daemon=True)
    killer.start()
    summary = engine.run_pipeline(config, pipeline=PIPELINE, executor=executor)
    killer.join(timeout=10)
    assert killed.is_set() and executor.replaced >= 1
    assert summary.failed == 0
    assert Path(summary.output).read_bytes() == one_process
    con = sqlite3.connect(work / "engine.db")
    for table, key in (("sample", "rid, inner_idx"), ("logprob", "role, rid, inner_idx"), ("reward", "rid, inner_idx")):
        assert con.execute(f"SELECT COUNT(*) FROM (SELECT {key} FROM {table} GROUP BY {key}"
                           " HAVING COUNT(*) > 1)").fetchone()[0] == 0


def test_a_record_that_kills_its_actor_twice_fails_alone_and_the_run_goes_on(cluster, tiny_models, demo_parquet,
                                                                               tmp_path):
    """The Ray side of issue 17's quarantine: one actor, batches of four; a watchdog kills the
    actor whenever record shapes-00005 is in flight (its lease in the store), as the OOM killer
    would. Its batch is redone record by record; alone, it kills the actor again and fails with
    the reason; the other eleven records finish."""
    from test_quarantine import POISON, in_flight

    work = tmp_path / "poison"
    db = work / "engine.db"
    config = replace(config_for(tiny_models, demo_parquet, work), batch_size=4)
    executor = RayExecutor(config, PIPELINE.roles, 1, threads=1)
    kills: list[int] = []  # sample-stage records done at each kill
    stop = threading.Event()

    def watchdog() -> None:
        while not stop.is_set():
            if in_flight(db, POISON, os.getpid()):
                # Counted only now (it cannot move while the poison is in flight); the second
                # kill waits for the batch-mate redone alone before the poison (done + 1).
                done = done_count(db, "sample")
                if not kills or (len(kills) == 1 and done > kills[0]):
                    try:
                        ray.kill(ray.get_actor(executor.actor_names[0], namespace=NAMESPACE))
                    except ValueError:  # between actors: try again
                        continue
                    kills.append(done)
            time.sleep(0.002)

    killer = threading.Thread(target=watchdog, daemon=True)
    killer.start()
    try:
        summary = engine.run_pipeline(config, pipeline=PIPELINE, executor=executor)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert len(kills) == 2 and executor.replaced == 2
    stages = {r.name: r for r in summary.reports}
    assert stages["sample"].failed == 1 and stages["sample"].computed == 11
    con = sqlite3.connect(db)
    (idx, error), = con.execute("SELECT r.idx, s.error FROM stage_state s JOIN record r USING (rid)"
                                " WHERE s.stage = 'sample' AND s.status = 'failed'").fetchall()
    assert idx == POISON and "died while this record was in flight, 2 times, the last time alone" in error
    assert summary.pairs > 0


def test_an_error_inside_an_actor_is_raised_as_itself(cluster, tiny_models, demo_parquet, tmp_path):
    config = config_for({**tiny_models, "instruct": tmp_path / "missing"}, demo_parquet, tmp_path / "w")
    executor = RayExecutor(config, PIPELINE.roles, 1, threads=1)
    try:
        with pytest.raises(ModelError, match="instruct model"):
            list(executor.map(PIPELINE.stages[0], [Batch([1])], config))
    finally:
        executor.close()


def test_an_unresolved_device_is_refused(tiny_models, demo_parquet, tmp_path):
    config = replace(config_for(tiny_models, demo_parquet, tmp_path), device="auto")
    with pytest.raises(ConfigError, match="resolved device"):
        RayExecutor(config, PIPELINE.roles, 1)


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch, tiny_models, demo_parquet,
                                                                 tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError) as err:
        RayExecutor(config_for(tiny_models, demo_parquet, tmp_path), PIPELINE.roles, 1)
    assert "pip install" in err.value.line()
