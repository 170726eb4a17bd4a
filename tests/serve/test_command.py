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
    assert main(["serve", "--model", str(tiny_model), "--port", "0", "--default-max-tokens", "7"]) == 0
    (app,) = apps
    app.state.batcher.eos = set()  # the answer runs to its max_tokens
    with app_server(app) as url:
        body = {"model": tiny_model.name, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 7 and r.json()["choices"][0]["finish_reason"] == "length"


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list:
    """``llava serve`` builds its server but does not run it: the uvicorn configs it would have run, in order."""
    from llavakit.serve.shutdown import DrainingServer

    configs: list = []
    monkeypatch.setattr(DrainingServer, "run", lambda self, **kw: configs.append(self.config))
    monkeypatch.delenv("LLAVA_API_KEY", raising=False)
    return configs


def _refused(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    """Exit code 2 and one ``llava serve: error:`` line, before any model is loaded and before "serving ..."."""
    import llavakit.pipeline

    def no_load(*a, **kw) -> None:  # noqa: ANN002, ANN003
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(llavakit.pipeline, "load", no_load)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llava serve: error:"), err
    return err[0]


@pytest.mark.parametrize(
    "flags, env, said",
    [  # an empty key would serve with no authentication at all, an empty host on every interface
        (["--api-key", ""], None, ["--api-key is empty (an unset variable?)", "leave the flag out"]),
        (["--api-key", "  "], None, ["--api-key is empty (an unset variable?)", "leave the flag out"]),
        ([], "", ["LLAVA_API_KEY is set but empty", "unset it"]),
        ([], " ", ["LLAVA_API_KEY is set but empty", "unset it"]),
        (["--host", ""], None, ["--host is empty (an unset variable?)", "127.0.0.1", "0.0.0.0"]),
        *[(["--port", p], None, [f"--port must be 0-65535, got {p}"]) for p in ("99999", "65536", "-1")],
        *[
            (["--host", h], None, [f"--host {h} does not resolve", "--host 127.0.0.1"])
            for h in ("999.1.1.1", "no-such-host.invalid")
        ],
    ],
)
def test_a_bad_key_host_or_port_is_refused_before_the_model_loads(
    tiny_model: Path,
    built: list,
    flags: list[str],
    env: str | None,
    said: list[str],
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if env is not None:
        monkeypatch.setenv("LLAVA_API_KEY", env)
    line = _refused(["--model", str(tiny_model), *flags], capsys, monkeypatch)
    assert all(x in line for x in said) and "Errno" not in line, line
    assert built == []


def test_api_key_sources(tiny_model: Path, built: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """No flag and no LLAVA_API_KEY: no key (as before); the variable is the default; the flag wins over it."""
    args = ["serve", "--model", str(tiny_model), "--port", "0"]
    assert main(args) == 0
    monkeypatch.setenv("LLAVA_API_KEY", "from-env")
    assert main(args) == 0
    assert main([*args, "--api-key", "from-flag"]) == 0
    assert [c.app.state.config.api_key for c in built] == [None, "from-env", "from-flag"]


def test_port_in_use_is_refused(
    tiny_model: Path, built: list, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as other:  # another server, listening
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        line = _refused(["--model", str(tiny_model), "--port", str(port)], capsys, monkeypatch)
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in line
    assert "another --port" in line and "stop the server" in line
    assert built == []


def test_port_0_is_a_free_port_named_in_the_serving_line(
    tiny_model: Path, built: list, capsys: pytest.CaptureFixture
) -> None:
    assert main(["serve", "--model", str(tiny_model), "--port", "0"]) == 0
    (config,) = built
    assert 0 < config.port <= 65535 and config.host == "127.0.0.1"
    assert f"on http://127.0.0.1:{config.port} " in capsys.readouterr().err


def test_an_address_family_the_kernel_lacks_is_skipped_as_asyncio_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """'localhost' resolving to ::1 and 127.0.0.1 on a kernel without IPv6: asyncio serves on 127.0.0.1, so the
    check does too; with no usable address at all it says so."""
    import socket

    from llavakit.serve import command

    real_socket = socket.socket
    both = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
    ]

    def no_ipv6(family: int = socket.AF_INET, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real_socket(family, *args, **kwargs)

    monkeypatch.setattr(command.socket, "getaddrinfo", lambda *a, **k: both)
    monkeypatch.setattr(command.socket, "socket", no_ipv6)
    assert command.check_address("localhost", 0) > 0
    monkeypatch.setattr(command.socket, "getaddrinfo", lambda *a, **k: both[:1])
    with pytest.raises(ValueError, match=r"--host localhost: no address it resolves to can be used \(::1 \(Address"):
        command.check_address("localhost", 0)
