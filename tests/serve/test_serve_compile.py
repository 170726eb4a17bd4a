"""``llava serve --compile``: the model worker's decode step compiled, its graphs built before the server answers
(a batch of 1, then of 2 or more), answers equal to the eager server's, and no compilation while requests run.

Compiling the tiny decoder's step twice takes ~40 s on 2 CPU cores: one test here compiles. Skipped, with the
reason, where inductor cannot build CPU kernels (no C++ compiler).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import app_server, image_bytes, user

from llavakit.cli import _parser, main
from llavakit.engine import compile as engine_compile
from llavakit.engine.compile import inductor_unavailable
from llavakit.engine.generate import decode_step


def test_serve_takes_compile_flag_and_refuses_it_without_a_compiler(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert _parser().parse_args(["serve", "--compile"]).compile is True
    assert _parser().parse_args(["serve"]).compile is False
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    engine_compile.inductor_unavailable.cache_clear()
    try:
        assert main(["serve", "--model", str(tiny_model), "--compile", "--port", "0"]) == 2
    finally:
        monkeypatch.delenv("CXX")
        engine_compile.inductor_unavailable.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llava serve: error: cannot compile the decode step: no C++ compiler")


def test_warm_up_refuses_a_step_that_fails_on_a_batch(pipe) -> None:  # noqa: ANN001
    """A step that works alone but raises on a batch (the worker would then run each row alone, slowly and
    quietly) stops ``serve --compile`` at startup with one line; no compilation needed to show it."""
    from types import SimpleNamespace

    from llavakit.engine.compile import CompileUnavailable
    from llavakit.serve.command import warm_up

    def step(model, tokens, *rest):  # noqa: ANN001, ANN002, ANN202
        if tokens.shape[0] > 1:
            raise RuntimeError("Unsupported: a dynamo error\n(its explanation, pages long)")
        return decode_step(model, tokens, *rest)

    warm_up(SimpleNamespace(model=pipe.model, processor=pipe.processor, step=step), 1)  # batches of 1 only: fine
    with pytest.raises(CompileUnavailable) as info:
        warm_up(SimpleNamespace(model=pipe.model, processor=pipe.processor, step=step), 4)
    assert str(info.value) == (
        "the compiled decode step failed on a batch of 2 (RuntimeError: Unsupported: a dynamo error); "
        "serve without --compile"
    )


def _answers(url: str, model: str) -> list[str]:
    """One request alone, then five at once (batches of 1 to 4 rows, joining and leaving at different steps)."""
    bodies = [
        {"messages": [user("What is it?", image_bytes(48, 40, seed=1))], "max_tokens": 9},
        *({"messages": [{"role": "user", "content": "Say " + "more " * i}], "max_tokens": 4 + 3 * i} for i in range(4)),
        {"messages": [user("And this?", image_bytes(60, 30, seed=2))], "max_tokens": 7},
    ]

    def ask(body: dict) -> str:
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": model, "temperature": 0, **body}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    first = ask(bodies[0])
    with ThreadPoolExecutor(5) as pool:
        return [first, *pool.map(ask, bodies[1:])]


@pytest.mark.skipif(inductor_unavailable() is not None, reason=f"torch.compile unavailable: {inductor_unavailable()}")
def test_compiled_server_answers_as_eager_without_compiling_per_request(
    tiny_model: Path,
    pipe,  # noqa: ANN001 - the eager pipeline of the same model
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch._dynamo.utils import counters

    from llavakit.serve.app import create_app
    from llavakit.serve.config import ServeConfig
    from llavakit.serve.shutdown import DrainingServer

    apps = []
    # build the server, do not run it
    monkeypatch.setattr(DrainingServer, "run", lambda self, **kw: apps.append(self.config.app))
    assert main(["serve", "--model", str(tiny_model), "--compile", "--max-batch-size", "4", "--port", "0"]) == 0
    (app,) = apps
    assert app.state.batcher.step is not decode_step  # the model worker steps through the compiled function
    graphs = counters["stats"]["unique_graphs"]
    with app_server(app) as url:
        compiled = _answers(url, tiny_model.name)
    assert counters["stats"]["unique_graphs"] == graphs  # every graph was built at startup
    assert app.state.metrics.batch_size.sum > app.state.metrics.batch_size.total  # some steps had several rows
    with app_server(create_app(pipe, ServeConfig(model_name=tiny_model.name, max_batch_size=4))) as url:
        assert compiled == _answers(url, tiny_model.name)
