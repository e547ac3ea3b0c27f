"""The proof that the pairs work: iterate in ShapesWorld, train on the pairs, and measure how
often the trained model hallucinates on questions it never saw, against a control trained the
same way on pairs drawn at random from the same samples.

``WORK_DIR/iterate.json``::

    {"<pipeline>": {"rounds": [{"round": 0, "hallucination_rate": …, "omission_rate": …,
                                "pairs": …, "pair_accuracy": …}, …],
                    "control": [{"round": 0, "hallucination_rate": …, "omission_rate": …}, …]}}

Entry ``r`` describes the model after ``r`` rounds of training (0: the untrained instruct
model); its ``pairs`` and ``pair_accuracy`` are those of the pairs made from its own samples
(the next round's run; none for the last model).

The control iterates the same way with random preferences: its round ``r`` model is its round
``r-1`` model trained, with the same settings, on as many pairs as ours in round ``r``, on the
same records, each pair two of that record's answers drawn at random from the samples of the
control's own round ``r-1`` model (in round 1 these are our samples: the same model, the same
seed). Drawing the later rounds' control pairs from *our* samples instead would hand the
control the gains of our training (the chosen answers' NLL distils the better model into it).
With a ``select_cmd`` the control keeps its best epoch by the same command, as ours does.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from . import world

HELD_OUT = 96  # images, each asked one question, answered K times
HELD_OUT_K = 10
HELD_OUT_SEED = 123


@dataclass(frozen=True)
class HeldOut:
    hallucination_rate: float  # share of answers naming something the image does not hold
    omission_rate: float  # share of answers leaving out something it holds (a model that says
    # nothing hallucinates nothing: this keeps the first figure honest)


def held_out(path: str | Path, n: int = HELD_OUT, k: int = HELD_OUT_K, seed: int = HELD_OUT_SEED,
             temperature: float = 0.7, top_k: int = 50) -> HeldOut:
    """Sample ``k`` answers (at ``temperature`` and ``top_k``, as the runs sample, through the normal adapter)
    to ``n`` fixed ShapesWorld questions of the kinds the demo's dataset asks, and read them with
    the world's reader."""
    from PIL import Image

    from ..models.hf.vlm import ImageTextModel

    rng = random.Random(seed)
    model = ImageTextModel(str(path), device="cpu")
    scenes = [world.random_scene(rng) for _ in range(n)]
    questions = [world.questions_for(s, rng, yes_no_share=0.0) for s in scenes]
    images = [Image.open(io.BytesIO(world.render(s, rng))).convert("RGB") for s in scenes]
    answers = model.generate(images, questions, keys=list(range(n)), k=k, max_new_tokens=40, temperature=temperature,
                             seed=seed, top_k=top_k)
    readings = [world.read(q, a.text, s) for s, q, some in zip(scenes, questions, answers) for a in some]
    return HeldOut(round(sum(r.hallucinations > 0 for r in readings) / len(readings), 4),
                   round(sum(r.omissions > 0 for r in readings) / len(readings), 4))


