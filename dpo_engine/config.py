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


# Input caps: a row over either is invalid, with the numbers in its error. Images are measured
# from their header, before any pixel is decoded (Pillow's own bomb limit is ~179 MP).
MAX_IMAGE_PIXELS = 40_000_000
MAX_QUESTION_CHARS = 20_000


@dataclass(frozen=True)
class RunConfig:
    pipeline: str
    dataset: str
    work_dir: str
    image_root: str | None = None  # when set, rows' image_paths must lie inside this folder
    copy_images: bool = False  # store the images' bytes, not only where they lie in the dataset
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_question_chars: int = MAX_QUESTION_CHARS
    # The checkpoint folder of each model role the pipeline names ("instruct", "reward",
    # "labeler", "split", "question"); ``model_path`` is the one place that reads it.
    models: dict[str, str] = field(default_factory=dict)
    # divide_and_conquer: the prompt template files (None: the ones shipped in dpo_engine/prompts).
    split_prompt: str | None = None
    question_prompt: str | None = None
    chat_temperature: float = 0.2  # split and question-change decoding
    chat_top_p: float = 0.9
    chat_max_new_tokens: int = 256
    prompt_words: int = 300  # split/question prompts are cut to their first N words
    score_gap: int = 1  # dnc pairs need scores at least this far apart
    pairs_per_question: int = 2  # dnc pairs kept per (image, question), chosen with the seed
    # dnc: "false" counts a fact an answer states again (the same words) as a claim judged false;
    # "judged" asks the labeler about it like any other, as the reference does. None: "false",
    # or "judged" under compat="reference" (``repeats_rule`` resolves it).
    repeated_facts: str | None = None
    sample_k: int = 10
    temperature: float = 0.7
    # Sampling truncation, as the reference samples (transformers' defaults): top-k 50, top-p 1.0.
    top_k: int = 50  # 0: off
    top_p: float = 1.0
    max_new_tokens: int = 512
    beta: float = 0.1
    reward_margin: float = 0.0  # dpo_reward: a pair's chosen reward sum must exceed its rejected one's by more
    # "reference": dpo_reward pairs and rewards as the reference's code computes them (always
    # strict pairing in its order, no chosen-above-rejected check, beta twice in avg); "off": ours.
    compat: str = "off"
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
    dtype: str = "auto"  # resolved (e.g. "float32") by the engine before the run starts
    backend: str = "hf"  # which model backend opens the checkpoints (dpo_engine.models)
    # logps_instruct and logps_reward run on one backend, never one each ("auto": hf, faster
    # at scoring since it encodes image + question once per record, see the README)
    score_backend: str = "auto"
    gpu_memory_utilization: float | None = None  # vllm: None picks the backend's default
    max_model_len: int | None = None  # vllm: None uses the checkpoint's context length
    tensor_parallel_size: int = 1  # vllm: GPUs per engine
    trust_remote_code: bool = False  # run code shipped with a checkpoint (auto_map in config.json)
    workers: int = 1  # worker processes on ``device`` (1: batches run in this process)
    devices: tuple[str, ...] = ()  # one worker process per device, instead of ``workers``
    executor: str = "local"  # "local" (this process or worker processes) or "ray" (actors)
    ray_address: str | None = None  # an existing Ray cluster; None starts a local one
    lease_seconds: float = 60.0  # a dead process's records are taken over after this long
    shared_tokenizer: bool = True  # instruct and reward models map tokens to the same ids
    model_fingerprints: dict[str, str] = field(default_factory=dict)

    def model_path(self, role: str) -> str | None:
        """The checkpoint configured for a model role, or None. The ``reference`` role (the
        implicit reward's denominator) is the instruct model unless set apart."""
        if role == "reference" and not self.models.get(role):
            return self.models.get("instruct") or None
        return self.models.get(role) or None

    @property
    def repeats_rule(self) -> str:
        """How divide_and_conquer scores a fact an answer states a second time."""
        if self.repeated_facts is not None:
            return self.repeated_facts
        return "judged" if self.compat == "reference" else "false"

    def backend_for(self, use: str) -> str:
        """The backend a model stage runs on: ``use`` "score" (the log-prob stages) follows
        ``score_backend``; everything else follows ``backend``."""
        if use == "score" and self.score_backend != "auto":
            return self.score_backend
        return "hf" if use == "score" else self.backend

    def backend_options(self, backend: str) -> dict:
        """What a backend's engine is built with, beyond device and dtype."""
        options: dict = {"trust_remote_code": True} if self.trust_remote_code else {}
        if backend == "vllm":
            options.update(gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                           tensor_parallel_size=self.tensor_parallel_size)
        return options

    def model_id(self, role: str) -> str | None:
        """What identifies a role's model in the settings hashes: its fingerprint once the
        engine has computed it, else its path."""
        return self.model_fingerprints.get(role, self.model_path(role))

    def validate(self) -> None:
        """The checks every pipeline shares; a pipeline adds its own (``Pipeline.check``)."""
        checks = [
            (self.sample_k >= 2, "--sample-k must be at least 2 (pairs need two answers)"),
            (self.compat in ("off", "reference"), "--compat must be off or reference"),
            (self.repeated_facts in (None, "false", "judged"), "--repeated-facts must be false or judged"),
            (self.temperature >= 0, "--temperature must be >= 0"),
            (self.top_k >= 0, "--top-k must be >= 0 (0: off)"),
            (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
            (self.rank >= 1, "--rank must be >= 1"),
            (self.distance >= 1, "--distance must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.workers >= 1, "--workers must be >= 1"),
            (self.lease_seconds > 0, "--lease-seconds must be > 0"),
            (self.executor in ("local", "ray"), "--executor must be local or ray"),
            (self.backend in ("hf", "vllm"), "--backend must be hf or vllm"),
            (self.score_backend in ("auto", "hf", "vllm"), "--score-backend must be auto, hf or vllm"),
            (self.tensor_parallel_size >= 1, "--tensor-parallel-size must be >= 1"),
            (self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
             "--gpu-memory-utilization must be in (0, 1]"),
            (0 < self.jaccard_threshold <= 1, "the Jaccard threshold must be in (0, 1]"),
        ]
        for ok, message in checks:
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
