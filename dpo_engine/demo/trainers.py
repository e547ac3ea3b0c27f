"""Train the five ShapesWorld models offline, in minutes on a CPU, with short torch loops.

* ``instruct``: a tiny LLaVA that answers the world's questions and hallucinates sometimes:
  a controlled share of its training answers name a wrong object.
* ``reward``: ``instruct`` further trained with DPO on (faithful, corrupted) answer pairs, so
  its implicit reward against ``instruct`` prefers faithful answers.
* ``labeler``: a tiny LLaVA (started from ``instruct``) that answers "... Please answer yes or
  no." with ``yes``/``no`` according to the image.
* ``split`` and ``question``: tiny Llama chat models that follow the divide-and-conquer prompt
  templates and write ``- fact`` / ``- question`` lines.

Every checkpoint is saved with ``save_pretrained`` (config, weights, tokenizer, processor, chat
template) and loads through the normal adapters. Training is seeded: the same seed on the
same machine gives the same weights.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dpo_engine.demo import world as world
from dpo_engine.config import RunConfig
from dpo_engine.prompts import QUESTION, SPLIT, bullet_list, cut_words, fill

from dpo_engine.models.tiny import CHAT_TEMPLATE, build_tokenizer
from dpo_engine.models.hf.vlm import quiet_transformers

ROLES = ("instruct", "reward", "labeler", "split", "question")
HALLUCINATION_SHARE = 0.5
CONTENT_WEIGHT = 8.0  # loss weight of copied words in the text models (exact copies: 0.48 -> 0.94)
PROMPT_WORDS = RunConfig.prompt_words  # the split/question prompts are cut as a run cuts them
# One vision patch per quadrant: each image token shows one whole cell, so the language model
# never has to bind a shape seen in one patch to a colour seen in another. With 16-pixel
# patches the labeler stayed near chance on yes/no checks (0.60-0.70 held out); with 32, 0.92.
PATCH = world.SIZE // 2
CELL_WORDS = world.CELLS


# ------------------------------------------------------------------------------ oracles
_MENTION = re.compile(
    r"\b(no\s+)?(?:a\s+)?(" + "|".join(world.COLOURS) + r")\s+(" + "|".join(world.SHAPES) + r")"
    r"(?:\s+at\s+the\s+(" + "|".join(CELL_WORDS) + r"))?(?:\s+in\s+the\s+image)?", re.IGNORECASE)


def oracle_facts(question: str, answer: str) -> list[str]:
    """The facts an answer states, as the split model is taught to write them."""
    asked = world.asked_object(question)
    words = answer.lower().replace(".", " ").split()
    if asked is not None and words and words[0] in ("yes", "no"):
        return [f"there is {'a' if words[0] == 'yes' else 'no'} {asked} in the image ."]
    facts = []
    for neg, colour, shape, cell in _MENTION.findall(answer):
        where = f" at the {cell.lower()}" if cell else ""
        facts.append(f"there is {'no' if neg else 'a'} {colour.lower()} {shape.lower()}{where} .")
    return facts


def oracle_question(fact: str) -> str:
    """A fact sentence as a yes/no question, negation kept."""
    body = fact.strip().rstrip(" .")
    if body.startswith("there is "):
        return "is there " + body[len("there is "):] + " ?"
    return "is it true that " + body + " ?"


def split_target(facts: list[str]) -> str:
    return "### facts:\n" + "".join(f"- {f}\n" for f in facts)


def question_target(questions: list[str]) -> str:
    return "### modified sentences:\n" + "".join(f"- {q}\n" for q in questions)


# ------------------------------------------------------------------------------ building blocks
def _vlm_config(tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, image_size=world.SIZE, patch_size=PATCH,
                              projection_dim=64)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_select_strategy="default", vision_feature_layer=-1)


def _processor(tokenizer):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": world.SIZE},
                                            crop_size={"height": world.SIZE, "width": world.SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                          patch_size=PATCH, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)


def _save(model, saver, out: Path, role: str, seed: int, log) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = saver.tokenizer.pad_token_id if hasattr(saver, "tokenizer") \
        else saver.pad_token_id
    model.save_pretrained(out)
    saver.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"world": "shapesworld", "role": role, "seed": seed}))
    log(f"saved {role} to {out}")
    return out


class _VlmData:
    """A pool of rendered scenes with their pixel values and prompt token ids."""

    def __init__(self, processor, rng: random.Random, n: int, question_fn: Callable[[world.Scene], str]):
        import io

        from PIL import Image

        tok = processor.tokenizer
        self.tok = tok
        self.scenes, self.questions, images = [], [], []
        self.prompt_ids = []
        n_image_tokens = (world.SIZE // PATCH) ** 2
        for _ in range(n):
            scene = world.random_scene(rng)
            question = question_fn(scene)
            self.scenes.append(scene)
            self.questions.append(question)
            images.append(Image.open(io.BytesIO(world.render(scene, rng))).convert("RGB"))
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            # What the processor does to the text, without its per-call overhead.
            prompt = prompt.replace("<image>", "<image>" * n_image_tokens)
            self.prompt_ids.append(tok(prompt)["input_ids"])
        self.pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def batch(self, items: list[int], answers: list[str]):
        ids, labels = [], []
        for i, text in zip(items, answers):
            a = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            ids.append(self.prompt_ids[i] + a)
            labels.append([-100] * len(self.prompt_ids[i]) + a)
        return _pad(ids, labels, self.tok.pad_token_id) + (self.pixels[items],)


def _pad(ids, labels, pad_id):
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    label_t = torch.full((len(ids), width), -100, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, (x, y) in enumerate(zip(ids, labels)):
        input_ids[r, : len(x)] = torch.tensor(x)
        label_t[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
    return input_ids, mask, label_t


def _sequence_logps(model, input_ids, mask, labels, pixels=None):
    kw = {"pixel_values": pixels} if pixels is not None else {}
    logits = model(input_ids=input_ids, attention_mask=mask, **kw).logits[:, :-1].float()
    target = labels[:, 1:]
    valid = target != -100
    logp = torch.log_softmax(logits, -1).gather(2, target.clamp(min=0)[..., None])[..., 0]
    return (logp * valid).sum(-1)


def _train(model, steps: int, lr: float, make_loss: Callable[[int], torch.Tensor], log, name: str):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        loss = make_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 4) == 0 or step == steps - 1:
            log(f"  {name} step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()


def _pretrain_vision(model, data: _VlmData, seed: int, log, steps: int = 300) -> None:
    """Teach the vision tower and projector what is in each quadrant (colour, shape) through
    two linear heads that are thrown away afterwards, as a real VLM starts from a pretrained
    vision encoder. Without it the captioning loss sits at chance for hundreds of steps."""
    colours, shapes = list(world.COLOURS), list(world.SHAPES)
    grid = world.SIZE // PATCH
    half = grid // 2
    quads = torch.tensor([[r * grid + c for r in range(q // 2 * half, q // 2 * half + half)
                           for c in range(q % 2 * half, q % 2 * half + half)] for q in range(4)])
    colour_t = torch.full((len(data.scenes), 4), len(colours))
    shape_t = torch.full((len(data.scenes), 4), len(shapes))
    for i, scene in enumerate(data.scenes):
        for o in scene.objects:
            colour_t[i, o.cell] = colours.index(o.colour)
            shape_t[i, o.cell] = shapes.index(o.shape)
    width = quads.shape[1] * model.config.text_config.hidden_size
    colour_head, shape_head = torch.nn.Linear(width, len(colours) + 1), torch.nn.Linear(width, len(shapes) + 1)
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *colour_head.parameters(), *shape_head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(data.scenes), (64,), generator=gen)
        feats = torch.stack(list(model.model.get_image_features(pixel_values=data.pixels[idx]).pooler_output))
        per_quad = feats[:, quads].flatten(2)
        loss = (F.cross_entropy(colour_head(per_quad).flatten(0, 1), colour_t[idx].flatten())
                + F.cross_entropy(shape_head(per_quad).flatten(0, 1), shape_t[idx].flatten()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    log(f"  vision pretraining: {steps} steps, loss {loss.item():.4f}")


def _instruct_answer(scene: world.Scene, question: str, rng: random.Random, share: float) -> str:
    """A training answer: faithful, or (with probability ``share``) about a corrupted scene."""
    if world.asked_object(question) is not None:
        share /= 2  # yes/no answers flip less, so the instruct model still reads the image for them
    if rng.random() < share:
        return world.wrong_answer(scene, question, rng)
    return world.answer(scene, question)


def _mixed_question(rng: random.Random) -> Callable[[world.Scene], str]:
    return lambda scene: world.questions_for(scene, rng, yes_no_share=0.25)


# ------------------------------------------------------------------------------ the roles
def train_instruct(out: Path, seed: int, log, steps: int = 500, pool: int = 2500,
                   pretrain_steps: int = 300) -> Path:
    from transformers import LlavaForConditionalGeneration

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = build_tokenizer()
    processor = _processor(tok)
    data = _VlmData(processor, rng, pool, _mixed_question(rng))
    model = LlavaForConditionalGeneration(_vlm_config(tok))
    _pretrain_vision(model, data, seed, log, pretrain_steps)

    clean_steps = steps * 3 // 5

    def loss(step):
        # Faithful answers first (learning to read the image), then the hallucinating mix.
        share = 0.0 if step < clean_steps else HALLUCINATION_SHARE
        items = [rng.randrange(len(data.scenes)) for _ in range(48)]
        answers = [_instruct_answer(data.scenes[i], data.questions[i], rng, share) for i in items]
        ids, mask, labels, pixels = data.batch(items, answers)
        return model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss

    _train(model, steps, 1e-3, loss, log, "instruct")
    return _save(model, processor, out, "instruct", seed, log)


def train_reward(instruct: Path, out: Path, seed: int, log, steps: int = 250, beta: float = 0.1,
                 pool: int = 1500) -> Path:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    rng = random.Random(seed + 1)
    torch.manual_seed(seed + 1)
    processor = AutoProcessor.from_pretrained(instruct)
    reference = LlavaForConditionalGeneration.from_pretrained(instruct).eval()
    policy = copy.deepcopy(reference)
    for p in reference.parameters():
        p.requires_grad_(False)
    # Half yes/no questions: their one-token answers give DPO the least signal per pair.
    data = _VlmData(processor, rng, pool, lambda scene: world.questions_for(scene, rng, yes_no_share=0.5))

    def loss(step):
        items = [rng.randrange(len(data.scenes)) for _ in range(32)]
        good = [world.answer(data.scenes[i], data.questions[i]) for i in items]
        bad = [world.wrong_answer(data.scenes[i], data.questions[i], rng) for i in items]
        ids, mask, labels, pixels = data.batch(items + items, good + bad)
        with torch.no_grad():
            ref = _sequence_logps(reference, ids, mask, labels, pixels)
        pol = _sequence_logps(policy, ids, mask, labels, pixels)
        margin = (pol - ref)[:32] - (pol - ref)[32:]
        # DPO, plus the chosen answers' NLL per token (as in RPO) to keep them likely.
        n_tokens = (labels[:32] != -100).sum(-1).clamp(min=1)
        return -F.logsigmoid(beta * margin).mean() - (pol[:32] / n_tokens).mean()

    _train(policy, steps, 5e-4, loss, log, "reward (DPO)")
    return _save(policy, processor, out, "reward", seed, log)


def fact_truth(fact: str, scene: world.Scene) -> bool | None:
    """Whether a fact as the split model writes it ("there is a/no X [at the Y]") holds."""
    found = _MENTION.findall(fact)
    if len(found) != 1:
        return None
    neg, colour, shape, cell = (x.lower() for x in found[0])
    present = any(o.colour == colour and o.shape == shape and (not cell or world.CELLS[o.cell] == cell)
                  for o in scene.objects)
    return present != bool(neg)


def check_claim(scene: world.Scene, rng: random.Random) -> tuple[str, str]:
    """A check question as a run asks it: from a fact of an instruct-like answer (faithful or
    corrupted), through the oracle question writer; and its true answer, "yes" half the time."""
    want = rng.random() < 0.5
    while True:
        question = world.questions_for(scene, rng, yes_no_share=0.1)
        text = _instruct_answer(scene, question, rng, 1.0 if rng.random() < 0.5 else 0.0)
        facts = oracle_facts(question, text)
        if facts:
            fact = rng.choice(facts)
            truth = fact_truth(fact, scene)
            if truth is want:
                return oracle_question(fact) + world.YES_NO_SUFFIX, "yes" if truth else "no"


def place_check(scene: world.Scene, rng: random.Random) -> tuple[str, str]:
    """"Is there a X at the Y?" about an object of the scene, at its own place or (half the
    time) at another one: the check a moved object in an answer needs."""
    o = rng.choice(scene.objects)
    cell = o.cell if rng.random() < 0.5 else rng.choice([c for c in range(4) if c != o.cell])
    truth = any(x.colour == o.colour and x.shape == o.shape and x.cell == cell for x in scene.objects)
    return f"is there a {o.name} at the {world.CELLS[cell]} ?" + world.YES_NO_SUFFIX, "yes" if truth else "no"


def _run_checks(scene: world.Scene, rng: random.Random) -> tuple[str, str]:
    return (place_check if rng.random() < 0.4 else check_claim)(scene, rng)


def _easy_labeler_question(scene: world.Scene, rng: random.Random) -> tuple[str, str]:
    """Only "is there a X in the image?", half about an object that is there."""
    if rng.random() < 0.5:
        name, truth = rng.choice(scene.objects).name, "yes"
    else:
        name = rng.choice([f"{c} {s}" for c in world.COLOURS for s in world.SHAPES if f"{c} {s}" not in scene.names()])
        truth = "no"
    return f"is there a {name} in the image ?" + world.YES_NO_SUFFIX, truth


def _prompt_ids(processor, question: str) -> list[int]:
    """Token ids of the chat prompt for an image and a question, image placeholder expanded."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = prompt.replace("<image>", "<image>" * (world.SIZE // PATCH) ** 2)
    return processor.tokenizer(prompt)["input_ids"]


