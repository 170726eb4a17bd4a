"""``llava serve`` flags: bad values end with one line and exit code 2; no --model falls back to a model dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.serve.command import resolve_model


@pytest.mark.parametrize(
    "flags, text",
    [
        (["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["--max-image-pixels", "-5"], "--max-image-pixels"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_bad_flags(tiny_model: Path, flags: list[str], text: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--model", str(tiny_model), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llava serve: error:") and text in err[0]


def test_default_model_resolves_to_a_checkpoint() -> None:
    path, name = resolve_model(None)  # the bundled model, or (until it ships) a tiny random one, said on stderr
    assert (Path(path) / "config.json").exists() and name
    assert resolve_model("/some/dir/my-llava/") == ("/some/dir/my-llava/", "my-llava")
