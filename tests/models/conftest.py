"""Fixtures of the model tests (the data helpers live in fashion_synthetic.py)."""

from __future__ import annotations

import dataclasses

import pytest
from fashion_synthetic import TINY_TRAINING

from pipeline.settings import TrainingSettings, get_settings


@pytest.fixture
def tiny_training() -> TrainingSettings:
    """The settings' training section with the TINY_TRAINING values."""
    return dataclasses.replace(get_settings().training, **TINY_TRAINING)
