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

import os
from collections.abc import Callable
from pathlib import Path

import torch

from dpo_engine.models.runtime import quiet_transformers

# The trainers live in train_common (oracles, training loop), train_vision (instruct, reward,
# labeler) and train_text (split, question); their names stay importable from here.
from dpo_engine.demo.train_common import (  # noqa: F401
    CELL_WORDS, _MENTION, _instruct_answer, _pad, _save, _train, fact_truth, oracle_facts, oracle_question,
    question_target, split_target)
from dpo_engine.demo.train_text import (  # noqa: F401
    CONTENT_WEIGHT, PROMPT_WORDS, _question_example, _sample_answer, _split_example, _text_model, _train_text,
    train_text_roles)
from dpo_engine.demo.train_vision import (  # noqa: F401
    HALLUCINATION_SHARE, PATCH, _easy_labeler_question, _mixed_question, _pretrain_vision, _processor,
    _prompt_ids, _run_checks, _sequence_logps, _vlm_config, _VlmData, check_claim, place_check,
    train_instruct, train_labeler, train_reward)

ROLES = ("instruct", "reward", "labeler", "split", "question")


def _text_lane(split: Path, question: str | Path, seed: int, queue, parent: int) -> None:
    """The text models' training, in a process of its own with one thread."""
    from dpo_engine.lifetime import die_with_parent

    die_with_parent(parent)  # a demo killed with kill -9 takes this training with it
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
        lane = context.Process(target=_text_lane, args=(paths["split"], paths["question"], seed, lines, os.getpid()),
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
