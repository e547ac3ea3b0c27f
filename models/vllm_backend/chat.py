"""A text chat checkpoint on vLLM: the split and question-change roles of divide_and_conquer.

Prompts are wrapped in the checkpoint's chat template and tokenized here, as the transformers
backend does; each reply is one request seeded by its key, and decoding stops at the model's
end-of-turn token(s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from ..base import Generation
from ..runtime import quiet_transformers
from .options import VllmOptions, answer_seed, build_engine, shutdown


class VllmChatModel:
    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto",
                 options: VllmOptions = VllmOptions()):
        from transformers import AutoTokenizer

        quiet_transformers()
        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{path}: the tokenizer has no chat template; this role needs a chat model")
        self.stop_ids = self._stop_ids()
        self.engine = build_engine(path, device=device, dtype=dtype, options=options, images=False)
        self.model_seconds = 0.0

    def _stop_ids(self) -> list[int]:
        """End-of-turn ids: the generation config's and the tokenizer's eos."""
        ids: list[int] = []
        gen_config = self.path / "generation_config.json"
        if gen_config.is_file():
            value = json.loads(gen_config.read_text()).get("eos_token_id")
            ids = list(value) if isinstance(value, list) else ([value] if value is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return sorted({int(i) for i in ids})

    def prompt_ids(self, text: str) -> list[int]:
        wrapped = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                     add_generation_prompt=True, tokenize=False)
        bos = self.tokenizer.bos_token
        return self.tokenizer(wrapped, add_special_tokens=not (bos and wrapped.startswith(bos)))["input_ids"]

    def chat(self, prompts: Sequence[str], *, keys: Sequence[tuple[int, ...]], max_new_tokens: int,
             temperature: float, top_p: float, seed: int) -> list[Generation]:
        from vllm import SamplingParams

        if not prompts:
            return []
        requests = [{"prompt_token_ids": self.prompt_ids(p)} for p in prompts]
        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=0, max_tokens=max_new_tokens,
                                 seed=answer_seed(seed, *key), stop_token_ids=self.stop_ids, detokenize=False)
                  for key in keys]
        t0 = time.perf_counter()
        outs = self.engine.generate(requests, params, use_tqdm=False)
        self.model_seconds += time.perf_counter() - t0
        stops = set(self.stop_ids)
        results = []
        for out in outs:
            row = list(out.outputs[0].token_ids)
            n = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            results.append(Generation(self.tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n))
        return results

    def close(self) -> None:
        shutdown(self.engine)
        self.engine = None
