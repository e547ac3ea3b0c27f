"""The CLI end to end, through the real entry point in subprocesses."""

import json

import pyarrow.parquet as pq
import pytest

from conftest import cli, run_args, shapes_rows, write_parquet
import dpo_engine.cli.logps  # noqa: F401 - registers `logps`, as the entry point does
import dpo_engine.cli.training  # noqa: F401 - registers `train` and `iterate`
from dpo_engine.cli.app import app

COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_every_registered_command_is_checked():
    assert {"run", "status", "export", "validate", "demo", "dashboard", "train", "iterate", "logps"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command):
    out = cli(command, "--help").stdout
    assert "Usage" in out and len(out.split()) > 20
    assert "--debug" in out  # every command takes the shared --debug option


def test_run_status_rerun_and_export(tiny_models, demo_parquet, tmp_path):
    work = tmp_path / "A"
    first = json.loads(cli(*run_args(tiny_models, demo_parquet, work, "--json")).stdout.splitlines()[-1])
    assert first["pipeline"] == "dpo_reward" and first["output"].endswith("dataset/dpo_dataset.parquet")
    assert [s["name"] for s in first["stages"]] == ["sample", "logps_instruct", "logps_reward", "reward",
                                                    "pair", "filter"]
    assert all(s["computed"] == 12 and s["reused"] == 0 for s in first["stages"])
    table = pq.read_table(first["output"])
    assert table.num_rows == first["pairs"] > 0
    assert {"idx", "question", "chosen", "rejected", "image", "logps", "origin_dataset"} <= set(table.column_names)
    logps = json.loads(table.column("logps")[0].as_py())
    assert len(logps) == 6 and len(logps[2]) > 0

    second = json.loads(cli(*run_args(tiny_models, demo_parquet, work, "--rank", "2", "--json")).stdout.splitlines()[-1])
    by_name = {s["name"]: s for s in second["stages"]}
    for name in ("sample", "logps_instruct", "logps_reward", "reward"):
        assert by_name[name]["computed"] == 0 and by_name[name]["reused"] == 12
    assert by_name["pair"]["computed"] == 12 and by_name["filter"]["computed"] == 12

    status = json.loads(cli("status", work, "--json").stdout)
    assert status["records"] == {"total": 12, "valid": 12, "invalid": 0}
    assert all(s["done"] == 12 and s["pending"] == 0 for s in status["stages"])

    datasets = pytest.importorskip("datasets")
    cli("export", work, "--format", "trl", "--out", tmp_path / "trl.parquet")
    trl = datasets.load_dataset("parquet", data_files=str(tmp_path / "trl.parquet"), split="train")
    row = trl[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert type(row["images"][0]).__module__.startswith("PIL")
    rlaif = datasets.load_dataset("parquet", data_files=first["output"], split="train")
    assert type(rlaif[0]["image"]).__module__.startswith("PIL")


def test_invalid_rows_are_named_and_skipped(tiny_models, tmp_path):
    rows = shapes_rows(5)
    good = rows[0]["image"]["bytes"]
    rows += [{"idx": "broken", "question": "q", "image": {"bytes": b"\x00\x01", "path": ""}, "ds_name": "t"},
             {"idx": "blank", "question": "", "image": {"bytes": good, "path": ""}, "ds_name": "t"},
             {"idx": "r2", "question": "again", "image": {"bytes": good, "path": ""}, "ds_name": "t"}]
    data = write_parquet(tmp_path / "mixed.parquet", rows)
    v = cli("validate", data, check=False)
    assert v.returncode == 1
    for name in ("'broken'", "'blank'", "duplicate idx 'r2'"):
        assert name in v.stdout
    assert "8 rows: 5 valid, 3 invalid" in v.stdout
    cli(*run_args(tiny_models, data, tmp_path / "W"))
    status = json.loads(cli("status", tmp_path / "W", "--json").stdout)
    assert status["records"]["invalid"] == 3
    assert {s["name"]: s["done"] for s in status["stages"]}["sample"] == 5


def test_clean_errors_and_exit_codes(tiny_models, tmp_path):
    assert cli("validate", tmp_path / "nothing.parquet", check=False).returncode == 2
    write_parquet(tmp_path / "ok.parquet", shapes_rows(2))
    assert cli("validate", tmp_path / "ok.parquet", check=False).returncode == 0
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    bad = cli(*run_args(tiny_models, tmp_path / "junk.parquet", tmp_path / "W"), check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    no_model = cli("run", "--dataset", tmp_path / "ok.parquet", "--instruct-model", tmp_path,
                   "--reward-model", tmp_path, "--work-dir", tmp_path / "W", check=False)
    assert no_model.returncode == 2 and "config.json" in no_model.stderr
    assert cli("status", tmp_path / "nowhere", check=False).returncode == 2


def test_top_k_reaches_the_sample_stage_and_a_new_top_k_samples_again(tiny_models, demo_parquet, tmp_path):
    import sqlite3

    work = tmp_path / "K"
    greedy = json.loads(cli(*run_args(tiny_models, demo_parquet, work, "--top-k", "1", "--json")).stdout.splitlines()[-1])
    assert greedy["stages"][0]["computed"] == 12
    texts = sqlite3.connect(work / "engine.db").execute(
        "SELECT rid, COUNT(DISTINCT text) FROM sample GROUP BY rid").fetchall()
    assert len(texts) == 12 and all(n == 1 for _, n in texts)  # one token left to draw: k equal answers
    free = json.loads(cli(*run_args(tiny_models, demo_parquet, work, "--json")).stdout.splitlines()[-1])
    assert free["stages"][0]["computed"] == 12  # top-k 50 is another sampling setting
    spread = sqlite3.connect(work / "engine.db").execute(
        "SELECT MAX(n) FROM (SELECT COUNT(DISTINCT text) AS n FROM sample GROUP BY rid)").fetchone()[0]
    assert spread > 1
    for flag, value, message in (("--top-k", "-1", "--top-k"), ("--top-p", "0", "--top-p"),
                                 ("--repeated-facts", "maybe", "--repeated-facts")):
        bad = cli(*run_args(tiny_models, demo_parquet, tmp_path / "bad", flag, value), check=False)
        assert bad.returncode == 2 and message in bad.stderr, (flag, bad.stderr)


def test_reference_spellings_are_accepted(tiny_models, demo_parquet, tmp_path):
    proc = cli("run", "--pipeline_name", "dpo_reward", "--dataset_path", demo_parquet,
               "--instruct_model_path", tiny_models["instruct"], "--reward_model_path", tiny_models["reward"],
               "--work_dir", tmp_path / "ref", "--sample_k", "3", "--max_new_tokens", "8",
               "--reward_model_name", "RLAIF-V-7B", "--json")
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["samples"] == 36
    assert "config.json" in proc.stderr  # the note about --reward_model_name


def test_markup_in_user_text_is_printed_as_text(tiny_models, tmp_path):
    """Paths, idx values, questions and errors that look like rich markup reach every
    command's output as typed, never as markup (nor a MarkupError)."""
    folder = tmp_path / "data[/bold]"
    rows = shapes_rows(3, prefix="good-[/]")
    rows[0]["question"] = "[red]what[/] is [/] here?"
    rows.append({"idx": "bad[/]", "question": "q", "image": {"bytes": None, "path": "img[/i].png"}, "ds_name": "t"})
    data = write_parquet(folder / "d.parquet", rows)
    work = tmp_path / "runs[/old]"
    outputs = []
    validated = cli("validate", data, check=False)
    assert validated.returncode == 1 and "img[/i].png" in validated.stdout + validated.stderr
    outputs.append(validated)
    outputs.append(cli(*run_args(tiny_models, data, work, "--max-new-tokens", "8")))
    assert "img[/i].png" in outputs[-1].stdout + outputs[-1].stderr
    outputs.append(cli("status", work))
    assert str(work) in outputs[-1].stdout.replace("\n", "")
    out = tmp_path / "out[/x]" / "pairs.parquet"
    outputs.append(cli("export", work, "--out", out))
    assert out.is_file() and str(out) in outputs[-1].stdout.replace("\n", "")
    shot = tmp_path / "shot[/b].svg"
    outputs.append(cli("dashboard", work, "--screenshot", shot))
    assert shot.is_file() and str(shot) in outputs[-1].stdout.replace("\n", "")
    missing = cli("status", tmp_path / "none[/]", check=False)
    assert missing.returncode == 2 and "none[/]" in missing.stderr
    for proc in outputs + [missing]:
        assert "MarkupError" not in proc.stdout + proc.stderr


def test_a_dataset_without_a_usable_row_is_named_as_such(tiny_models, tmp_path):
    import pyarrow as pa

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist(shapes_rows(1)).slice(0, 0), empty)
    bad = write_parquet(tmp_path / "bad.parquet", [
        {"idx": "a", "question": "", "image": {"bytes": b"x", "path": ""}},
        {"idx": "b", "question": "q", "image": {"bytes": b"not an image", "path": ""}}])
    none = cli(*run_args(tiny_models, empty, tmp_path / "A"), check=False)
    assert none.returncode == 2 and "holds no rows" in none.stderr, none.stderr
    invalid = cli(*run_args(tiny_models, bad, tmp_path / "B"), check=False)
    assert invalid.returncode == 2, invalid.stderr
    assert "none of the 2 rows" in invalid.stderr and "dpo-engine validate" in invalid.stderr
    assert "question is empty" in invalid.stdout + invalid.stderr  # the rows' own errors are shown
