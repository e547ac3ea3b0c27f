"""The ShapesWorld text models: ``split`` and ``question``, one tiny Llama chat model taught
both divide-and-conquer prompt templates, writing ``- fact`` / ``- question`` lines."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dpo_engine.demo import world as world
from dpo_engine.config import RunConfig
from dpo_engine.demo.train_common import CELL_WORDS, _instruct_answer, _pad, _save, _train, oracle_facts, \
    oracle_question, question_target, split_target
from dpo_engine.prompts import QUESTION, SPLIT, bullet_list, cut_words, fill

from dpo_engine.models.tiny import CHAT_TEMPLATE, build_tokenizer

CONTENT_WEIGHT = 8.0  # loss weight of copied words in the text models (exact copies: 0.48 -> 0.94)
PROMPT_WORDS = RunConfig.prompt_words  # the split/question prompts are cut as a run cuts them


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
