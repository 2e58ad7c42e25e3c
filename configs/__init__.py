"""Packaged configs (YAML): ``python -m vir_lightning fit --config NAME.yaml`` finds them by name."""
