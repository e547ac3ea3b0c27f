"""An image-text-to-text checkpoint on vLLM: k seeded answers per question, per-token log-probs
of given answers, and p(yes)/p(no) of a first answer token.

Prompts are built and tokenized here exactly as the transformers backend does (the checkpoint's
chat template, the image placeholder once) and handed to vLLM as token ids, which it expands
around the image; so both backends see the same tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..base import Generation
from ..runtime import quiet_transformers
from ..vocab import end_of_turn_id, stop_token_ids, yes_no_token_ids
from .options import VllmOptions, answer_seed, build_engine, shutdown


class VllmImageTextModel:
    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto",
                 options: VllmOptions = VllmOptions()):
        from transformers import AutoProcessor

        quiet_transformers()
        self.path = Path(path)
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=options.trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        from transformers import GenerationConfig

        try:
            generation = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's eos alone
            generation = None
        self.stop_ids = stop_token_ids(generation, self.tokenizer)
        self.end_id = end_of_turn_id(self.processor, self.tokenizer, self.stop_ids)
        self.engine = build_engine(path, device=device, dtype=dtype, options=options, images=True)
        self.model_seconds = 0.0
        self._yes_no: tuple[list[int], list[int]] | None = None

    # ----------------------------------------------------------------- prompts
    def prompt_ids(self, question: str) -> list[int]:
        """The chat prompt's token ids, the image placeholder left unexpanded."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        bos = self.tokenizer.bos_token
        return self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens and the token the chat template ends an assistant turn with."""
        return self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.end_id]

    def _run(self, requests: list[dict], params) -> list:
        t0 = time.perf_counter()
        outs = self.engine.generate(requests, params, use_tqdm=False)
        self.model_seconds += time.perf_counter() - t0
        return outs

    # ----------------------------------------------------------------- sampling
    def generate(self, images: list[Image.Image], questions: list[str], *, keys: Sequence[int],
                 k: int, max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0, top_k: int = 0) -> list[list[Generation]]:
        """k answers per (image, question): one request per answer, each seeded by (seed, record,
        answer), so a rerun draws the same answers. vLLM's prefix cache shares the image and
        prompt among a record's k requests."""
        from vllm import SamplingParams

        requests, params = [], []
        for image, question, rid in zip(images, questions, keys):
            ids = self.prompt_ids(question)
            for j in range(k):
                requests.append({"prompt_token_ids": ids, "multi_modal_data": {"image": image}})
                params.append(SamplingParams(
                    n=1, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_new_tokens,
                    seed=answer_seed(seed, rid, j), stop_token_ids=self.stop_ids, detokenize=False))
        gens = [self._generation(out.outputs[0].token_ids) for out in self._run(requests, params)]
        return [gens[i * k : (i + 1) * k] for i in range(len(questions))]

    def _generation(self, token_ids: Sequence[int]) -> Generation:
        ids = list(token_ids)
        stops = set(self.stop_ids)
        n = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        return Generation(self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), n)

    # ----------------------------------------------------------------- scoring
    def score(self, image: Image.Image, question: str, answers: Sequence[str]) -> list[np.ndarray]:
        """Per-token log-probs of each answer (end-of-turn token included) from vLLM's prompt
        log-probs of image + question + answer."""
        from vllm import SamplingParams

        if not answers:
            return []
        prompt = self.prompt_ids(question)
        tails = [self.answer_ids(a) for a in answers]
        requests = [{"prompt_token_ids": prompt + tail, "multi_modal_data": {"image": image}} for tail in tails]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        results = []
        for out, tail in zip(self._run(requests, params), tails):
            rows = out.prompt_logprobs[-len(tail):]
            results.append(np.array([row[t].logprob for row, t in zip(rows, tail)], dtype=np.float32))
        return results

    # ----------------------------------------------------------------- yes/no checks
    def yes_no_ids(self) -> tuple[list[int], list[int]]:
        if self._yes_no is None:
            self._yes_no = yes_no_token_ids(self.tokenizer, self.path)
        return self._yes_no

    def yes_no(self, image: Image.Image, questions: Sequence[str]) -> np.ndarray:
        """(p_yes, p_no) of the first answer token: the summed probabilities of the yes and no
        spellings, read from the raw log-probs vLLM returns for exactly those token ids."""
        from vllm import SamplingParams

        if not questions:
            return np.zeros((0, 2), dtype=np.float64)
        yes, no = self.yes_no_ids()
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(yes + no), logprob_token_ids=yes + no,
                                detokenize=False)
        requests = [{"prompt_token_ids": self.prompt_ids(q), "multi_modal_data": {"image": image}}
                    for q in questions]
        out = np.zeros((len(questions), 2), dtype=np.float64)
        for i, result in enumerate(self._run(requests, params)):
            first = result.outputs[0].logprobs[0]
            out[i, 0] = sum(math.exp(first[t].logprob) for t in yes)
            out[i, 1] = sum(math.exp(first[t].logprob) for t in no)
        return out

    def close(self) -> None:
        shutdown(self.engine)
        self.engine = None
