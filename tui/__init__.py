"""The Textual dashboard: a live view of a run, read from its store (``dpo-engine dashboard``)."""
