"""Fixtures of the model tests (the data helpers live in fashion_synthetic.py)."""

from __future__ import annotations

import pytest
from fashion_synthetic import TINY_TRAINING


@pytest.fixture
def tiny_training() -> dict:
    return dict(TINY_TRAINING)
