"""The runner on a real store: failures stay with their record, the rest goes on."""

from conftest import shapes_rows, write_parquet
from dpo_engine.config import RunConfig
from dpo_engine.dataset import open_dataset
from dpo_engine.ingest import ingest
from dpo_engine.observer import Silent
from dpo_engine.runner import Runner
from dpo_engine.stage import Outputs, SampleRow
from dpo_engine.store import Store


class NoteTaker(Silent):
    """An observer that keeps the notes a run writes."""

    def __init__(self):
        self.lines = []

    def note(self, text, level="info"):
        self.lines.append((text, level))


class FragileStage:
    """A stage (written for this test) that fails on one record, as a model error would."""

    name = "sample"
    after = ()
    reads = ("records",)
    writes = ("samples",)
    scope = "record"
    model_role = None

    def __init__(self, broken):
        self.broken = broken
        self.calls = []

    def settings(self, config):
        return {}

    def batch_size(self, config):
        return 4

    def process(self, batch, model, config):
        self.calls.append(list(batch.rids))
        if self.broken in batch.rids:
            raise RuntimeError(f"cannot handle record {self.broken}")
        return Outputs(samples=[SampleRow(rid, 0, f"answer {rid}", 2, 2, rid) for rid in batch.rids], tokens=2)


def test_a_failing_record_fails_alone_and_is_retried_next_run(tmp_path):
    store = Store.in_work_dir(tmp_path)
    ingest(store, open_dataset(write_parquet(tmp_path / "d.parquet", shapes_rows(6))))
    config = RunConfig("dpo_reward", "d", str(tmp_path), {"instruct": "i", "reward": "r"})
    stage = FragileStage(broken=2)
    notes = NoteTaker()
    (report,) = Runner(store, [stage], config, notes).run()
    assert (report.computed, report.failed) == (5, 1)
    # the batch that failed whole is said once, with its error, and counted
    assert report.split_batches == 1
    assert notes.lines == [("sample: a batch of 4 records failed (RuntimeError: cannot handle record 2); "
                            "they ran one at a time", "warning")]
    assert "cannot handle record 2" in report.errors[0]
    assert stage.calls[:5] == [[0, 1, 2, 3], [0], [1], [2], [3]]
    assert store.count("sample") == 5
    stage.broken = None
    (again,) = Runner(store, [stage], config).run()
    assert (again.computed, again.reused, again.failed) == (1, 5, 0)
    state = store.conn.execute("SELECT status, attempts, error FROM stage_state WHERE rid = 2").fetchone()
    assert state == ("done", 2, None)


def test_settings_are_checked_before_anything_runs():
    import pytest

    from dpo_engine.errors import ConfigError
    from dpo_engine.pipelines import validate

    good = dict(pipeline="dpo_reward", dataset="d", work_dir="w", models={"instruct": "i", "reward": "r"})
    assert validate(RunConfig(**good)).name == "dpo_reward"
    for bad, says in ((dict(pipeline="no_such_pipeline"), "unknown pipeline"), (dict(sample_k=1), "--sample-k"),
                      (dict(models={"instruct": "i"}), "--reward-model")):
        with pytest.raises(ConfigError, match=says):
            validate(RunConfig(**{**good, **bad}))
