"""The image-text-to-text adapter: sampling answers and scoring their log-probabilities.

Any HF-native checkpoint served by ``AutoModelForImageTextToText`` + ``AutoProcessor`` with a
chat template works (``llava-hf/llava-1.5-7b-hf`` is the reference case). Two things make it
fast and reproducible:

* **Sampling** puts several records in one ``generate`` call. Image + prompt run through the
  model once per record; the resulting KV cache is copied k times and decoding continues
  from it, so neither the image nor the prompt is encoded k times. The random draws come
  from a per-answer stream seeded by ``(seed, record, answer index)``, not from torch's global
  generator, so an answer does not depend on which other records shared its batch.
* **Scoring** runs image + question once per record, keeps the KV cache of that prefix and
  scores the record's k answers against it in one right-padded batch: the image and the prompt
  are encoded once instead of 2k times.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..base import Generation
from ..family import MROPE_FAMILIES, Family, describe_path, detect_family, sliding_window
from ..runtime import empty_cache, quiet_transformers, resolve_device, resolve_dtype, synchronize
from ..sampling import SeededSampler, row_uniforms
from ..vocab import end_of_turn_id, stop_token_ids, yes_no_token_ids

# Processor outputs with one entry per token: they follow input_ids when it is cut or extended.
TOKEN_ALIGNED = ("token_type_ids", "mm_token_type_ids", "cross_attention_mask")


class ImageTextModel:
    """An image-text-to-text checkpoint ready to sample answers and score them."""

    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False):
        from transformers import AutoModelForImageTextToText

        quiet_transformers()
        self.path = Path(path)
        self.family: Family = detect_family(path, trust_remote_code=trust_remote_code)
        remote = self.family.remote_code
        if self.family.kind != "image-text-to-text":
            raise ValueError(
                f"{path} is a {self.family.model_type} text-only model; this role needs an "
                "image-text-to-text checkpoint"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor = load_processor(path, self.family)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=self.dtype, trust_remote_code=remote)
        except pickle.UnpicklingError as exc:  # torch's weights-only loader met more than tensors
            raise ValueError(f"{path}: its .bin weights hold pickled objects besides tensors; refused, since loading "
                             "them would run code from the file (use a safetensors copy from a source you trust)"
                             ) from exc
        self.model.to(self.device).eval()
        # Our own processors (models.omnilmm, models.minicpmv) name token ids the real checkpoints'
        # configs do not carry (where the image goes), and stop tokens their configs leave out.
        for key, value in getattr(self.processor, "config_ids", {}).items():
            if getattr(self.model.config, key, None) is None:
                setattr(self.model.config, key, value)
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.stop_ids = sorted({*stop_token_ids(self.model.generation_config, self.tokenizer),
                                *getattr(self.processor, "stop_ids", ())})
        self.end_id = end_of_turn_id(self.processor, self.tokenizer, self.stop_ids)
        self.model_seconds = 0.0  # wall time spent inside model calls (for overhead figures)
        self.taken: dict[str, str] = {}  # the path each kind of work took last: "fast" or "plain"

    # ----------------------------------------------------------------- prompts
    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _window(self) -> int | None:
        """The text model's sliding-attention window, if it has sliding layers: the fast paths
        take only sequences that fit it (a copied or shared cache would need the window's own
        bookkeeping)."""
        return sliding_window(self.model.config.get_text_config())

    def _fits(self, use: str, length: int) -> bool:
        window = self._window()
        taken = self.family.fast(use) and (window is None or length <= window)
        self.taken[use] = "fast" if taken else "plain"
        return taken

    @property
    def paths(self) -> dict[str, str]:
        """Which path sampling, scoring and checks take, in words (for logs and status)."""
        return {use: describe_path(self.family, use, self._window()) for use in ("sample", "score", "check")}

    def _encode(self, images: list[Image.Image], prompts: list[str]) -> dict[str, torch.Tensor]:
        bos = self.tokenizer.bos_token
        add_special = not (bos and all(p.startswith(bos) for p in prompts))
        # One list of images per prompt: Gemma 3, SmolVLM, mllama and PaliGemma read a flat list
        # as every image belonging to the first prompt; the others accept both forms.
        enc = self.processor(images=[[image] for image in images], text=prompts, return_tensors="pt",
                             padding=True, add_special_tokens=add_special)
        enc.pop("labels", None)  # PaliGemma's processor returns them; the model would compute a loss
        out = {}
        for key, value in enc.items():
            if torch.is_floating_point(value):
                value = value.to(self.dtype)
            out[key] = value.to(self.device)
        return out

    # ----------------------------------------------------------------- sampling
    @torch.inference_mode()
    def generate(self, images: list[Image.Image], questions: list[str], *, keys: Sequence[int],
                 k: int, max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0, top_k: int = 0) -> list[list[Generation]]:
        """k sampled answers for each (image, question); ``keys`` are the records' ids."""
        from transformers import GenerationConfig, LogitsProcessorList, StaticCache

        t0 = time.perf_counter()
        enc = self._encode(images, [self.prompt(q) for q in questions])
        ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
        prompt_len = ids.shape[1]
        uniforms = torch.from_numpy(
            row_uniforms(seed, [(rid, j) for rid in keys for j in range(k)], max_new_tokens)
        ).to(self.device)
        sampler = LogitsProcessorList([SeededSampler(uniforms, temperature, top_p, prompt_len, top_k)])
        config = GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        if self._fits("sample", prompt_len + max_new_tokens):
            # Encode image + prompt once per record (all but the last prompt token), copy the
            # KV cache k times, and let generate continue from the last prompt token.
            # Decoding writes into a preallocated static cache: a growing cache re-copies the
            # whole prompt at every step, which costs more than the model itself on small models.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            head = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                              use_cache=True, logits_to_keep=1, **_token_aligned(enc, prompt_len - 1))
            cache = StaticCache(config=self.model.config, max_cache_len=prompt_len + max_new_tokens)
            for i, layer in enumerate(head.past_key_values.layers):
                cache.update(layer.keys.repeat_interleave(k, 0), layer.values.repeat_interleave(k, 0), i)
            del head
            out = self.model.generate(input_ids=ids.repeat_interleave(k, 0),
                                      attention_mask=mask.repeat_interleave(k, 0), past_key_values=cache,
                                      generation_config=config, logits_processor=sampler)
        else:
            config.num_return_sequences = k
            out = self.model.generate(input_ids=ids, attention_mask=mask, **enc,
                                      generation_config=config, logits_processor=sampler)
        synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        return self._decode(out[:, prompt_len:].cpu(), len(questions), k)

    def _decode(self, generated: torch.Tensor, n_records: int, k: int) -> list[list[Generation]]:
        stops = set(self.stop_ids)
        lengths = [next((i + 1 for i, t in enumerate(row) if t in stops), len(row)) for row in generated.tolist()]
        texts = self.tokenizer.batch_decode(
            [row[: n] for row, n in zip(generated.tolist(), lengths)], skip_special_tokens=True
        )
        gens = [Generation(t.strip(), n) for t, n in zip(texts, lengths)]
        return [gens[i * k : (i + 1) * k] for i in range(n_records)]

    @torch.inference_mode()
    def generate_reference_way(self, image: Image.Image, question: str, *, k: int,
                               max_new_tokens: int, temperature: float) -> list[Generation]:
        """The reference engine's way, for benchmarks only: one record per call, its k repeats
        as a batch with the image re-encoded for every repeat."""
        t0 = time.perf_counter()
        enc = self._encode([image] * k, [self.prompt(question)] * k)
        out = self.model.generate(**enc, do_sample=True, temperature=temperature,
                                  max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids,
                                  pad_token_id=self.tokenizer.pad_token_id)
        synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        return self._decode(out[:, enc["input_ids"].shape[1]:].cpu(), 1, k)[0]

    def _after_prefix(self, rows: list[list[int]], prefix_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids of sequences that continue a cached prefix, and the attention mask
        over prefix + sequence."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, prefix_len : prefix_len + len(row)] = 1
        return ids, mask

    # ----------------------------------------------------------------- scoring
    def answer_ids(self, answer: str) -> list[int]:
        """Token ids scored for an answer: its tokens plus the token the chat template ends an
        assistant turn with."""
        return self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.end_id]

    @torch.inference_mode()
    def score(self, image: Image.Image, question: str, answers: Sequence[str]) -> list[np.ndarray]:
        """Per-token log-probs (float32) of each answer given image + question."""
        if not answers:
            return []
        t0 = time.perf_counter()
        enc = self._encode([image], [self.prompt(question)])
        prefix_len = enc["input_ids"].shape[1]
        ids = [self.answer_ids(a) for a in answers]
        if not self._fits("score", prefix_len + max(len(x) for x in ids)):
            return self.score_full(image, question, answers, batch_size=len(answers))
        head = self.model(**enc, use_cache=True, logits_to_keep=1)
        first_logp = torch.log_softmax(head.logits[0, -1].float(), dim=-1)
        batch, mask = self._after_prefix(ids, prefix_len)
        cache = head.past_key_values
        cache.batch_repeat_interleave(len(ids))
        body = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device),
                          past_key_values=cache, use_cache=False, **self._after_image(prefix_len, batch.shape))
        results = []
        for i, row in enumerate(ids):
            n = len(row)
            target = torch.tensor(row, device=self.device)
            logits = body.logits[i, : n - 1].float()
            rest = logits.gather(1, target[1:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
            values = torch.cat([first_logp[target[:1]], rest])
            results.append(values.cpu().numpy().astype(np.float32))
        synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        return results

    @torch.inference_mode()
    def score_full(self, image: Image.Image, question: str, answers: Sequence[str], *,
                   batch_size: int = 1) -> list[np.ndarray]:
        """Score full prompt+answer sequences, the image re-encoded with each: the fallback for
        M-RoPE families and the plain reference the fast path is tested against."""
        t0 = time.perf_counter()
        prompt = self.prompt(question)
        results: list[np.ndarray] = []
        for start in range(0, len(answers), batch_size):
            chunk = answers[start : start + batch_size]
            enc = self._encode([image] * len(chunk), [prompt] * len(chunk))
            prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
            ids = [self.answer_ids(a) for a in chunk]
            width = max(len(x) for x in ids)
            tail = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
            tail_mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, row in enumerate(ids):
                tail[i, : len(row)] = torch.tensor(row)
                tail_mask[i, : len(row)] = 1
            enc["input_ids"] = torch.cat([prompt_ids, tail.to(self.device)], dim=1)
            enc["attention_mask"] = torch.cat([prompt_mask, tail_mask.to(self.device)], dim=1)
            _extend_token_aligned(enc, width, answer_type=1 if self.family.model_type == "paligemma" else 0)
            logits = self.model(**enc).logits
            p = prompt_ids.shape[1]
            for i, row in enumerate(ids):
                n = len(row)
                lg = logits[i, p - 1 : p - 1 + n].float()
                target = torch.tensor(row, device=self.device)
                values = lg.gather(1, target[:, None])[:, 0] - torch.logsumexp(lg, dim=-1)
                results.append(values.cpu().numpy().astype(np.float32))
        synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        return results

    def _after_image(self, prefix_len: int, shape: torch.Size) -> dict:
        """Position ids for tokens that continue a cached image + prompt prefix. M-RoPE families
        (Qwen-VL) give the text after an image 3-D positions shifted by how much the image's
        grid positions fell short of its token count (``rope_deltas``, which the model keeps
        from the prefix's forward); the others count positions themselves."""
        if self.family.model_type not in MROPE_FAMILIES:
            return {}
        rows, width = shape
        steps = torch.arange(prefix_len, prefix_len + width, device=self.device)
        positions = steps[None, :] + self.model.model.rope_deltas.reshape(-1, 1)[:1]
        return {"position_ids": positions[None].expand(3, rows, width)}

    # ----------------------------------------------------------------- yes/no checks
    def yes_no_ids(self) -> tuple[list[int], list[int]]:
        """The labeler tokenizer's ids of yes/Yes and no/No (``models.vocab``)."""
        return yes_no_token_ids(self.tokenizer, self.path)

    def _image_token_id(self) -> int | None:
        cfg = self.model.config
        value = getattr(cfg, "image_token_id", None)
        return value if value is not None else getattr(cfg, "image_token_index", None)

    @torch.inference_mode()
    def yes_no(self, image: Image.Image, questions: Sequence[str], *, chunk: int = 16) -> np.ndarray:
        """(p_yes, p_no) of the first answer token for each question about one image.

        The image and the prompt text before the question are encoded once; the questions run
        against that cached prefix, ``chunk`` at a time, and only each row's last position is
        projected onto the vocabulary."""
        if not questions:
            return np.zeros((0, 2), dtype=np.float64)
        prompts = [self.prompt(q) for q in questions]
        shared = self._shared_prefix(image, prompts) if self.family.fast("check") else None
        if shared is None or not self._fits("check", max(len(r) for r in shared[0])):
            self.taken["check"] = "plain"
            return self.yes_no_full(image, questions, batch_size=chunk)
        t0 = time.perf_counter()
        rows, prefix_len, pixels = shared
        yes, no = self._yes_no_index()
        head = self.model(input_ids=torch.tensor([rows[0][:prefix_len]], device=self.device),
                          use_cache=True, logits_to_keep=1, **pixels)
        layers = [(layer.keys, layer.values) for layer in head.past_key_values.layers]
        del head
        out = []
        for start in range(0, len(rows), chunk):
            tails = [r[prefix_len:] for r in rows[start : start + chunk]]
            ids, mask = self._after_prefix(tails, prefix_len)
            # Every tail position is projected and each row's last real one picked: transformers
            # before 5.23 reads a per-row logits_to_keep as sequence positions shared by all rows,
            # and the tails are short next to the prefix, so the extra rows cost little.
            last = torch.tensor([len(t) - 1 for t in tails], device=self.device)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                past_key_values=_repeated_cache(layers, len(tails)), use_cache=False,
                                **self._after_image(prefix_len, ids.shape)).logits
            out.append(self._yes_no_probs(logits[torch.arange(len(tails), device=self.device), last], yes, no))
        synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        return np.concatenate(out)

    def _yes_no_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(self, "_yes_no_cache"):
            yes, no = self.yes_no_ids()
            self._yes_no_cache = (torch.tensor(yes, device=self.device), torch.tensor(no, device=self.device))
        return self._yes_no_cache

    @staticmethod
    def _yes_no_probs(logits: torch.Tensor, yes: torch.Tensor, no: torch.Tensor) -> np.ndarray:
        probs = torch.softmax(logits.float(), dim=-1)
        return torch.stack([probs[:, yes].sum(-1), probs[:, no].sum(-1)], dim=1).double().cpu().numpy()

    def _shared_prefix(self, image: Image.Image, prompts: list[str]):
        """Token ids of every prompt with the image expanded, the length of the prefix they all
        share (image included), and the image inputs for that prefix; None when that cannot be
        established.

        Only the first prompt goes through the processor. Its expansion of the image (a run of
        image tokens, or tokens around them, or none) must lie inside the text all prompts
        share; the other prompts then equal the first one's expanded head + their own text."""
        first = self._encode([image], prompts[:1])
        expanded = first.pop("input_ids")[0].tolist()
        first.pop("attention_mask", None)
        bos = self.tokenizer.bos_token
        add_special = not (bos and all(p.startswith(bos) for p in prompts))
        plain = self.tokenizer(prompts, add_special_tokens=add_special)["input_ids"]
        common = min(len(r) for r in plain)
        for r in plain[1:]:
            common = min(common, next((i for i, (a, b) in enumerate(zip(plain[0], r)) if a != b), common))
        head = expanded[: common + len(expanded) - len(plain[0])]
        if not head or head + plain[0][common:] != expanded:  # the expansion reaches past the shared text
            return None
        rows = [head + r[common:] for r in plain]
        prefix_len = min(len(head), min(len(r) for r in rows) - 1)
        image_id = self._image_token_id()
        if prefix_len <= 0 or (image_id is not None and any(image_id in r[prefix_len:] for r in rows)):
            return None
        return rows, prefix_len, _token_aligned(first, prefix_len)

    @torch.inference_mode()
    def yes_no_full(self, image: Image.Image, questions: Sequence[str], *, batch_size: int = 1) -> np.ndarray:
        """Each question with the image encoded again, ``batch_size`` at a time: the fallback
        for M-RoPE families and (with batch_size=1) the reference's way, for benchmarks."""
        t0 = time.perf_counter()
        yes, no = self._yes_no_index()
        out = []
        for start in range(0, len(questions), batch_size):
            chunk = [self.prompt(q) for q in questions[start : start + batch_size]]
            enc = self._encode([image] * len(chunk), chunk)  # left padded: the last position is real
            logits = self.model(**enc, logits_to_keep=1).logits[:, -1]
            out.append(self._yes_no_probs(logits, yes, no))
        synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        return np.concatenate(out) if out else np.zeros((0, 2))

    def close(self) -> None:
        del self.model
        empty_cache(self.device)


def load_processor(path: str | Path, family: Family):
    """The checkpoint's processor; OmniLMM's real checkpoints ship none and MiniCPM-V's needs its
    own code, so those two families get ours (``models.omnilmm``, ``models.minicpmv``)."""
    from transformers import AutoProcessor

    if family.model_type == "omnilmm":
        from ..omnilmm import OmniLMMProcessor

        return OmniLMMProcessor.from_pretrained(path)
    if family.model_type == "minicpmv" and not family.remote_code:
        from ..minicpmv import MiniCPMVProcessor

        return MiniCPMVProcessor.from_pretrained(path)
    return AutoProcessor.from_pretrained(path, trust_remote_code=family.remote_code)


def _repeated_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], n: int):
    """A cache holding one prefix's keys and values n times over (views, not copies)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys.expand(n, *keys.shape[1:]), values.expand(n, *values.shape[1:]), i)
    return cache


def _token_aligned(enc: dict, length: int) -> dict:
    """``enc`` with its per-token entries cut to the first ``length`` tokens."""
    return {k: (v[:, :length] if k in TOKEN_ALIGNED else v) for k, v in enc.items()}


def _extend_token_aligned(enc: dict, width: int, *, answer_type: int) -> None:
    """Extend the per-token entries over ``width`` appended answer tokens: token types get
    ``answer_type`` (PaliGemma marks the suffix it predicts with 1, the others text with 0); the
    cross-attention mask repeats the prompt's last row (answer tokens see the image as it did)."""
    for key in TOKEN_ALIGNED:
        value = enc.get(key)
        if value is None:
            continue
        if key == "cross_attention_mask":
            tail = value[:, -1:].expand(-1, width, *value.shape[2:])
        else:
            tail = torch.full((value.shape[0], width), answer_type if key == "token_type_ids" else 0,
                              dtype=value.dtype, device=value.device)
        enc[key] = torch.cat([value, tail], dim=1)
