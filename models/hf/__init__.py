"""The transformers backend: image-text-to-text and text chat models."""