def train_labeler(instruct: Path, out: Path, seed: int, log, steps: int = 800, pool: int = 2000,
                  images: int = 16, per_image: int = 6) -> Path:
    """From ``instruct``; a curriculum: presence checks first, then checks as a run asks them.

    Every step draws fresh questions (a fixed question per image is memorised, not learnt):
    ``per_image`` questions on each of ``images`` pooled images. The image and the prompt text
    before the question run once per image and its questions attend to that cached prefix,
    as the check stage does at run time."""
    from transformers import AutoProcessor, DynamicCache, LlavaForConditionalGeneration

    rng = random.Random(seed + 2)
    torch.manual_seed(seed + 2)
    processor = AutoProcessor.from_pretrained(instruct)
    tok = processor.tokenizer
    model = LlavaForConditionalGeneration.from_pretrained(instruct)
    data = _VlmData(processor, rng, pool, lambda scene: "")
    easy_steps = steps * 2 // 5
    answer_ids = {a: tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in ("yes", "no")}

    def loss(step):
        make = _easy_labeler_question if step < easy_steps else _run_checks
        picked = [rng.randrange(len(data.scenes)) for _ in range(images)]
        prompts, targets = [], []
        for i in picked:
            for _ in range(per_image):
                q, a = make(data.scenes[i], rng)
                prompts.append(_prompt_ids(processor, q))
                targets.append(answer_ids[a])
        shared = min(len(p) for p in prompts) - 1
        for p in prompts[1:]:
            shared = min(shared, next((j for j, (a, b) in enumerate(zip(prompts[0], p)) if a != b), shared))
        head = model(input_ids=torch.tensor([prompts[0][:shared]] * images), pixel_values=data.pixels[picked],
                     use_cache=True)
        cache = DynamicCache()
        for n, layer in enumerate(head.past_key_values.layers):
            cache.update(layer.keys.repeat_interleave(per_image, 0), layer.values.repeat_interleave(per_image, 0), n)
        ids = [p[shared:] + t for p, t in zip(prompts, targets)]
        labels = [[-100] * (len(p) - shared) + t for p, t in zip(prompts, targets)]
        input_ids, mask, label_t = _pad(ids, labels, tok.pad_token_id)
        mask = torch.cat([torch.ones((len(ids), shared), dtype=torch.long), mask], dim=1)
        return model(input_ids=input_ids, attention_mask=mask, past_key_values=cache, labels=label_t).loss

    _train(model, steps, 5e-4, loss, log, "labeler")
    return _save(model, processor, out, "labeler", seed, log)


