"""Original-layout LLaVA checkpoints: refused by `run` with the convert command, converted by
`dpo-engine convert` to a checkpoint whose logits equal the HF model's and whose prompt is the
reference's llava_v1 prompt."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, shapes_rows, write_parquet

from dpo_engine.models.llava_original import LLAVA_V1_SYSTEM

LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "bos_token_id", "eos_token_id", "pad_token_id")


def to_original_layout(hf_dir, out, *, tower_inside: bool):
    """The inverse of the conversion: an HF tiny llava written the way liuhaotian's code saves
    LLaVA-1.5 (Llama at model.*, projector at model.mm_projector.{0,2}, the tower inside or not).
    Returns the CLIP tower folder when the tower is left out."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionConfig

    out.mkdir(parents=True)
    cfg = json.loads((hf_dir / "config.json").read_text())
    text = cfg["text_config"]
    weights, original = load_file(hf_dir / "model.safetensors"), {}
    for key, value in weights.items():
        if key.startswith("language_model.model."):
            original["model." + key[len("language_model.model."):]] = value
        elif key == "language_model.lm_head.weight":
            original["lm_head.weight"] = value
        elif key.startswith("multi_modal_projector.linear_"):
            index, rest = key[len("multi_modal_projector.linear_"):].split(".", 1)
            original[f"model.mm_projector.{0 if index == '1' else 2}.{rest}"] = value
        elif key.startswith("vision_tower.vision_model.") and tower_inside:
            original["model.vision_tower.vision_tower." + key[len("vision_tower."):]] = value
    save_file(original, out / "model.safetensors", metadata={"format": "pt"})
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
              **{k: text[k] for k in LLAMA_KEYS if k in text},
              "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": cfg["vision_config"]["hidden_size"],
              "mm_vision_select_layer": cfg["vision_feature_layer"], "mm_vision_select_feature": "patch",
              "mm_projector_type": "mlp2x_gelu", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
              "image_aspect_ratio": "pad", "tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, out / name)
    if tower_inside:
        return None
    tower = out.parent / f"{out.name}-clip"
    tower.mkdir()
    CLIPVisionConfig(**cfg["vision_config"]).save_pretrained(tower)  # as openai/clip-* publish it:
    save_file({k[len("vision_tower."):]: v for k, v in weights.items() if k.startswith("vision_tower.")},
              tower / "model.safetensors", metadata={"format": "pt"})  # vision_model.* keys
    return tower


