"""MiniCPM-Llama3-V-2.5 from its published layout (``models.minicpmv``): the weights load under
their own names, the prompt holds the image's slices as the model was trained to see them, the
slicing picks the published sizes, and the image reaches the yes/no answer. (The family matrix in
test_families.py runs it through the fast/plain paths and both pipelines.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from dpo_engine.models.family import ModelConfigError, detect_family
from dpo_engine.models.hf.vlm import ImageTextModel
from dpo_engine.models.minicpmv import slice_layout
from dpo_engine.models.tiny_families import build_tiny_minicpmv


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_minicpmv(tmp_path_factory.mktemp("minicpmv") / "tiny")


def _image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("size", "source", "grid", "refined"), [
    ((640, 480), (518, 392), (2, 1), (728, 546)),
    ((448, 448), (448, 448), None, None),
    ((300, 200), (546, 364), None, None),  # small images are scaled up
    ((1344, 1344), (448, 448), (3, 3), (1344, 1344)),
    ((1920, 1080), (602, 336), (4, 2), (1680, 952)),
])
def test_slicing_gives_the_published_sizes(size, source, grid, refined):
    assert slice_layout(size, 448, 14, 9) == (source, grid, refined)


def test_it_loads_in_its_published_layout_and_the_image_reaches_the_answer(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "minicpmv" and config["architectures"] == ["MiniCPMV"]
    assert "AutoModel" in config["auto_map"] and not list(folder.glob("*.py"))  # its code is not needed
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert {name.split(".")[0] for name in index} == {"llm", "vpm", "resampler"}
    assert len(set(index.values())) == 2
    for name in ("llm.model.embed_tokens.weight", "llm.lm_head.weight", "vpm.embeddings.patch_embedding.weight",
                 "vpm.embeddings.position_embedding.weight", "vpm.encoder.layers.1.self_attn.q_proj.weight",
                 "vpm.post_layernorm.weight", "resampler.query", "resampler.kv_proj.weight",
                 "resampler.attn.in_proj_weight", "resampler.ln_kv.bias", "resampler.proj"):
        assert name in index, name
    model = ImageTextModel(folder, device="cpu", dtype="float32")
    loaded = dict(model.model.named_parameters())
    for shard in set(index.values()):
        for name, tensor in load_file(folder / shard).items():
            ours = name.removeprefix("llm.")
            np.testing.assert_array_equal(loaded[ours].detach().numpy(), tensor.numpy(), err_msg=name)

    image = _image(80, 64, 0)  # 80 x 64 over 56 x 56 slices: a source image and 2 tiles side by side
    prompt = model.prompt("Is there a red circle?")
    enc = model._encode([image], [prompt])  # what sampling, scoring and checks feed the model
    text = model.tokenizer.decode(enc["input_ids"][0])
    block = "<image>" + "<unk>" * config["query_num"] + "</image>"
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + block + "<slice>" + block * 2
                    + "</slice>\nIs there a red circle?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert enc["tgt_sizes"].tolist() == [[4, 4], [5, 3], [5, 3]]
    assert model.end_id == model.tokenizer.convert_tokens_to_ids("<|eot_id|>") and model.end_id in model.stop_ids

    questions = ["Is there a red circle?", "Are there two squares?"]
    here, other = model.yes_no(image, questions), model.yes_no(_image(80, 64, 1), questions)
    assert not np.allclose(here, other, rtol=0, atol=1e-9)


def test_other_minicpm_v_versions_are_not_served_natively(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "v26")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "version": 2.6}))
    with pytest.raises(ModelConfigError, match=r"MiniCPM-V 2\.6 is not served natively.*--trust-remote-code"):
        detect_family(copy)
    with pytest.raises(ModelConfigError, match="code its config.json names is not in the folder"):
        detect_family(copy, trust_remote_code=True)
    assert detect_family(folder).model_type == "minicpmv"
    bare = shutil.copytree(folder, tmp_path / "no-tokenizer")
    (bare / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        ImageTextModel(bare, device="cpu", dtype="float32")