def _text_model(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def _sample_answer(rng: random.Random) -> tuple[str, str]:
    """A (question, answer) pair shaped like the instruct model's outputs, with the
    punctuation spacing our decoder produces."""
    scene = world.random_scene(rng)
    question = world.questions_for(scene, rng, yes_no_share=0.25)
    text = _instruct_answer(scene, question, rng, 0.4)
    return question, text.replace(" .", ".").replace(" ,", ",")


def _train_text(role: str, outs: list[Path], seed: int, log, steps: int,
                examples: list[Callable[[], tuple[str, str]]], batch: int = 16) -> list[Path]:
    """Teach a tiny chat model to answer ``example()`` prompts. Every prompt of a batch starts
    with the same template text: that shared prefix runs once per step and the batch attends
    to its cached keys and values, which halves the tokens each step computes."""
    from transformers import DynamicCache

    rng_seed = seed + 3
    torch.manual_seed(rng_seed)
    tok = build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    model = _text_model(tok, rng_seed)

    def loss(step):
        prompts, targets = [], []
        example = examples[step % len(examples)]  # one task per batch: its prompts share a prefix
        for _ in range(batch):
            prompt, target = example()
            text = tok.apply_chat_template([{"role": "user", "content": cut_words(prompt, PROMPT_WORDS)}],
                                           add_generation_prompt=True, tokenize=False)
            prompts.append(tok(text)["input_ids"])
            targets.append(tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        shared = min(len(p) for p in prompts) - 1
        for p in prompts[1:]:
            shared = min(shared, next((i for i, (a, b) in enumerate(zip(prompts[0], p)) if a != b), shared))
        head = model(input_ids=torch.tensor([prompts[0][:shared]]), use_cache=True)
        cache = DynamicCache()
        for i, layer in enumerate(head.past_key_values.layers):
            cache.update(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1), i)
        ids = [p[shared:] + t for p, t in zip(prompts, targets)]
        labels = [[-100] * (len(p) - shared) + t for p, t in zip(prompts, targets)]
        input_ids, mask, label_t = _pad(ids, labels, tok.pad_token_id)
        mask = torch.cat([torch.ones((batch, shared), dtype=torch.long), mask], dim=1)
        logits = model(input_ids=input_ids, attention_mask=mask, past_key_values=cache).logits[:, :-1]
        target = label_t[:, 1:]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100, reduction="none")
        # The words copied from the input (colours, shapes, places) carry the task: weigh them up.
        weight = torch.where(torch.isin(target, content), CONTENT_WEIGHT, 1.0).flatten() * (target.flatten() != -100)
        return (ce * weight).sum() / weight.sum()

    content = torch.tensor(sorted({i for w in (*world.COLOURS, *world.SHAPES, *" ".join(CELL_WORDS).split(), "no")
                                   for i in tok(w, add_special_tokens=False)["input_ids"]}))
    _train(model, steps, 1e-3, loss, log, role)
    return [_save(model, tok, out, out.name, seed, log) for out in outs]


