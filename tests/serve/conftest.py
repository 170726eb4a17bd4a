from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve tests need the [serve] extra (fastapi, uvicorn)")

from serve_helpers import API_KEY, Server, cli_server  # noqa: E402

from llavakit.tiny import write_tiny_checkpoint  # noqa: E402

MODEL = "tiny-llava"
# the shared server's limits, small so that the tests can reach them cheaply
MAX_TOKENS, MAX_IMAGES, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS = 64, 4, 300_000, 1_000_000


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("serve") / MODEL)


@pytest.fixture(scope="session")
def pipe(tiny_model: Path):  # noqa: ANN201
    """The tiny model loaded in this process, for apps run in a thread (``serve_helpers.app_server``)."""
    import llavakit

    return llavakit.load(tiny_model)


@pytest.fixture(scope="session")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """One ``llava serve`` for the session: API key on, remote images allowed (public hosts only), small limits."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    args = [
        "--api-key",
        API_KEY,
        "--allow-remote-images",
        "--max-batch-size",
        "8",
        "--max-tokens",
        str(MAX_TOKENS),
        "--max-images",
        str(MAX_IMAGES),
        "--max-image-bytes",
        str(MAX_IMAGE_BYTES),
        "--max-image-pixels",
        str(MAX_IMAGE_PIXELS),
    ]
    with cli_server(tiny_model, log, *args) as proc:
        yield Server(f"http://127.0.0.1:{proc.port}", MODEL, API_KEY, log)


@pytest.fixture(scope="session")
def ov_pipe(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny random LLaVA-OneVision model (the family that takes video), loaded in this process."""
    import llavakit

    return llavakit.load(write_tiny_checkpoint(tmp_path_factory.mktemp("serve-ov") / "tiny-ov", "llava_onevision", 1))