@pytest.fixture(scope="module")
def original(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    to_original_layout(tiny_models["instruct"], root / "inside", tower_inside=True)
    tower = to_original_layout(tiny_models["instruct"], root / "apart", tower_inside=False)
    return root, tower


def test_run_on_an_original_layout_folder_gives_the_convert_command(original, tmp_path):
    root, _ = original
    data = write_parquet(tmp_path / "d.parquet", shapes_rows(2))
    proc = cli("run", "--dataset", data, "--work-dir", tmp_path / "w", "--instruct-model", root / "inside",
               "--reward-model", root / "inside", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"dpo-engine convert {root / 'inside'} {root / 'inside'}-hf" in proc.stdout + proc.stderr
    proc = cli("run", "--dataset", data, "--work-dir", tmp_path / "w", "--instruct-model", root / "apart",
               "--reward-model", root / "apart", check=False)
    assert "--vision-tower CLIP_FOLDER" in proc.stdout + proc.stderr


def _logits(path, ids, pixels):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits


@pytest.mark.parametrize("layout", ["inside", "apart"])
def test_convert_gives_the_hf_models_logits(original, tiny_models, tmp_path, layout):
    from transformers import AutoProcessor

    root, tower = original
    extra = ("--vision-tower", tower) if layout == "apart" else ()
    cli("convert", root / layout, tmp_path / "hf", *extra)
    processor = AutoProcessor.from_pretrained(tiny_models["instruct"])
    enc = processor(images=[Image.new("RGB", (64, 64), (200, 30, 30))], text=["<image>\nwhat is red ?"],
                    return_tensors="pt")
    ours = _logits(tmp_path / "hf", enc["input_ids"], enc["pixel_values"])
    theirs = _logits(tiny_models["instruct"], enc["input_ids"], enc["pixel_values"])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_the_converted_prompt_is_the_references_llava_v1_prompt(original, tmp_path):
    from dpo_engine.models.hf.vlm import ImageTextModel

    root, _ = original
    cli("convert", root / "inside", tmp_path / "hf")
    model = ImageTextModel(tmp_path / "hf", device="cpu", dtype="float32")
    question = "what colour is the circle ?"
    assert model.prompt(question) == f"{LLAVA_V1_SYSTEM} USER: <image>\n{question} ASSISTANT:"
    # The reference tokenizes the text before and after the image apart (BOS on the first part
    # only) and splices the image features in: the same ids, the placeholder expanded.
    tok = model.tokenizer
    before, after = model.prompt(question).split("<image>")
    image_id = tok.convert_tokens_to_ids("<image>")
    enc = model._encode([Image.new("RGB", (64, 64))], [model.prompt(question)])
    ids = enc["input_ids"][0].tolist()
    n_image = ids.count(image_id)
    vision = model.model.config.vision_config
    assert n_image == (vision.image_size // vision.patch_size) ** 2
    assert ids == tok(before)["input_ids"] + [image_id] * n_image + tok(after, add_special_tokens=False)["input_ids"]
    # image_aspect_ratio "pad": a wide image is padded to a square with the mean colour, centred
    wide = Image.new("RGB", (64, 32), (255, 255, 255))
    padded = Image.new("RGB", (64, 64), tuple(int(x * 255) for x in model.processor.image_processor.image_mean))
    padded.paste(wide, (0, 16))
    ip = model.processor.image_processor
    np.testing.assert_allclose(ip(wide, return_tensors="np")["pixel_values"],
                               ip(padded, return_tensors="np")["pixel_values"], atol=1e-6)


def test_a_run_on_converted_checkpoints_works(original, tmp_path):
    root, _ = original
    cli("convert", root / "inside", tmp_path / "hf")
    data = write_parquet(tmp_path / "d.parquet", shapes_rows(3))
    out = json.loads(cli("run", "--dataset", data, "--work-dir", tmp_path / "w", "--instruct-model", tmp_path / "hf",
                         "--reward-model", tmp_path / "hf", "--sample-k", "3", "--max-new-tokens", "8",
                         "--json").stdout.splitlines()[-1])
    assert out["records"]["valid"] == 3 and all(s["failed"] == 0 for s in out["stages"])


def test_convert_refuses_what_it_cannot_map(original, tmp_path):
    root, _ = original
    src = tmp_path / "resampler"
    shutil.copytree(root / "inside", src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mm_projector_type": "resampler"}))
    proc = cli("convert", src, tmp_path / "out", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "mm_projector_type" in proc.stderr + proc.stdout
    proc = cli("convert", root / "apart", tmp_path / "out2", check=False)
    assert "--vision-tower" in proc.stderr + proc.stdout


def test_a_remote_code_checkpoint_is_refused_in_one_line(tmp_path, demo_parquet):
    model = tmp_path / "custom"  # a family only its own code serves (MiniCPM-V 2.5 is ours now: tests/test_minicpmv.py)
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "acme_vlm", "architectures": ["AcmeVLM"],
                                                   "auto_map": {"AutoModel": "modeling_acme.AcmeVLM"}}))
    proc = cli("run", "--dataset", demo_parquet, "--work-dir", tmp_path / "w", "--instruct-model", model,
               "--reward-model", model, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = proc.stderr + proc.stdout
    assert "code shipped with the checkpoint" in message and "--trust-remote-code" in message
    proc = cli("run", "--dataset", demo_parquet, "--work-dir", tmp_path / "w", "--instruct-model", model,
               "--reward-model", model, "--trust-remote-code", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "modeling_acme.py" in proc.stderr + proc.stdout  # the code is not in the folder


def test_trust_remote_code_runs_a_checkpoints_own_code(tmp_path):
    """A chat model whose class lives in the checkpoint folder (a Llama under another name)."""
    from dpo_engine.models import open_model
    from dpo_engine.models.tiny import build_tiny_chat

    path = build_tiny_chat(tmp_path / "remote", seed=2, size="tiny")
    (path / "configuration_tiny_remote.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyRemoteConfig(LlamaConfig):\n"
        "    model_type = 'tiny_remote'\n")
    (path / "modeling_tiny_remote.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny_remote import TinyRemoteConfig\n\n\n"
        "class TinyRemoteForCausalLM(LlamaForCausalLM):\n    config_class = TinyRemoteConfig\n")
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="tiny_remote", architectures=["TinyRemoteForCausalLM"],
               auto_map={"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                         "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM"})
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="--trust-remote-code"):
        open_model("chat", path, device="cpu", dtype="float32")
    model = open_model("chat", path, device="cpu", dtype="float32", trust_remote_code=True)
    assert type(model.model).__name__ == "TinyRemoteForCausalLM"
    (reply,) = model.chat(["is there a red circle ?"], keys=[(0,)], max_new_tokens=6, temperature=0.7, top_p=1.0,
                          seed=0)
    assert reply.n_tokens >= 1