def write_control_pairs(round_dir: Path, samples_dir: Path, out: Path, seed: int) -> int:
    """Our round's TRL pairs with chosen and rejected replaced by two answers to the same
    record drawn at random (seeded) from the samples in ``samples_dir``'s store (a run on the
    same slice): the same images, prompts and number of pairs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..store import Store

    store = Store.in_work_dir(round_dir, create=False, readonly=True)
    try:
        rids = [row["rid"] for row in store.iter_kept_pairs(images=False)]  # the order the export wrote
    finally:
        store.close()
    pairs = round_dir / "pairs.trl.parquet"
    store = Store.in_work_dir(samples_dir, create=False, readonly=True)
    try:
        texts = {rid: [s.text for s in store.samples_of(rid)] for rid in set(rids)}
    finally:
        store.close()
    table = pq.read_table(pairs)
    if table.num_rows != len(rids):
        raise RuntimeError(f"{pairs} holds {table.num_rows} pairs but the store {len(rids)}: export it again")
    rng = random.Random(seed)
    chosen, rejected = [], []
    for rid in rids:
        a, b = rng.sample(texts[rid], 2)
        chosen.append([{"role": "assistant", "content": a}])
        rejected.append([{"role": "assistant", "content": b}])
    for name, values in (("chosen", chosen), ("rejected", rejected)):
        column = table.schema.get_field_index(name)
        table = table.set_column(column, table.schema.field(name), pa.array(values, table.schema.field(name).type))
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_suffix(".tmp")
    pq.write_table(table, staged)
    staged.replace(out)
    return table.num_rows


def measure(work: Path, config, states, base: Path, settings, seed: int, n: int, observer, log) -> dict:
    """Held-out figures (on ``n`` images) per round for our chain of models and for the
    control's, the pair accuracy of each round's pairs; returns an ``iterate.json`` entry.
    ``settings`` (``IterateSettings``) trains the control's rounds as ours were trained."""
    from dataclasses import replace

    from .. import engine
    from ..iterate import SCORES, pick_best
    from ..store import Store
    from ..training import epoch_models, train_dpo
    from .quality import quality_report

    ours = [base] + [Path(s.model) for s in states]
    rounds = []
    for r, model in enumerate(ours):
        figures = held_out(model, n, temperature=config.temperature, top_k=config.top_k)
        entry = {"round": r, "hallucination_rate": figures.hallucination_rate, "omission_rate": figures.omission_rate,
                 "pairs": None, "pair_accuracy": None}
        if r < len(states):
            store = Store.in_work_dir(states[r].work_dir, create=False, readonly=True)
            try:
                report = quality_report(store)
            finally:
                store.close()
            entry.update(pairs=report.pairs, pair_accuracy=round(report.pair_accuracy, 4))
        log(f"round {r}: held-out hallucination rate {figures.hallucination_rate:.3f}")
        rounds.append(entry)
    control, previous = [], base
    for r in range(len(ours)):
        if r > 0:
            state = states[r - 1]
            folder = work / "control" / f"round-{r}"
            samples = Path(state.work_dir)
            if r > 1:  # the control's own model answers this round's questions
                samples = folder / "run"
                models = {**config.models, "instruct": str(previous)}
                if "reward" in models:
                    models["reference"] = config.model_path("instruct")
                engine.run_pipeline(replace(config, dataset=str(work / "slices" / f"round-{r}.jsonl"),
                                            work_dir=str(samples), models=models), observer)
            pairs = folder / "pairs.trl.parquet"
            write_control_pairs(Path(state.work_dir), samples, pairs, seed + r)
            train_dpo(pairs, previous, folder / "model", settings.train_for(r), log=log)
            previous = folder / "model"
            if settings.select_cmd:  # its best epoch, chosen as ours were
                previous = pick_best(epoch_models(previous), settings.select_cmd, folder / SCORES, log)
        figures = held_out(previous, n, temperature=config.temperature, top_k=config.top_k)
        log(f"control round {r}: held-out hallucination rate {figures.hallucination_rate:.3f}")
        control.append({"round": r, "hallucination_rate": figures.hallucination_rate,
                        "omission_rate": figures.omission_rate})
    return {"rounds": rounds, "control": control}


def chart(results: dict, out: Path) -> Path:
    """An SVG line chart: held-out hallucination rate per round, each pipeline's pairs against
    its random-pair control."""
    width, height, left, bottom, top, right = 660, 320, 60, 40, 30, 230
    series = []
    palette = {"dpo_reward": "#1f77b4", "divide_and_conquer": "#2ca02c"}
    for pipeline, entry in results.items():
        colour = palette.get(pipeline, "#9467bd")
        series.append((f"{pipeline}", colour, "", [e["hallucination_rate"] for e in entry["rounds"]]))
        series.append((f"{pipeline} control", colour, "6 4", [e["hallucination_rate"] for e in entry["control"]]))
    n = max(len(v) for *_, v in series)
    peak = max(0.05, max(max(v) for *_, v in series)) * 1.15
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i):
        return left + (plot_w * i / max(1, n - 1))

    def y(v):
        return top + plot_h * (1 - v / peak)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="18" font-size="13">held-out hallucination rate per round (ShapesWorld)</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>']
    for tick in range(5):
        v = peak * tick / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" stroke="#ddd"/>')
    for i in range(n):
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">round</text>')
    for k, (name, colour, dash, values) in enumerate(series):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" '
                     f'stroke-dasharray="{dash}"/>')
        parts += [f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>' for i, v in enumerate(values)]
        ly = top + 10 + 18 * k
        parts.append(f'<line x1="{width - right + 10}" y1="{ly}" x2="{width - right + 34}" y2="{ly}" '
                     f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
        parts.append(f'<text x="{width - right + 40}" y="{ly + 4}">{name}</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")
    return out


def record(work: Path, pipeline: str, entry: dict) -> dict:
    """Add ``pipeline``'s entry to ``WORK_DIR/iterate.json`` (kept: other pipelines' entries) and
    redraw the chart ``WORK_DIR/iterate.svg``; returns the whole file's content."""
    path = work / "iterate.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[pipeline] = entry
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(results, indent=2) + "\n")
    staged.replace(path)
    chart(results, work / "iterate.svg")
    return results
