import pytest

from llavakit.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random LLaVA-NeXT checkpoint: its answers are noise; the runner must score what it said."""
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("eval_model") / "tiny", family="llava_next"))
