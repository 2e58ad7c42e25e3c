"""Measurement tools: ``python -m vir_lightning benchmark`` (speed and memory by resolution) and
``python -m vir_lightning study`` (ViR against ViT on the demo tasks)."""
