"""What stages share: the batch size of a stage that needs a model, and of one that does not."""

from __future__ import annotations


class ModelStage:
    """A stage that runs a model: as many records per batch as ``--batch-size`` says."""

    model_role: str | None = None
    scope = "record"

    def batch_size(self, config) -> int:
        return config.batch_size


class ModelFree:
    """A stage that works on stored results only: big batches, no model to open."""

    model_role = None
    scope = "record"

    def batch_size(self, config) -> int:
        return 2048


def by_answer(rows) -> dict[int, list]:
    """Rows of one record grouped by answer (inner_idx), in their stored order."""
    grouped: dict[int, list] = {}
    for row in rows:
        grouped.setdefault(row.inner_idx, []).append(row)
    return grouped
