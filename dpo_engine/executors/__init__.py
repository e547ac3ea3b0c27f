"""Executors: where a batch runs and which loaded model it runs on."""
