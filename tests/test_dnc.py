"""divide_and_conquer: prompt handling, the score/pair/filter rules, the labeler's yes/no
check, the text chat adapter, and whole runs (with kill -9 in split and in check)."""

import io
import json
import random
import sqlite3

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import cli, dnc_args
from dpo_engine.demo import world as w
from dpo_engine.config import RunConfig
from dpo_engine.errors import ConfigError
from dpo_engine.prompts import YES_NO_SUFFIX, cut_words, fill, parse_list, template
from dpo_engine.store import Store
from dpo_engine.stage import Batch, FactRow, JudgmentRow, SampleRow, ScoreRow
from dpo_engine.stages.filters import RATIOS, best_ratio
from dpo_engine.stages.pair import ScorePairStage
from dpo_engine.stages.score import ScoreStage
from test_resume import run_and_kill, summary


def config(**kw) -> RunConfig:
    return RunConfig(pipeline="divide_and_conquer", dataset="d", work_dir="w", models={"instruct": "i"}, **kw)


# ------------------------------------------------------------------------------ prompts
def test_cut_words_keeps_layout_up_to_the_nth_word():
    text = "one two\n\nthree   four\nfive"
    assert cut_words(text, 3) == "one two\n\nthree"
    assert cut_words(text, 5) == text and cut_words(text, 50) == text
    long = " ".join(f"w{i}" for i in range(400))
    assert cut_words(long, 300).split() == long.split()[:300]


def test_parse_list_reads_bullets_and_says_why_when_there_are_none():
    reply = "### Facts:\n- there is a red circle.\n\n-   two spaces kept out\n* a star bullet\nHere you go"
    assert parse_list(reply) == (["there is a red circle.", "two spaces kept out", "a star bullet"], None)
    assert parse_list("") == ([], "empty reply")
    assert parse_list("### Facts:\n\n") == ([], "no items under the header")
    assert parse_list("I cannot see any facts here.") == ([], "no '- ' lines")
    assert parse_list("-\n- \n")[0] == []


def test_templates_fill_only_their_placeholders_and_refuse_files_without_them(tmp_path):
    split = template("split", None)
    filled = fill(split, question="What {is} here?", answer="a {red} circle")
    assert "What {is} here?" in filled and "a {red} circle" in filled and "{answer}" not in filled
    bad = tmp_path / "bad.txt"
    bad.write_text("List the facts of {answer}.")
    with pytest.raises(ConfigError, match=r"\{question\}"):
        template("split", bad)


# ------------------------------------------------------------------------------ score, pair, filter
def batch_of(rid, n_facts, verdicts):
    b = Batch(rids=[rid])
    b.samples[rid] = [SampleRow(rid, j, f"answer {j}", 3, 2, j) for j in range(len(n_facts))]
    b.facts[rid] = [FactRow(rid, j, o, f"fact {o}") for j, n in enumerate(n_facts) for o in range(n)]
    b.judgments[rid] = [JudgmentRow(rid, j, o, 0.9 if ok else 0.1, 0.1 if ok else 0.9)
                        for j, vs in enumerate(verdicts) for o, ok in enumerate(vs)]
    return b


def test_score_is_minus_the_false_claims_and_mismatched_answers_are_discarded():
    out = ScoreStage().process(batch_of(5, [2, 3, 0, 2], [[True, True], [True, False, False], [], [True]]), None,
                               config())
    assert [(s.inner_idx, s.score, s.n_claims) for s in out.scores] == [(0, 0, 2), (1, -2, 3), (2, 0, 0)]
    assert [(n.inner_idx, n.stage) for n in out.notes] == [(3, "score")]


def test_a_fact_stated_again_counts_as_false_unless_repeats_are_judged():
    b = Batch(rids=[7])
    texts = [["there is a red circle.", "There is a  red circle", "there is a blue square."],
             ["there is a red circle.", "there is a blue square."]]
    b.samples[7] = [SampleRow(7, j, f"answer {j}", 3, 2, j) for j in range(2)]
    b.facts[7] = [FactRow(7, j, o, t) for j, ts in enumerate(texts) for o, t in enumerate(ts)]
    b.judgments[7] = [JudgmentRow(7, j, o, 0.9, 0.1) for j, ts in enumerate(texts) for o in range(len(ts))]
    ours = ScoreStage().process(b, None, config())
    assert [(s.inner_idx, s.score, s.n_claims) for s in ours.scores] == [(0, -1, 3), (1, 0, 2)]
    reference = ScoreStage().process(b, None, config(repeated_facts="judged"))
    assert [(s.inner_idx, s.score) for s in reference.scores] == [(0, 0), (1, 0)]
    assert ScoreStage().settings(config()) != ScoreStage().settings(config(repeated_facts="judged"))
    under_compat = ScoreStage().process(b, None, config(compat="reference"))
    assert [(s.inner_idx, s.score) for s in under_compat.scores] == [(0, 0), (1, 0)]
    assert ScoreStage().settings(config(compat="reference")) == {}  # the hash every earlier run had
    ours_under_compat = ScoreStage().process(b, None, config(compat="reference", repeated_facts="false"))
    assert [s.score for s in ours_under_compat.scores] == [-1, 0]


