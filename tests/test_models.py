"""The transformers adapter on real tiny checkpoints."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dpo_engine.models import ChatModel, Generation, VisionLanguageModel, open_model, vocabulary_fingerprint
from dpo_engine.models.family import ModelConfigError, detect_family
from dpo_engine.models.hf.vlm import ImageTextModel


@pytest.fixture(scope="module")
def model(tiny_models):
    return ImageTextModel(tiny_models["instruct"], device="cpu")


def images():
    return [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]


def test_family_comes_from_config_not_name(tiny_models, tmp_path):
    fam = detect_family(tiny_models["instruct"])
    assert (fam.model_type, fam.kind) == ("llava", "image-text-to-text")
    misleading = tmp_path / "llava-1.5-7b"
    misleading.mkdir()
    (misleading / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert detect_family(misleading).kind == "causal-lm"
    (misleading / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))
    with pytest.raises(ModelConfigError):
        detect_family(misleading)
    with pytest.raises(ModelConfigError):
        detect_family(tmp_path)


def test_sampling_is_independent_of_batch_composition(model):
    qs = ["describe the image.", "what do you see?", "how many shapes?"]
    kw = dict(k=3, max_new_tokens=16, temperature=0.7, seed=5)
    together = model.generate(images(), qs, keys=[10, 11, 12], **kw)
    alone = model.generate(images()[1:2], qs[1:2], keys=[11], **kw)
    assert together[1] == alone[0]
    other_seed = model.generate(images()[1:2], qs[1:2], keys=[11], **{**kw, "seed": 6})
    assert other_seed[0] != alone[0]
    assert all(1 <= g.n_tokens <= 16 for gens in together for g in gens)


def test_top_k_and_top_p_keep_the_tokens_transformers_keeps():
    import torch
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    from dpo_engine.models.sampling import SeededSampler

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 60, generator=gen) * 3
    for top_k, top_p in ((5, 1.0), (0, 0.6), (12, 0.8), (50, 1.0)):
        expected = scores / 0.7
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1.0:
            expected = TopPLogitsWarper(top_p)(None, expected)
        sampler = SeededSampler(torch.full((4, 1), 0.5), 0.7, top_p, prompt_len=0, top_k=top_k)
        ours = sampler.probs(scores)
        assert torch.equal(ours > 0, torch.isfinite(expected)), (top_k, top_p)
        assert torch.allclose(ours / ours.sum(-1, keepdim=True), torch.softmax(expected, -1), atol=1e-6)
        picked = sampler(torch.zeros((4, 0), dtype=torch.long), scores).argmax(-1)
        assert bool(torch.isfinite(expected).gather(1, picked[:, None]).all())


def test_sampling_with_top_k_stays_seeded_and_batch_independent(model):
    qs = ["describe the image.", "what do you see?"]
    kw = dict(k=4, max_new_tokens=16, temperature=1.0, seed=2)
    free = model.generate(images()[:2], qs, keys=[3, 4], **kw)
    narrow = model.generate(images()[:2], qs, keys=[3, 4], top_k=2, **kw)
    assert narrow[1] == model.generate(images()[1:2], qs[1:], keys=[4], top_k=2, **kw)[0]
    assert narrow != free  # random weights spread their mass: two tokens of 190 is a cut


def test_prefix_cache_scoring_matches_full_sequences(model):
    answers = ["a red circle .", "two blue squares at the top left", "no"]
    fast = model.score(images()[0], "describe the image.", answers)
    slow = model.score_full(images()[0], "describe the image.", answers, batch_size=1)
    assert [len(x) for x in fast] == [len(model.answer_ids(a)) for a in answers]
    for a, b in zip(fast, slow):
        assert np.allclose(a, b, atol=1e-4)
        assert (a <= 0).all()


def test_open_model_gives_a_vision_language_model(tiny_models, model):
    opened = open_model("image-text", tiny_models["instruct"], device="cpu")
    assert isinstance(opened, ImageTextModel) and isinstance(opened, VisionLanguageModel)
    assert isinstance(model, VisionLanguageModel) and not isinstance(model, ChatModel)
    assert opened.model_seconds == 0.0
    kw = dict(keys=[7], k=2, max_new_tokens=6, temperature=0.7, seed=2)
    (gens,) = opened.generate(images()[:1], ["describe the image."], **kw)
    assert all(isinstance(g, Generation) for g in gens)
    assert gens == model.generate(images()[:1], ["describe the image."], **kw)[0]
    assert opened.yes_no(images()[0], ["is it red?"]).shape == (1, 2)
    opened.close()


def test_open_model_rejects_unknown_kinds_backends_and_checkpoints(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="unknown model kind 'video'.*image-text, chat"):
        open_model("video", tiny_models["instruct"])
    with pytest.raises(ValueError, match="unknown model backend 'onnx'.*hf"):
        open_model("image-text", tiny_models["instruct"], backend="onnx")
    with pytest.raises(ModelConfigError):
        open_model("image-text", tmp_path, device="cpu")  # no config.json
    with pytest.raises(ValueError, match="text-only causal LM"):
        open_model("chat", tiny_models["instruct"], device="cpu")  # an image-text checkpoint


def test_importing_the_models_package_does_not_import_torch():
    code = ("import sys, dpo_engine.models, dpo_engine.models.base, dpo_engine.models.family, "
            "dpo_engine.models.hf; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_vocabulary_fingerprint_tells_tokenizers_apart(tiny_models, tmp_path):
    assert vocabulary_fingerprint(tiny_models["instruct"]) == vocabulary_fingerprint(tiny_models["reward"])
    from dpo_engine.models.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens(["hexagon"])
    tok.save_pretrained(tmp_path)
    assert vocabulary_fingerprint(tmp_path) != vocabulary_fingerprint(tiny_models["instruct"])
