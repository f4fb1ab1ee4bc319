"""Fixtures for command tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def sentiment_data() -> None:
    """Skip when the VADER data cannot be fetched (fail instead under CI=true)."""
    from muxdeploy.training.datasets import FetchError, load_sentiment

    try:
        load_sentiment()
    except FetchError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"registry unreachable under CI: {exc}")
        pytest.skip(f"registry unreachable: {exc}")