def test_pairs_need_the_score_gap_and_at_most_two_are_drawn_with_the_seed():
    stage = ScorePairStage()
    b = Batch(rids=[1, 2])
    b.scores[1] = [ScoreRow(1, j, s, 3) for j, s in enumerate([0, -1, 0, -2, -1])]
    b.scores[2] = [ScoreRow(2, j, s, 1) for j, s in enumerate([0, 0, 0])]
    out = stage.process(b, None, config())
    assert [p.rid for p in out.pairs] == [1, 1]
    scores = dict(enumerate([0, -1, 0, -2, -1]))
    for p in out.pairs:
        assert scores[p.chosen] - scores[p.rejected] >= 1
    assert out.pairs == stage.process(b, None, config()).pairs  # seeded: the same draw
    draws = {tuple(stage.process(b, None, config(seed=s)).pairs) for s in range(20)}
    assert len(draws) > 1
    everything = stage.process(b, None, config(pairs_per_question=100)).pairs
    assert len(everything) == 8  # every pair 1 or more apart in [0, -1, 0, -2, -1]
    assert len(stage.process(b, None, config(pairs_per_question=100, score_gap=2)).pairs) == 2


def test_length_ratio_search_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    cw = rng.integers(1, 60, 300).astype(float)
    rw = rng.integers(1, 60, 300).astype(float)
    distinct = rng.random(300) > 0.05
    best = None
    for r in [round(x * 0.02, 2) for x in range(50)]:
        kept = [i for i in range(300) if distinct[i] and (rw[i] - cw[i]) / rw[i] <= r]
        if kept:
            mean_r = sum(rw[i] for i in kept) / len(kept)
            gap = abs(sum(cw[i] for i in kept) / len(kept) - mean_r) / mean_r
            if best is None or gap < best[0]:
                best = (gap, r, kept)
    r, keep = best_ratio(cw, rw, distinct)
    assert r == best[1] and list(np.nonzero(keep)[0]) == best[2]
    assert len(RATIOS) == 50 and RATIOS[-1] == 0.98


# ------------------------------------------------------------------------------ models
def test_labeler_check_with_a_shared_image_prefix_matches_one_question_at_a_time(tiny_models):
    from dpo_engine.models.hf.vlm import ImageTextModel

    model = ImageTextModel(tiny_models["instruct"], device="cpu")
    yes, no = model.yes_no_ids()
    assert yes and no and not set(yes) & set(no)
    rng = random.Random(4)
    scene = w.random_scene(rng)
    image = Image.open(io.BytesIO(w.render(scene, rng))).convert("RGB")
    questions = [f"is there a {c} {s} at the top left?{YES_NO_SUFFIX}" for c in w.COLOURS for s in w.SHAPES][:11]
    questions.append("is there a circle?" + YES_NO_SUFFIX)
    fast = model.yes_no(image, questions, chunk=5)
    slow = model.yes_no_full(image, questions, batch_size=1)
    assert fast.shape == (12, 2) and np.all(fast.sum(1) <= 1 + 1e-6)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert model.yes_no(image, []).shape == (0, 2)


def test_text_chat_replies_do_not_depend_on_their_batch(world_models):
    from dpo_engine.models.hf.chat import TextChatModel

    model = TextChatModel(world_models["split"], device="cpu")
    prompts = [fill(template("split", None), question=w.DESCRIBE, answer=a) for a in (
        "there is a red circle at the top left.", "i see a blue square.", "there is a green star at the bottom right.")]
    keys = [(0, 0, 1), (0, 1, 1), (7, 3, 1)]
    kw = dict(max_new_tokens=40, temperature=0.2, top_p=0.9, seed=0)
    together = model.chat(prompts, keys=keys, **kw)
    alone = [model.chat([p], keys=[k], **kw)[0] for p, k in zip(prompts, keys)]
    assert [g.text for g in together] == [g.text for g in alone]
    assert all(g.text.startswith("### facts") for g in together)
    assert model.chat(prompts[:1], keys=[(1, 1, 1)], **kw)[0].text  # another stream, still a reply


# ------------------------------------------------------------------------------ whole runs
def test_flags_comma_form_and_errors(world_models, demo_parquet, tmp_path):
    m = world_models
    comma = ["run", "--pipeline_name", "divide_and_conquer", "--dataset", demo_parquet, "--instruct_model_path",
             m["instruct"], "--reward_model_path", f"{m['labeler']},{m['question']},{m['split']}",
             "--work_dir", tmp_path / "A", "--sample-k", "2", "--max-new-tokens", "8", "--json"]
    out = summary(cli(*comma))
    assert [s["name"] for s in out["stages"]] == ["sample", "split", "questions", "check", "score", "pair", "filter"]
    settings = json.loads(sqlite3.connect(tmp_path / "A/engine.db").execute("SELECT settings FROM run").fetchone()[0])
    assert (settings["models"]["labeler"], settings["models"]["question"], settings["models"]["split"]) == \
        (str(m["labeler"]), str(m["question"]), str(m["split"]))

    two = cli(*[str(a).replace(f",{m['split']}", "") for a in comma], check=False)
    assert two.returncode == 2 and "LABELER,CHANGEQ,SPLIT" in two.stderr
    missing = cli("run", "--pipeline", "divide_and_conquer", "--dataset", demo_parquet, "--instruct-model",
                  m["instruct"], "--labeler-model", m["labeler"], "--work-dir", tmp_path / "B", check=False)
    assert missing.returncode == 2 and "--split-model" in missing.stderr and "--question-model" in missing.stderr
    swapped = cli(*dnc_args({**m, "labeler": m["split"]}, demo_parquet, tmp_path / "C"), check=False)
    assert swapped.returncode != 0 and "image-text-to-text" in swapped.stderr


