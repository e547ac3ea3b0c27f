"""The stages, one module per stage name. Pipelines (``dpo_engine/pipelines/``) put them in order.

A stage declares what it reads and writes, the settings that change its result and the model
role it needs; its ``process`` is a plain function of a batch. It never opens the database or
a model: the runner and the executor do that.
"""
