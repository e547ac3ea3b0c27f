"""The settings a vLLM engine is built with, and the one function that builds it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# On a CPU build ``gpu_memory_utilization`` is the share of RAM the engine process may use, its
# own footprint included; without it, a CPU engine gets a KV cache of a fixed size instead.
CPU_KV_CACHE_BYTES = 512 << 20
GPU_MEMORY_SHARE = 0.85


@dataclass(frozen=True)
class VllmOptions:
    gpu_memory_utilization: float | None = None  # None: 0.85 on a GPU, a 512 MiB KV cache on a CPU
    max_model_len: int | None = None  # None: the checkpoint's own context length
    tensor_parallel_size: int = 1
    trust_remote_code: bool = False  # run code shipped with the checkpoint (auto_map)


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def build_engine(path: str | Path, *, device: str, dtype: str, options: VllmOptions,
                 images: bool) -> Any:
    """A ``vllm.LLM`` for the checkpoint at ``path``.

    ``device`` ``cuda:N`` pins the engine to GPU N (through CUDA_VISIBLE_DEVICES, so it must be
    set before CUDA starts in this process, as in a worker process). Log-probs are the model's
    raw ones (before temperature or any masking), which is what scoring and checks need.
    """
    if device.startswith("cuda:") and options.tensor_parallel_size == 1:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", device.split(":", 1)[1])
    import multiprocessing

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the CLI shows its own progress

    if multiprocessing.current_process().daemon:
        # A worker process (--workers/--devices) may not start children: run the engine core
        # inside it instead of in a process of its own.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    cpu = on_cpu()
    if dtype == "auto":
        dtype = "float32" if cpu else "bfloat16"
    extra: dict[str, Any] = {"limit_mm_per_prompt": {"image": 1}} if images else {}
    share = options.gpu_memory_utilization
    if share is not None:
        extra["gpu_memory_utilization"] = share
    elif cpu:
        extra["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    else:
        extra["gpu_memory_utilization"] = GPU_MEMORY_SHARE
    return LLM(
        model=str(path), tokenizer=str(path), dtype=dtype, seed=0, max_model_len=options.max_model_len,
        tensor_parallel_size=options.tensor_parallel_size, trust_remote_code=options.trust_remote_code,
        enable_prefix_caching=True, logprobs_mode="raw_logprobs",
        enforce_eager=cpu,  # graph capture and compilation cost minutes on a CPU and pay back little
        # A prompt split over steps rewinds its request's seeded generator, which a CPU generator
        # cannot do ("CPU Generator does not use offset"): on a CPU, prompts are never split.
        enable_chunked_prefill=not cpu,
        **extra,
    )


def answer_seed(seed: int, *key: int) -> int:
    """A request's sampling seed from (run seed, record, answer index ...): requests with the
    same ``SamplingParams.seed`` draw the same random stream, so each answer gets its own."""
    import numpy as np

    return int(np.random.SeedSequence([seed, *key]).generate_state(1, dtype=np.uint32)[0])


def shutdown(engine: Any) -> None:
    """Stop an engine and free its memory, so the next stage's model fits."""
    import gc

    try:
        engine.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort: an engine already stopped has nothing to free
        pass
    del engine
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