def test_prompt_file_changes_recompute_from_its_stage(world_models, demo_parquet, tmp_path):
    work = tmp_path / "W"
    base = dnc_args(world_models, demo_parquet, work, "--sample-k", "2", "--json")
    cli(*base)
    prompt = tmp_path / "question.txt"
    prompt.write_text(template("questions", None).replace("general question", "yes/no question"))
    again = summary(cli(*base, "--question-prompt", prompt))
    computed = {s["name"]: s["computed"] for s in again["stages"]}
    assert computed["sample"] == computed["split"] == 0
    assert computed["questions"] == computed["check"] == computed["score"] == 12


def test_unparseable_splits_are_counted_not_lost(world_models, demo_parquet, tmp_path):
    from dpo_engine.demo.trainers import _text_model
    from dpo_engine.models.tiny import CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    babble = tmp_path / "babble"
    _text_model(tok, seed=11).save_pretrained(babble)
    tok.save_pretrained(babble)
    work = tmp_path / "W"
    out = summary(cli(*dnc_args({**world_models, "split": babble}, demo_parquet, work, "--json")))
    assert all(s["failed"] == 0 for s in out["stages"])
    status = json.loads(cli("status", work, "--json").stdout)
    split = {s["name"]: s for s in status["stages"]}["split"]
    assert split["done"] == 12
    con = sqlite3.connect(work / "engine.db")
    noted = con.execute("SELECT COUNT(*) FROM note WHERE stage = 'split'").fetchone()[0]
    no_facts = con.execute("SELECT COUNT(*) FROM sample s WHERE NOT EXISTS (SELECT 1 FROM fact f"
                           " WHERE f.rid = s.rid AND f.inner_idx = s.inner_idx)").fetchone()[0]
    assert noted == no_facts == sum(split["notes"].values()) > 0
    table = cli("status", work).stdout
    assert "split:" in table and "answers with" in table


def test_kill_9_in_split_and_check_then_resume_gives_the_same_dataset(world_models, demo_parquet, tmp_path):
    extra = ("--batch-size", "1")
    a = summary(cli(*dnc_args(world_models, demo_parquet, tmp_path / "A", *extra, "--json")))
    b_args = dnc_args(world_models, demo_parquet, tmp_path / "B", *extra)
    db = tmp_path / "B" / "engine.db"
    killed_split = run_and_kill(b_args, db, "split", 2, 12)
    killed_check = run_and_kill(b_args, db, "check", 2, 12)
    assert 2 <= killed_split < 12 and 2 <= killed_check < 12
    b = summary(cli(*b_args, "--json"))
    stages = {s["name"]: s for s in b["stages"]}
    assert stages["split"]["computed"] == 0 and stages["split"]["reused"] == 12
    assert 0 < stages["check"]["computed"] < 12
    out_a, out_b = tmp_path / "A/dataset/dpo_dataset.parquet", tmp_path / "B/dataset/dpo_dataset.parquet"
    assert out_a.read_bytes() == out_b.read_bytes()
    assert a["pairs"] == b["pairs"]
    con = sqlite3.connect(db)
    for table in ("fact", "check_question", "judgment", "score"):
        assert Store(db, create=False).duplicate_keys(table) == 0
    con_a = sqlite3.connect(tmp_path / "A/engine.db")
    for table in ("fact", "check_question", "judgment", "score"):
        rows = f"SELECT * FROM {table} ORDER BY 1, 2, 3"
        assert con.execute(rows).fetchall() == con_a.execute(rows).fetchall()
    assert con.execute("SELECT COUNT(*) FROM judgment").fetchone()[0] > 0
    # The output carries every pair's claims with their judgments and scores.
    table = pq.read_table(out_b).to_pylist()
    for row in table:
        for side in ("chosen", "rejected"):
            claims = row[f"{side}_claims"]
            assert row[f"{side}_score"] == -sum(not c["true"] for c in claims)
            assert all(c["question"].endswith(YES_NO_SUFFIX) for c in claims)
        assert row["chosen_score"] > row["rejected_score"]
    trl = tmp_path / "trl.parquet"
    cli("export", tmp_path / "B", "--format", "trl", "--out", trl)
    assert pq.read_table(trl).num_rows == len(table)
