"""The family matrix: every image-text-to-text family we support, and the text chat families of
the split and question roles, built tiny with their real config, model, tokenizer and processor
classes (``models/tiny_families.py``), and run through the real code.

Per VLM family: the fast paths (a copied prompt KV cache for sampling, a shared image + prompt
prefix for scoring and checks) give what the plain paths give, and are taken wherever the family
allows them; a record sampled alone gets the answers it gets in a batch of three; replies stop
at, and scores end with, the token the chat template closes an assistant turn with; and both
pipelines run end to end on a few records with batches of several records (no record-by-record
retry).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import shapes_rows, write_parquet
from PIL import Image

from dpo_engine import engine
from dpo_engine.config import RunConfig
from dpo_engine.models.family import PLAIN_NAMES, SLOW_PATHS, checkpoint_path
from dpo_engine.models.hf.chat import TextChatModel
from dpo_engine.models.hf.vlm import ImageTextModel
from dpo_engine.models.tiny_families import (
    CHAT_END_OF_TURN,
    CHAT_FAMILIES,
    VLM_FAMILIES,
    build_tiny_chat_family,
    build_tiny_minicpmv,
    build_tiny_omnilmm,
    build_tiny_vlm,
)

# The image-text families: transformers' own, and OmniLMM and MiniCPM-Llama3-V-2.5 (our code,
# models.omnilmm and models.minicpmv).
IMAGE_FAMILIES = [*VLM_FAMILIES, "omnilmm", "minicpmv"]
END_OF_TURN = {**{name: spec.end_of_turn for name, spec in VLM_FAMILIES.items()}, "omnilmm": "</s>",
               "minicpmv": "<|eot_id|>"}

USES = ("sample", "score", "check")


def images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(40 + 8 * i, 48, 3) * 255).astype("uint8")) for i in range(3)]


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """A tiny checkpoint of a family (built on first use, then shared by the session)."""
    root = tmp_path_factory.mktemp("families")
    built = {}

    def get(name: str, seed: int = 0):
        if (name, seed) not in built:
            if name in ("omnilmm", "minicpmv"):
                make_own = build_tiny_omnilmm if name == "omnilmm" else build_tiny_minicpmv
                built[name, seed] = make_own(root / f"{name}-{seed}", seed=seed)
            else:
                make = build_tiny_vlm if name in VLM_FAMILIES else build_tiny_chat_family
                built[name, seed] = make(name, root / f"{name}-{seed}", seed=seed)
        return built[name, seed]

    return get


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_fast_paths_equal_plain_paths_and_batches_change_nothing(family, family_dir):
    model = ImageTextModel(family_dir(family), device="cpu", dtype="float32")
    assert model.family.model_type == family
    expected = {use: "plain" if family in SLOW_PATHS[use] else "fast" for use in USES}
    img = images()

    answers = ["a red circle .", "blue", "yes , two small squares at the top left"]
    fast = model.score(img[0], "what colour is the circle?", answers)
    for batch_size in (1, 3):
        plain = model.score_full(img[0], "what colour is the circle?", answers, batch_size=batch_size)
        for a, b, text in zip(fast, plain, answers):
            assert len(a) == len(model.answer_ids(text)) and (a <= 0).all()
            np.testing.assert_allclose(a, b, atol=1e-4)

    questions = ["is the circle red?", "is there a square?", "are there two blue stars at the top?"]
    checks = model.yes_no(img[1], questions)
    for batch_size in (1, 3):
        np.testing.assert_allclose(checks, model.yes_no_full(img[1], questions, batch_size=batch_size),
                                   rtol=1e-3, atol=1e-7)

    kw = dict(k=3, max_new_tokens=8, temperature=1.0, seed=4)
    prompts = ["describe the image.", "what do you see?", "how many shapes are in the picture?"]
    together = model.generate(img, prompts, keys=[0, 1, 2], **kw)
    assert together == [model.generate([img[i]], [prompts[i]], keys=[i], **kw)[0] for i in range(3)]
    assert model.taken == expected
    assert set(model.paths) == set(USES)


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_replies_stop_at_the_templates_end_of_turn_and_scores_end_with_it(family, family_dir):
    model = ImageTextModel(family_dir(family), device="cpu", dtype="float32")
    end = model.tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    assert model.end_id == end and end in model.stop_ids
    assert model.answer_ids("a red circle")[-1] == end
    # A word-level tiny vocabulary has "red" itself; SentencePiece (OmniLMM's) has "▁red", the
    # byte-level BPE (Llama 3's, MiniCPM-V's) " yes" as "Ġyes".
    piece, said = {"omnilmm": ("\u2581red", "red"), "minicpmv": ("\u0120yes", "yes")}.get(family, ("red", "red"))
    word = model.tokenizer.convert_tokens_to_ids(piece)
    import torch

    (gens,) = model._decode(torch.tensor([[word, word, end, word, word]]), 1, 1)
    assert gens[0].n_tokens == 3 and gens[0].text == f"{said} {said}"


def test_a_sliding_window_model_samples_on_the_plain_path_beyond_its_window(family_dir, tmp_path):
    """Gemma 3 with a 16-token window: prompts that outgrow it leave the copied-cache path
    (which would need the window's own bookkeeping) and still batch exactly."""
    folder = shutil.copytree(family_dir("gemma3"), tmp_path / "gemma3-window")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["sliding_window"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    model = ImageTextModel(folder, device="cpu", dtype="float32")
    kw = dict(k=2, max_new_tokens=6, temperature=1.0, seed=1)
    prompts = ["describe the image.", "what colours are the shapes in the picture , left to right?"]
    together = model.generate(images()[:2], prompts, keys=[0, 1], **kw)
    assert model.taken["sample"] == "plain"
    assert together == [model.generate(images()[i:i + 1], prompts[i:i + 1], keys=[i], **kw)[0] for i in range(2)]
    assert "plain beyond the 16-token sliding window" in checkpoint_path(folder, "sample")


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_chat_families_reply_the_same_alone_and_in_a_batch(family, family_dir):
    model = TextChatModel(family_dir(family), device="cpu", dtype="float32")
    assert model.family.model_type == family
    end = model.tokenizer.convert_tokens_to_ids(CHAT_END_OF_TURN.get(family, "</s>"))
    assert end in model.stop_ids
    prompts = ["describe the red circle .", "what is in the picture?", "list the shapes"]
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    together = model.chat(prompts, keys=[(i,) for i in range(3)], **kw)
    assert together == [model.chat([p], keys=[(i,)], **kw)[0] for i, p in enumerate(prompts)]


def test_a_llama3_checkpoint_serves_the_split_and_question_roles_with_its_own_template(tiny_models, tmp_path):
    """The released split and question-change models: Llama-3-8B-Instruct's layout and template."""
    from dpo_engine.models.tiny_families import build_tiny_llama3_chat
    from dpo_engine.prompts import fill, template

    path = build_tiny_llama3_chat(tmp_path / "llama3")
    model = TextChatModel(path, device="cpu", dtype="float32")
    tok = model.tokenizer
    assert {tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|end_of_text|>")} <= set(model.stop_ids)
    prompt = model.prompt(fill(template("split", None), question="What is shown?", answer="A red circle."))
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n") and "### Facts:" in prompt
    assert tok(prompt, add_special_tokens=False)["input_ids"].count(tok.bos_token_id) == 1  # the template's BOS only
    replies = model.chat(["describe the red circle ."] * 2, keys=[(0,), (1,)], max_new_tokens=12, temperature=1.0,
                         top_p=0.9, seed=0)
    assert all(0 < r.n_tokens <= 12 for r in replies) and replies[0] != replies[1]
    model.close()
    data = write_parquet(tmp_path / "d.parquet", shapes_rows(3, seed=5))
    summary = engine.run_pipeline(RunConfig(
        pipeline="divide_and_conquer", dataset=str(data), work_dir=str(tmp_path / "dnc"), sample_k=3,
        max_new_tokens=8, chat_max_new_tokens=24, device="cpu", dtype="float32",
        models={"instruct": str(tiny_models["instruct"]), "labeler": str(tiny_models["reward"]),
                "split": str(path), "question": str(path)}))
    assert summary.records["valid"] == 3
    for report in summary.reports:
        assert report.failed == 0, (report.name, report.errors)


def test_omnilmm_loads_in_its_published_layout_sees_the_image_and_refuses_pickled_weights(family_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from dpo_engine.models.omnilmm import ADDED_TOKENS

    folder = family_dir("omnilmm")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "omnilmm" and "auto_map" not in config
    assert config["architectures"] == ["OmniLMMForCausalLM"] and "image_token_id" not in config
    # Its tokenizer as Mistral's ships: a SentencePiece model and a config, no tokenizer.json.
    assert (folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").exists()
    names = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(names.values())) > 1  # shards + index
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
                 "lm_head.weight", "model.vision_tower.patch_embed.proj.weight", "model.vision_tower.cls_token",
                 "model.vision_tower.pos_embed", "model.vision_tower.norm.weight", "model.resampler.query",
                 "model.resampler.pos_embed", "model.resampler.kv_proj.weight", "model.resampler.attn.in_proj_weight",
                 "model.resampler.ln_q.weight", "model.resampler.ln_kv.weight", "model.resampler.ln_post.weight",
                 "model.resampler.proj"):
        assert name in names, name
    depth = config["mm_vision_tower_kwargs"]["depth"]  # the last block is skipped: no weights
    assert not any(n.startswith(f"model.vision_tower.blocks.{depth - 1}.") for n in names)
    model = ImageTextModel(folder, device="cpu", dtype="float32")
    ids = [model.tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ADDED_TOKENS)))  # added in the reference's order
    prompt = model.prompt("what is here?")
    assert prompt.startswith("<|system|>\nYou are an artificial intelligence assistant") and \
        prompt.endswith("<im_end>\nwhat is here?</s>\n<|assistant|>\n")
    assert prompt.count("<im_patch>") == config["num_query"]
    one, other = images()[:2]
    answers = ["a red circle .", "two blue squares"]
    here = model.score(one, "what is here?", answers)
    swapped = model.score(other, "what is here?", answers)
    assert all(not np.allclose(a, b) for a, b in zip(here, swapped))  # the image reaches the text model
    # One pytorch_model.bin, read by torch's weights-only loader: the same numbers.
    single = shutil.copytree(folder, tmp_path / "bin")
    weights = {}
    for shard in set(names.values()):
        weights.update(load_file(single / shard))
        (single / shard).unlink()
    (single / "model.safetensors.index.json").unlink()
    torch.save(weights, single / "pytorch_model.bin")
    from_bin = ImageTextModel(single, device="cpu", dtype="float32").score(one, "what is here?", answers)
    for a, b in zip(here, from_bin):
        np.testing.assert_array_equal(a, b)
    torch.save({**weights, "extra": _Payload()}, single / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled objects besides tensors; refused"):
        ImageTextModel(single, device="cpu", dtype="float32")


class _Payload:
    """Unpickling it would call print: torch's weights-only loader must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def three_records(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("family-data") / "d.parquet", shapes_rows(3, seed=7))


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_both_pipelines_run_end_to_end_in_batches(family, family_dir, three_records, tmp_path):
    common = dict(dataset=str(three_records), sample_k=3, max_new_tokens=8, batch_size=3, device="cpu",
                  dtype="float32")
    runs = {
        "dpo_reward": {"instruct": family_dir(family), "reward": family_dir(family, seed=1)},
        "divide_and_conquer": {"instruct": family_dir(family), "labeler": family_dir(family, seed=1),
                               "split": family_dir("llama"), "question": family_dir("qwen3")},
    }
    for pipeline, models in runs.items():
        summary = engine.run_pipeline(RunConfig(pipeline=pipeline, work_dir=str(tmp_path / pipeline),
                                                models={k: str(v) for k, v in models.items()}, **common))
        assert summary.records["valid"] == 3
        for report in summary.reports:
            assert report.failed == 0, (pipeline, report.name, report.errors)
            assert report.split_batches == 0, (pipeline, report.name)
        assert summary.samples == 9
        paths = {s.name: s.path for s in engine.read_status(tmp_path / pipeline).stages if s.path}
        uses = {"sample": "sample", "logps_instruct": "score", "logps_reward": "score", "check": "check"}
        assert set(paths) == set(uses) & {s.name for s in summary.reports}
        for stage, path in paths.items():
            assert path.startswith(PLAIN_NAMES[uses[stage]]) == (family in SLOW_PATHS[uses[stage]]), path


def test_when_every_record_fails_in_the_first_stage_the_cli_shows_their_errors(family_dir, three_records, tmp_path):
    from conftest import cli

    folder = shutil.copytree(family_dir("llava"), tmp_path / "broken")
    (folder / "chat_template.jinja").write_text("{{ raise_exception('this template takes no images') }}")
    proc = cli("run", "--dataset", three_records, "--instruct-model", folder, "--reward-model", folder,
               "--work-dir", tmp_path / "w", "--sample-k", "2", "--max-new-tokens", "4", check=False)
    assert proc.returncode == 1
    assert "every record failed in sample (3 records)" in proc.stderr
    assert "3 x " in proc.stderr and "this template takes no images" in proc.stderr
    assert "holds no results yet" not in proc.stderr
