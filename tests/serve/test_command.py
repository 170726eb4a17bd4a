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
        (["--default-max-tokens", "0"], "--default-max-tokens must be >= 1"),
        (["--max-image-pixels", "-5"], "--max-image-pixels"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--max-video-frames", "0"], "--max-video-frames must be >= 1"),
        (["--max-video-bytes", "0"], "--max-video-bytes must be >= 1"),
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


def test_default_max_tokens_flag(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``--default-max-tokens N`` is the max_tokens of a request that sets none (256 unless given, said in --help)."""
    import httpx
    from serve_helpers import app_server

    from llavakit.serve.shutdown import DrainingServer

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--default-max-tokens N max_tokens of a request that sets none (default 256;" in help_text
    apps = []
    # build the server, do not run it
    monkeypatch.setattr(DrainingServer, "run", lambda self, **kw: apps.append(self.config.app))
    assert main(["serve", "--model", str(tiny_model), "--default-max-tokens", "7"]) == 0
    (app,) = apps
    app.state.batcher.eos = set()  # the answer runs to its max_tokens
    with app_server(app) as url:
        body = {"model": tiny_model.name, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 7 and r.json()["choices"][0]["finish_reason"] == "length"
