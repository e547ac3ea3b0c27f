"""What the stages that need no model share."""

from __future__ import annotations


class ModelFree:
    """A stage that works on stored results only: big batches, no model to open."""

    model_role = None

    def batch_size(self, config) -> int:
        return 2048

    def model_key(self, config):
        return None

    def open_model(self, config):
        return None
