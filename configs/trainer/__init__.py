"""Trainer presets to compose after a task config: ``--config trainer/ddp.yaml``."""
