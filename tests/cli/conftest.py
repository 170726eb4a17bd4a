"""Fixtures of the command-line tests."""

from __future__ import annotations

import pytest

from llavakit.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A tiny random llava_next checkpoint directory (one per test module)."""
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny", family="llava_next"))