def _split_example(rng: random.Random) -> Callable[[], tuple[str, str]]:
    template = SPLIT.read_text()

    def example():
        question, answer = _sample_answer(rng)
        return fill(template, question=question, answer=answer), split_target(oracle_facts(question, answer))

    return example


def _question_example(rng: random.Random) -> Callable[[], tuple[str, str]]:
    template = QUESTION.read_text()

    def example():
        question, answer = _sample_answer(rng)
        facts = oracle_facts(question, answer) or ["there is a red circle ."]
        return fill(template, facts=bullet_list(facts)), question_target([oracle_question(f) for f in facts])

    return example


def train_text_roles(split_out: Path, question_out: Path, seed: int, log, steps: int = 800) -> list[Path]:
    """One tiny chat model taught both text tasks (alternating batches), saved as the split
    and the question model: the two share the skill that matters, copying words exactly."""
    rng = random.Random(seed + 3)
    return _train_text("split+question", [split_out, question_out], seed, log, steps,
                       [_split_example(rng), _question_example(rng)])


def _text_lane(split: Path, question: str | Path, seed: int, queue) -> None:
    """The text models' training, in a process of its own with one thread."""
    torch.set_num_threads(1)
    quiet_transformers()
    train_text_roles(Path(split), Path(question), seed, queue.put)


