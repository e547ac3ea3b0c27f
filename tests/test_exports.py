"""Export formats (one module each) and pipeline-supplied column sets, on a store filled by hand."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shapes_rows, write_parquet
from dpo_engine.dataset import open_dataset
from dpo_engine.errors import DpoEngineError
from dpo_engine.exports import CHUNK_ROWS, ColumnSet, export, formats, register_format
from dpo_engine.exports._arrow import value_feature
from dpo_engine.exports.claims import CLAIMS
from dpo_engine.ingest import ingest
from dpo_engine.stage import (FactRow, JudgmentRow, LogprobRow, Outputs, PairRow, QuestionRow,
                              SampleRow, ScoreRow)
from dpo_engine.store import Store

CLAIM_COLUMNS = ["chosen_score", "rejected_score", "chosen_claims", "rejected_claims"]
RLAIF_COLUMNS = ["idx", "question", "chosen", "rejected", "image", "logps"]
TRL_COLUMNS = ["images", "prompt", "chosen", "rejected", "idx"]


def make_store(tmp_path, n_records: int = 6, pairs_per: int = 2,
               pipeline: str = "divide_and_conquer") -> Store:
    """Records with carried columns (one named like a claims column), four answers each, the
    instruct log-probs of most, claims of some, and every pair kept in reverse order."""
    images = shapes_rows(2)
    rows = [{**images[i % 2], "idx": f"r{i}", "n": i, "ds_name": "t", "chosen_score": "carried"}
            for i in range(n_records)]
    store = Store.in_work_dir(tmp_path / "work")
    ingest(store, open_dataset(write_parquet(tmp_path / "d.parquet", rows)))
    store.save_run(pipeline, "d.parquet", {}, {}, {})
    out = Outputs()
    for rid in range(n_records):
        for j in range(4):
            out.samples.append(SampleRow(rid, j, f"answer {rid} {j} " + "word " * j, 3, 2 + j, rid * 4 + j))
            if j != 3:
                per = np.array([-0.5, -1.0 - j], "<f4").tobytes()
                out.logprobs.append(LogprobRow(rid, j, "instruct", 2, -1.5 - j, -0.75, per))
            for k in range(j):  # answer j has j claims; the last one is unchecked
                out.facts.append(FactRow(rid, j, k, f"fact {k} of {rid}.{j}"))
                if k < j - 1:
                    out.questions.append(QuestionRow(rid, j, k, f"Is {k}? Answer yes or no."))
                    out.judgments.append(JudgmentRow(rid, j, k, 0.8 if k % 2 == 0 else 0.1, 0.2))
            out.scores.append(ScoreRow(rid, j, -(j // 2), j))
        for o in range(pairs_per):
            out.pairs.append(PairRow(rid, o, o, 3 - o))
    store.commit("all", "h", list(range(n_records)), out,
                 writes=["samples", "logprob:instruct", "pairs", "facts", "questions", "judgments", "scores"],
                 downstream=[], seconds=0.0)
    kept = [(rid, o) for rid in range(n_records) for o in range(pairs_per)][::-1]
    store.commit_run_stage("filter", "f", ("all", "h"), kept, 0.0)
    return store


def features_of(path) -> dict:
    meta = pq.read_schema(path).metadata[b"huggingface"]
    return json.loads(meta)["info"]["features"]


def test_formats_are_found_one_per_module():
    found = formats()
    assert {"rlaif-v", "rlaif-v-logps", "trl", "llama-factory", "ms-swift"} <= set(found)
    assert all(name == fmt.name for name, fmt in found.items())
    assert "claims" not in found  # a column set, not a format


def test_rlaif_v_round_trips_with_carried_columns(tmp_path):
    store = make_store(tmp_path)
    report = export(store, tmp_path / "out.parquet")
    table = pq.read_table(report.path)
    assert table.column_names == RLAIF_COLUMNS + ["ds_name", "n", "chosen_score"]
    assert list(features_of(report.path)) == table.column_names
    assert features_of(report.path)["image"] == {"_type": "Image"}
    assert (report.pairs, report.records_with_pairs) == (12, 6)
    rows = table.to_pylist()
    first = rows[0]  # kept in reverse: record 5's second pair, answers 1 and 2
    assert first["idx"] == "r5" and first["chosen"].startswith("answer 5 1") and first["n"] == 5
    assert first["rejected"].startswith("answer 5 2") and first["chosen_score"] == "carried"
    assert first["image"]["bytes"] and first["image"]["path"] == "r1.png"
    logps = json.loads(first["logps"])
    assert len(logps) == 6 and logps[0] == -2.5 and logps[2] == [-0.5, -2.0]
    assert rows[1]["logps"] is None  # answer 3 has no log-probs


def test_trl_round_trips_as_messages(tmp_path):
    store = make_store(tmp_path)
    report = export(store, tmp_path / "trl.parquet", "trl")
    table = pq.read_table(report.path)
    assert table.column_names == TRL_COLUMNS
    assert list(features_of(report.path)) == TRL_COLUMNS
    row = table.to_pylist()[-1]
    assert row["idx"] == "r0" and len(row["images"]) == 1 and row["images"][0]["bytes"]
    assert row["prompt"] == [{"role": "user", "content": "Describe the image."}]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"].startswith("answer 0 0")


@pytest.mark.parametrize("fmt, base", [("rlaif-v", RLAIF_COLUMNS + ["ds_name", "n"]), ("trl", TRL_COLUMNS)])
def test_claims_columns_appear_only_when_passed(tmp_path, fmt, base):
    store = make_store(tmp_path)  # a divide_and_conquer run: export does not look at that
    plain = pq.read_table(export(store, tmp_path / "plain.parquet", fmt).path)
    assert not set(CLAIM_COLUMNS[1:]) & set(plain.column_names)
    path = export(store, tmp_path / "claims.parquet", fmt, columns=(CLAIMS,)).path
    table = pq.read_table(path)
    assert table.column_names == base + CLAIM_COLUMNS  # the carried chosen_score gives way
    assert list(features_of(path))[-4:] == CLAIM_COLUMNS
    assert table.schema.field("chosen_score").type == pa.int64()
    row = table.to_pylist()[0]  # record 5: chosen answer 1, rejected answer 2
    assert (row["chosen_score"], row["rejected_score"]) == (0, -1)
    assert row["chosen_claims"] == [{"fact": "fact 0 of 5.1", "question": None, "p_yes": None,
                                     "p_no": None, "true": None}]
    assert [c["true"] for c in row["rejected_claims"]] == [True, None]
    assert row["rejected_claims"][0]["question"] == "Is 0? Answer yes or no."


def test_many_pairs_are_written_in_chunks(tmp_path):
    store = make_store(tmp_path, n_records=70, pairs_per=4)
    path = export(store, tmp_path / "out.parquet", "rlaif-v", columns=(CLAIMS,)).path
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 280 and meta.num_row_groups == 2
    assert meta.row_group(0).num_rows == CHUNK_ROWS


def test_unknown_format_says_which_exist(tmp_path):
    store = make_store(tmp_path, n_records=1)
    with pytest.raises(DpoEngineError) as err:
        export(store, tmp_path / "out.parquet", "nope")
    assert err.value.message == "unknown export format 'nope'"
    assert err.value.hint.startswith("use one of llama-factory, ms-swift, rlaif-v, rlaif-v-logps, trl")
    assert not (tmp_path / "out.parquet").exists()


@dataclass(frozen=True)
class QuestionOnly:
    """A format defined outside the package: idx, question and the chosen answer's length."""

    name: str = "test-question-only"

    def fields(self, idx_type, extra_types):
        return [("id", idx_type), ("question", pa.string()), ("chosen_words", pa.int64())]

    def features(self, idx_type, extra_types):
        return {n: value_feature(t) for n, t in self.fields(idx_type, extra_types)}

    def append(self, columns, row, extra_types):
        columns["id"].append(json.loads(row["idx_value"]))
        columns["question"].append(row["question"])
        columns["chosen_words"].append(row["chosen_words"])


