"""Run settings, and the hash of the settings that change each stage's result.

A stage's hash covers its own settings and the hashes of the stages it reads from, so a
change flows downstream: a new ``--rank`` changes ``pair`` and ``filter`` only, a new reward
model changes ``logps_reward`` and everything after it, and nothing ever changes ``sample``
but the instruct model and the sampling settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError

@dataclass(frozen=True)
class RunConfig:
    pipeline: str
    dataset: str
    work_dir: str
    instruct_model: str
    reward_model: str | None = None
    # divide_and_conquer: the labeler VLM, the split and question-change text models, and
    # the prompt template files (None: the templates shipped in dpo_engine/prompts).
    labeler_model: str | None = None
    split_model: str | None = None
    question_model: str | None = None
    split_prompt: str | None = None
    question_prompt: str | None = None
    chat_temperature: float = 0.2  # split and question-change decoding
    chat_top_p: float = 0.9
    chat_max_new_tokens: int = 256
    prompt_words: int = 300  # split/question prompts are cut to their first N words
    score_gap: int = 1  # dnc pairs need scores at least this far apart
    pairs_per_question: int = 2  # dnc pairs kept per (image, question), chosen with the seed
    sample_k: int = 10
    temperature: float = 0.7
    max_new_tokens: int = 512
    beta: float = 0.1
    rank: int = 3
    distance: int = 25
    strict_follow_rank: bool = False
    ngram: int = 10
    jaccard_threshold: float = 0.9
    max_pairs_per_idx: int = 3
    length_balance: float = 0.5
    seed: int = 0
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"  # resolved (e.g. "float32") by the CLI before the run starts
    shared_tokenizer: bool = True  # instruct and reward models map tokens to the same ids
    model_fingerprints: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        from .pipelines import PIPELINES  # pipelines imports this module: import here

        if self.pipeline not in PIPELINES:
            raise ConfigError(f"unknown pipeline {self.pipeline!r}", f"use one of {', '.join(PIPELINES)}")
        checks = [
            (self.sample_k >= 2, "--sample-k must be at least 2 (pairs need two answers)"),
            (self.temperature >= 0, "--temperature must be >= 0"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
            (self.rank >= 1, "--rank must be >= 1"),
            (self.distance >= 1, "--distance must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (0 < self.jaccard_threshold <= 1, "the Jaccard threshold must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.pipeline == "dpo_reward" and not self.reward_model:
            raise ConfigError("the dpo_reward pipeline needs --reward-model",
                              "pass the folder of a DPO-trained reward VLM")
        if self.pipeline == "divide_and_conquer":
            missing = [flag for flag, value in (("--labeler-model", self.labeler_model),
                                                ("--split-model", self.split_model),
                                                ("--question-model", self.question_model)) if not value]
            if missing:
                raise ConfigError(f"the divide_and_conquer pipeline needs {', '.join(missing)}",
                                  "or pass all three as --reward_model_path labeler,changeq,split")
            for flag, path in (("--split-prompt", self.split_prompt), ("--question-prompt", self.question_prompt)):
                if path and not Path(path).is_file():
                    raise ConfigError(f"{flag} {path} is not a file")
            more = [
                (self.chat_max_new_tokens >= 1, "the split/question max new tokens must be >= 1"),
                (self.prompt_words >= 1, "the prompt word limit must be >= 1"),
                (0 < self.chat_top_p <= 1, "the split/question top-p must be in (0, 1]"),
                (self.score_gap >= 1, "the score gap must be >= 1"),
                (self.pairs_per_question >= 1, "pairs per question must be >= 1"),
            ]
            for ok, message in more:
                if not ok:
                    raise ConfigError(message)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def settings_hash(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_fingerprint(path: str | Path) -> str:
    """Identify a checkpoint by its config and its weight files, cheaply.

    Hashes config.json in full and, for each weight file, its name, size and first and last
    MiB (a safetensors header lists every tensor's name, shape and offset), so retraining or
    swapping weights changes the fingerprint without reading gigabytes.
    """
    root = Path(path)
    h = hashlib.sha256()
    config = root / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(root.iterdir()) if root.is_dir() else []:
        if f.suffix in {".safetensors", ".bin", ".pt", ".pth"} or f.name == "tokenizer.json":
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), 2)
                    h.update(fh.read())
    return h.hexdigest()[:16]
