"""What the ShapesWorld trainers share: the oracles that write the text models' targets and
the facts' truth, the instruct-like training answers, and the torch training loop, padding
and saving."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dpo_engine.demo import world as world
from dpo_engine.models.tiny import save_hub_layout

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


def fact_truth(fact: str, scene: world.Scene) -> bool | None:
    """Whether a fact as the split model writes it ("there is a/no X [at the Y]") holds."""
    found = _MENTION.findall(fact)
    if len(found) != 1:
        return None
    neg, colour, shape, cell = (x.lower() for x in found[0])
    present = any(o.colour == colour and o.shape == shape and (not cell or world.CELLS[o.cell] == cell)
                  for o in scene.objects)
    return present != bool(neg)


# ------------------------------------------------------------------------------ building blocks
def _save(model, saver, out: Path, role: str, seed: int, log) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = saver.tokenizer.pad_token_id if hasattr(saver, "tokenizer") \
        else saver.pad_token_id
    save_hub_layout(model, out)
    saver.save_pretrained(out)
    (out / "dpo_engine_tiny.json").write_text(json.dumps({"world": "shapesworld", "role": role, "seed": seed}))
    log(f"saved {role} to {out}")
    return out


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


def _train_until(model, steps: int, lr: float, make_loss: Callable[[int], torch.Tensor], log, name: str,
                 measure: Callable[[], float], target: float, extra: int, chunk: int = 100) -> float:
    """Train ``steps`` steps, then, while the held-out ``measure`` is below ``target``, up to
    ``extra`` more in chunks at a fifth of the rate. Floating-point paths differ between CPUs
    (AVX-512, AVX2, plain), so a fixed step count lands at a different quality on each; the
    target lifts a path that lands low to a floor. Returns the last measure."""
    _train(model, steps, lr, make_loss, log, name)
    score, done = measure(), 0
    log(f"  {name}: held-out {score:.3f} after {steps} steps (target {target})")
    while score < target and done < extra:
        _train(model, chunk, lr / 5, lambda s, base=steps + done: make_loss(base + s), lambda line: None, name)
        done += chunk
        score = measure()
        log(f"  {name}: held-out {score:.3f} after {steps + done} steps")
    return score


def _instruct_answer(scene: world.Scene, question: str, rng: random.Random, share: float) -> str:
    """A training answer: faithful, or (with probability ``share``) about a corrupted scene."""
    if world.asked_object(question) is not None:
        share /= 2  # yes/no answers flip less, so the instruct model still reads the image for them
    if rng.random() < share:
        return world.wrong_answer(scene, question, rng)
    return world.answer(scene, question)
