"""The demo's checkpoint selection: ``python -m dpo_engine.demo.selection MODEL...`` prints each
model's hallucination rate (one line each, in order) on ShapesWorld validation questions, drawn with a seed of their own
(never the held-out set's: choosing on the figures we report would flatter them). ``demo
--iterate`` passes it to ``iterate`` as ``--select-cmd``, for our rounds and the control alike.
"""

from __future__ import annotations

import argparse

VALIDATION_SEED = 321


def command(temperature: float, top_k: int, n: int) -> str:
    """The ``--select-cmd`` that scores a model with these sampling settings on ``n`` images."""
    return (f"{{python}} -m dpo_engine.demo.selection {{models}} --temperature {temperature} --top-k {top_k} "
            f"--images {n}")


def main(argv: list[str] | None = None) -> None:
    from .proof import held_out

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args(argv)
    for model in args.models:  # one process for all: torch and transformers import once
        figures = held_out(model, args.images, seed=VALIDATION_SEED, temperature=args.temperature, top_k=args.top_k)
        print(figures.hallucination_rate, flush=True)


if __name__ == "__main__":
    main()