def build_world_models(root: str | Path, *, roles: tuple[str, ...] = ROLES, seed: int = 0,
                       log: Callable[[str], None] = lambda m: None) -> dict[str, Path]:
    """Train the requested roles into ``root/<role>/`` (a role already there is kept).

    When both the vision models and the text models are to be trained on a machine with more
    than one core, the text models train at the same time in a second process with one
    thread: two single-threaded loops get more from two cores than one loop with two threads
    (1.4x on the 2-core build machine)."""
    import multiprocessing
    import queue as queues

    quiet_transformers()
    root = Path(root)
    paths = {role: root / role for role in ROLES}
    done = {role for role in ROLES if (paths[role] / "dpo_engine_tiny.json").exists()}
    needed = set(roles)
    if needed & {"reward", "labeler"}:
        needed.add("instruct")
    text = bool(needed & {"split", "question"}) and not {"split", "question"} <= done
    vision = [r for r in ("instruct", "reward", "labeler") if r in needed and r not in done]
    lane = lines = None
    threads = torch.get_num_threads()
    if text and vision and threads > 1:
        context = multiprocessing.get_context("spawn")
        lines = context.Queue()
        lane = context.Process(target=_text_lane, args=(paths["split"], paths["question"], seed, lines),
                               daemon=True)
        lane.start()
        log("training the ShapesWorld split and question model alongside, in a second process")
        torch.set_num_threads(threads - 1)

    def drain(wait: bool = False) -> None:
        while lines is not None:
            try:
                log(lines.get(timeout=0.5) if wait and lane.is_alive() else lines.get_nowait())
            except queues.Empty:
                if not wait or not lane.is_alive():
                    return

    try:
        for role in ROLES:
            if role not in needed or role in done:
                continue
            if role in ("split", "question") and lane is not None:
                continue
            log(f"training the ShapesWorld {role} model")
            if role == "instruct":
                train_instruct(paths[role], seed, log)
            elif role == "reward":
                train_reward(paths["instruct"], paths[role], seed, log)
            elif role == "labeler":
                train_labeler(paths["instruct"], paths[role], seed, log)
            elif role in ("split", "question"):
                train_text_roles(paths["split"], paths["question"], seed, log)
                done |= {"split", "question"}
            drain()
        if lane is not None:
            drain(wait=True)
            lane.join()
            drain()
            if lane.exitcode != 0:
                raise RuntimeError(f"training the split and question model failed (exit code {lane.exitcode})")
    finally:
        torch.set_num_threads(threads)
        if lane is not None and lane.is_alive():
            lane.terminate()
    return {role: paths[role] for role in roles}


def sample_quality(path: str | Path, n: int = 48, k: int = 10, seed: int = 123,
                   temperature: float = 0.7) -> dict:
    """Sample answers from a ShapesWorld VLM through the normal adapter and read them:
    the share of answers with a hallucination, and of records with both kinds."""
    import io

    from PIL import Image

    from dpo_engine.models.hf.vlm import ImageTextModel

    rng = random.Random(seed)
    model = ImageTextModel(path, device="cpu")
    scenes = [world.random_scene(rng) for _ in range(n)]
    questions = [world.questions_for(s, rng, yes_no_share=0.25) for s in scenes]
    images = [Image.open(io.BytesIO(world.render(s, rng))).convert("RGB") for s in scenes]
    gens = model.generate(images, questions, keys=list(range(n)), k=k, max_new_tokens=40,
                          temperature=temperature, seed=seed)
    halluc = mixed = 0
    for scene, q, answers in zip(scenes, questions, gens):
        flags = [world.read(q, g.text, scene).hallucinations > 0 for g in answers]
        halluc += sum(flags)
        mixed += any(flags) and not all(flags)
    return {"hallucinated_share": halluc / (n * k), "mixed_records": mixed / n,
            "example": gens[0][0].text}
