"""What stages share: the batch size of a stage that needs a model, and of one that does not."""

from __future__ import annotations


class ModelStage:
    """A stage that runs a model: as many records per batch as ``--batch-size`` says."""

    model_role: str | None = None
    model_use = "generate"  # or "score": which backend serves it (RunConfig.backend_for)
    path_use: str | None = None  # "sample", "score" or "check": the image-text work it does (Family.path)
    scope = "record"

    def batch_size(self, config) -> int:
        return config.batch_size

    def backend_settings(self, config) -> dict:
        """The backend, in the settings hash when it is not the default: two backends draw and
        round differently, so their results are not interchangeable."""
        backend = config.backend_for(self.model_use)
        return {} if backend == "hf" else {"backend": backend}


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
