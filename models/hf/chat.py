"""The text chat adapter: the split and question-change models of divide_and_conquer.

Any ``AutoModelForCausalLM`` checkpoint with a chat template (the released RLAIF-V Llama-3-8B
split and question-change fine-tunes are the reference case). Prompts are wrapped in the
checkpoint's chat template, batched with left padding and decoded with temperature and top-p
sampling that draws each row from its own seeded stream, so a reply does not depend on which
other prompts shared its batch. Decoding stops at the model's end-of-turn token(s).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..base import Generation
from ..family import detect_family
from ..runtime import empty_cache, quiet_transformers, resolve_device, resolve_dtype, synchronize
from ..sampling import SeededSampler, row_uniforms
from ..vocab import stop_token_ids


class TextChatModel:
    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        self.path = Path(path)
        self.family = detect_family(path, trust_remote_code=trust_remote_code)
        remote = self.family.remote_code
        if self.family.kind != "causal-lm":
            raise ValueError(f"{path} is a {self.family.model_type} {self.family.kind} model; "
                             "this role needs a text-only causal LM")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.tokenizer.chat_template:
            raise ValueError(f"{path}: the tokenizer has no chat template; this role needs a chat model")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, trust_remote_code=remote)
        self.model.to(self.device).eval()
        self.stop_ids = stop_token_ids(self.model.generation_config, self.tokenizer)
        self.model_seconds = 0.0

    def prompt(self, text: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                  add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def chat(self, prompts: Sequence[str], *, keys: Sequence[tuple[int, ...]], max_new_tokens: int,
             temperature: float, top_p: float, seed: int) -> list[Generation]:
        """One sampled reply per prompt; ``keys`` seed each row's random stream."""
        from transformers import GenerationConfig, LogitsProcessorList

        if not prompts:
            return []
        t0 = time.perf_counter()
        texts = [self.prompt(p) for p in prompts]
        bos = self.tokenizer.bos_token
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        prompt_len = ids.shape[1]
        uniforms = torch.from_numpy(row_uniforms(seed, list(keys), max_new_tokens)).to(self.device)
        config = GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id, cache_implementation="static",
        )
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config,
            logits_processor=LogitsProcessorList([SeededSampler(uniforms, temperature, top_p, prompt_len)]))
        synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        results = []
        stops = set(self.stop_ids)
        for row in out[:, prompt_len:].tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append(Generation(text.strip(), n))
        return results

    def close(self) -> None:
        del self.model
        empty_cache(self.device)
