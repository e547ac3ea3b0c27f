"""A model-free stage for the worker tests, importable by spawned worker processes: its answer
(4 MB a record) outgrows a pipe's buffer, so a worker is still writing it while the driver is
busy elsewhere."""

from dpo_engine.stage import Outputs, SampleRow

ANSWER_CHARS = 4_000_000


class BulkyAnswer:
    name = "bulky"
    model_role = None
    scope = "record"
    after: tuple = ()
    reads: tuple = ()
    writes = ("samples",)

    def process(self, batch, model, config):
        out = Outputs()
        for rid in batch.rids:
            out.samples.append(SampleRow(rid, 0, "x" * ANSWER_CHARS, 0, 0, 0))
        return out
