"""vLLM backend figures against the transformers backend, on the ``small`` tiny LLaVA.

Runs in the vllm extra's environment (``.ci/vllm`` builds one at .venv-vllm):

    .venv-vllm/bin/python benchmarks/vllm_backend.py [--records N]

* vllm_sample_speedup_vs_hf: samples/s of ``generate`` on vLLM over transformers (k=10,
  64 new tokens, 8 records per call as the sample stage hands them over).
* vllm_score_speedup_vs_hf: answers/s of ``score`` on vLLM over transformers (k=10 answers
  of one record per call). Below 1 means transformers scores faster, which is why
  ``--score-backend auto`` picks hf.

The last stdout line is a JSON object. CPU figures here; there is no target on a CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=32)
    args = parser.parse_args()

    from PIL import Image

    from dpo_engine.demo import world
    from dpo_engine.models import open_model
    from dpo_engine.models.tiny import build_tiny_llava

    rng = random.Random(0)
    images = [Image.open(io.BytesIO(world.render(world.random_scene(rng), rng))).convert("RGB")
              for _ in range(args.records)]
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_llava(Path(tmp) / "small", seed=0, size="small")
        answers: list[list[str]] = []
        rates: dict[str, tuple[float, float]] = {}
        for backend in ("hf", "vllm"):
            model = open_model("image-text", path, device="cpu", dtype="float32", backend=backend)
            model.generate(images[:1], [world.DESCRIBE], keys=[0], k=2, max_new_tokens=4, temperature=0.7,
                           seed=0)  # warm-up
            t0 = time.perf_counter()
            samples = 0
            texts = []
            for start in range(0, len(images), 8):
                chunk = images[start : start + 8]
                gens = model.generate(chunk, [world.DESCRIBE] * len(chunk), keys=range(start, start + len(chunk)),
                                      k=10, max_new_tokens=64, temperature=0.7, seed=0)
                samples += sum(len(g) for g in gens)
                texts.extend([x.text for x in g] for g in gens)
            sample_rate = samples / (time.perf_counter() - t0)
            answers = answers or texts  # both backends score the same answers
            t0 = time.perf_counter()
            for image, record_answers in zip(images, answers):
                model.score(image, world.DESCRIBE, record_answers)
            score_rate = sum(len(a) for a in answers) / (time.perf_counter() - t0)
            model.close()
            rates[backend] = (sample_rate, score_rate)
            print(f"{backend}: {sample_rate:.1f} samples/s, {score_rate:.1f} answers scored/s", file=sys.stderr)
    figures["vllm_sample_speedup_vs_hf"] = round(rates["vllm"][0] / rates["hf"][0], 3)
    figures["vllm_score_speedup_vs_hf"] = round(rates["vllm"][1] / rates["hf"][1], 3)
    figures.update({f"{b}_{what}_per_s": round(r[i], 1) for b, r in rates.items()
                    for i, what in enumerate(("samples", "answers_scored"))})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
