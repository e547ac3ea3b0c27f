"""How good are a run's pairs? Measured on ShapesWorld data, whose truth is known.

For every output pair the ShapesWorld reader counts the hallucinations of the chosen and the
rejected answer. A pair is correct when the chosen answer has fewer; a tie counts as not
correct. ``random_baseline`` is what picking chosen and rejected at random among the same
records' samples would score.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..dataset import decode_extra
from .world import Scene, read
from ..store import Store


@dataclass(frozen=True)
class QualityReport:
    pairs: int
    pair_accuracy: float
    tie_share: float
    chosen_hallucination_rate: float
    rejected_hallucination_rate: float
    random_baseline: float
    sample_hallucination_rate: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def quality_report(store: Store) -> QualityReport:
    correct = ties = chosen_bad = rejected_bad = n = 0
    records: dict[int, tuple[str, Scene]] = {}
    for row in store.iter_kept_pairs(images=False):
        truth = decode_extra(row["extra"]).get("truth")
        if truth is None:
            continue
        scene = Scene.from_json(truth) if isinstance(truth, str) else Scene.from_json(json.dumps(truth))
        records[row["rid"]] = (row["question"], scene)
        c = read(row["question"], row["chosen"], scene).hallucinations
        r = read(row["question"], row["rejected"], scene).hallucinations
        n += 1
        correct += c < r
        ties += c == r
        chosen_bad += c > 0
        rejected_bad += r > 0
    baseline_sum = 0.0
    sampled = bad_samples = 0
    for rid, (question, scene) in records.items():
        counts = [read(question, s.text, scene).hallucinations for s in store.samples_of(rid)]
        sampled += len(counts)
        bad_samples += sum(c > 0 for c in counts)
        ordered = len(counts) * (len(counts) - 1)
        if ordered:
            wins = sum(a < b for i, a in enumerate(counts) for j, b in enumerate(counts) if i != j)
            baseline_sum += wins / ordered
    return QualityReport(
        pairs=n,
        pair_accuracy=correct / n if n else 0.0,
        tie_share=ties / n if n else 0.0,
        chosen_hallucination_rate=chosen_bad / n if n else 0.0,
        rejected_hallucination_rate=rejected_bad / n if n else 0.0,
        random_baseline=baseline_sum / len(records) if records else 0.0,
        sample_hallucination_rate=bad_samples / sampled if sampled else 0.0,
    )
