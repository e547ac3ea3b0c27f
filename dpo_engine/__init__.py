"""dpo-engine: build DPO preference datasets for vision-language models, resumable per record."""

__version__ = "0.1.0"