def test_a_registered_format_and_a_column_set_need_no_other_module(tmp_path):
    fmt = register_format(QuestionOnly(), replace=True)
    assert formats()[fmt.name] is fmt
    with pytest.raises(ValueError, match="already exists"):
        register_format(QuestionOnly())
    rid_column = ColumnSet("rid", (("rid", pa.int64()),), {"rid": value_feature(pa.int64())},
                           lambda store, row: {"rid": row["rid"]})
    store = make_store(tmp_path, n_records=2, pipeline="dpo_reward")
    path = export(store, tmp_path / "q.parquet", fmt.name, columns=(rid_column, CLAIMS)).path
    table = pq.read_table(path)
    assert table.column_names == ["id", "question", "chosen_words", "rid", *CLAIM_COLUMNS]
    assert table.column("rid").to_pylist() == [1, 1, 0, 0]
    assert table.column("chosen_words").to_pylist() == [3, 2, 3, 2]


def test_a_column_given_twice_is_refused(tmp_path):
    store = make_store(tmp_path, n_records=1)
    twice = ColumnSet("idx", (("idx", pa.string()),), {"idx": value_feature(pa.string())},
                      lambda store, row: {"idx": "x"})
    with pytest.raises(ValueError, match="given twice"):
        export(store, tmp_path / "out.parquet", "trl", columns=(twice,))
    with pytest.raises(ValueError, match="given twice"):
        export(store, tmp_path / "out.parquet", "trl", columns=(CLAIMS, CLAIMS))


