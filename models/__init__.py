"""Attribute networks: building, training, evaluation, the model registry and batch inference."""