def test_the_output_appears_whole_through_a_private_temporary_file(tmp_path):
    """Exports write a uniquely named file next to the output and rename it: a link planted
    at the old fixed name is left alone, two exports to one path both succeed, and a failed
    export leaves nothing behind."""
    import os
    import subprocess
    import sys

    store = make_store(tmp_path, n_records=40, pairs_per=4)
    out = tmp_path / "out" / "pairs.parquet"
    out.parent.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out.parent / "pairs.parquet.tmp").symlink_to(victim)
    export(store, out, "rlaif-v")
    assert victim.read_text() == "keep me" and pq.read_table(out).num_rows == 160
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    code = ("import sys; from dpo_engine import engine;"
            "[engine.export_run(sys.argv[1], sys.argv[2], 'trl') for _ in range(3)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "work"), str(out)],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    assert pq.read_table(out).num_rows == 160
    assert sorted(os.listdir(out.parent)) == ["pairs.parquet", "pairs.parquet.tmp"]  # no leftovers

    with pytest.raises(DpoEngineError, match="is a folder"):
        export(store, out.parent, "rlaif-v")
    with pytest.raises(DpoEngineError, match="unknown export format"):
        export(store, out, "nope")
    assert sorted(os.listdir(out.parent)) == ["pairs.parquet", "pairs.parquet.tmp"]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_llama_factory_and_ms_swift_load_through_datasets_with_images(tmp_path):
    import datasets
    from PIL import Image

    store = make_store(tmp_path)
    lf = datasets.load_dataset("parquet", data_files=str(export(store, tmp_path / "lf.parquet", "llama-factory").path),
                               split="train")
    assert lf.column_names == ["conversations", "chosen", "rejected", "images", "idx"]
    row = lf[0]  # record 5: chosen answer 1, rejected answer 2
    assert row["conversations"] == [{"from": "human", "value": "<image>Describe the image."}]
    assert row["chosen"]["from"] == "gpt" and row["chosen"]["value"].startswith("answer 5 1")
    assert row["rejected"]["value"].startswith("answer 5 2")
    assert isinstance(row["images"][0], Image.Image) and row["idx"] == "r5"
    swift = datasets.load_dataset("parquet", data_files=str(export(store, tmp_path / "sw.parquet", "ms-swift").path),
                                  split="train")
    row = swift[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][0]["content"] == "<image>Describe the image."
    assert row["messages"][1]["content"].startswith("answer 5 1") and row["rejected_response"].startswith("answer 5 2")
    assert isinstance(row["images"][0], Image.Image) and len(swift) == 12


def test_rlaif_v_logps_holds_the_six_values_or_refuses_a_pair_without_them(tmp_path):
    store = make_store(tmp_path)  # pairs use answers 0-3; answer 3 has no instruct log-probs
    with pytest.raises(DpoEngineError, match="without the instruct model's log-probs"):
        export(store, tmp_path / "out.parquet", "rlaif-v-logps")
    assert not list(tmp_path.glob("*out.parquet*"))  # nothing left behind
    store.commit_run_stage("filter", "f2", ("all", "h"), [(rid, 1) for rid in range(6)], 0.0)  # answers 1, 2
    rows = pq.read_table(export(store, tmp_path / "out.parquet", "rlaif-v-logps").path).to_pylist()
    assert len(rows) == 6 and list(rows[0])[:6] == RLAIF_COLUMNS
    chosen_logp, chosen_avg, chosen_tokens, rejected_logp, rejected_avg, rejected_tokens = json.loads(rows[0]["logps"])
    assert (chosen_logp, chosen_avg, chosen_tokens) == (-2.5, -0.75, [-0.5, -2.0])
    assert (rejected_logp, rejected_avg, rejected_tokens) == (-3.5, -0.75, [-0.5, -3.0])
