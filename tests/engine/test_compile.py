"""``torch.compile`` of the decode step: the same greedy tokens as eager, one graph for requests of any length.

Compiling the tiny decoder's step takes ~10-40 s on 2 CPU cores (inductor writes and builds C++); this file
compiles once. Skipped, with the reason, where inductor cannot build CPU kernels (no C++ compiler).
"""

from __future__ import annotations

import pytest
import torch

from llavakit.cli import _parser
from llavakit.engine import compile as engine_compile
from llavakit.engine.compile import CompileUnavailable, compile_decode_step, inductor_unavailable
from llavakit.engine.generate import stream_tokens
from tiny_models import hf_model, ours_from_hf


def _greedy(model, ids: list[int], n: int, step=None) -> list[int]:
    kw = {} if step is None else {"step": step}
    return [int(t[0]) for t in stream_tokens(model, torch.tensor([ids]), max_new_tokens=n, eos_token_id=[], **kw)]


@pytest.mark.skipif(inductor_unavailable() is not None, reason=f"torch.compile unavailable: {inductor_unavailable()}")
def test_compiled_step_gives_the_same_greedy_tokens_without_recompiling():
    from torch._dynamo.utils import counters

    model = ours_from_hf(hf_model("llava", "qwen2", seed=5))
    step = compile_decode_step()
    prompts = [[1, 17, 33, 8, 90, 41], list(range(3, 40))]  # different prompt and cache lengths
    graphs = counters["stats"]["unique_graphs"]
    for ids, n in zip(prompts, (12, 9)):
        assert _greedy(model, ids, n, step) == _greedy(model, ids, n)
    assert counters["stats"]["unique_graphs"] - graphs == 1  # one graph for every token of both requests


@pytest.mark.skipif(inductor_unavailable() is not None, reason=f"torch.compile unavailable: {inductor_unavailable()}")
def test_compiled_step_of_the_optimized_bf16_model():
    """What ``llavakit.load(..., dtype="bfloat16", compile=True)`` runs: the swapped Linears compile too (a
    oneDNN-packed decoder Linear once broke the graph)."""
    from llavakit.engine.linear import optimize_model

    model = ours_from_hf(hf_model("llava", "qwen2", seed=6)).to(torch.bfloat16)
    optimize_model(model)
    step = compile_decode_step()
    ids = [1, 17, 33, 8, 90, 41]
    assert _greedy(model, ids, 8, step) == _greedy(model, ids, 8)


@pytest.mark.skipif(inductor_unavailable() is not None, reason=f"torch.compile unavailable: {inductor_unavailable()}")
def test_compiled_step_calls_fbgemm_through_the_registered_op():
    """The tiny model's weights are below the fp16 kernels' size floor: lower it, so every decoder Linear and the
    head multiply through fbgemm (stacked q/k/v and gate/up, ``BF16DecodeLinear`` for the rest) and the graph
    holds the ``llavakit::fp16_linear`` op."""
    from llavakit.engine.linear import fp16_decode_available, optimize_model

    if not fp16_decode_available():
        pytest.skip("this torch build has no fbgemm fp16 kernels")
    model = ours_from_hf(hf_model("llava", "qwen2", seed=7)).to(torch.bfloat16)
    # fp16_decode=True: the default takes this path only where bf16 GEMMs are native (not on an AVX2-only CPU)
    counts = optimize_model(model, min_fp16_weight=0, max_small_weight=0, fp16_decode=True)
    n = model.config.text.num_hidden_layers  # o, down and the head alone; q/k/v and gate/up stacked
    assert counts == {"FusedDecodeAttention": 3 * n, "FusedDecodeMLP": 2 * n, "BF16DecodeLinear": 2 * n + 1} | {
        k: v for k, v in counts.items() if k not in ("FusedDecodeAttention", "FusedDecodeMLP", "BF16DecodeLinear")
    }
    step = compile_decode_step()
    ids = [1, 17, 33, 8, 90, 41]
    assert _greedy(model, ids, 8, step) == _greedy(model, ids, 8)


def _step_logits(model, step, ids: list[int], feed: list[int]) -> torch.Tensor:
    """Logits of ``step`` for each token of ``feed`` after a prefill of ``ids`` (teacher-forced) -> (len(feed), V)."""
    from llavakit.engine.kv_cache import KVCache

    cache = KVCache(model.config.text, 1, len(ids) + len(feed), dtype=model.dtype, device="cpu")
    with torch.no_grad():
        embeds = model.model.language_model.embed_tokens(torch.tensor([ids]))
        model(inputs_embeds=embeds, position_ids=torch.arange(len(ids))[None], cache=cache, logits_to_keep=1)
        return torch.cat(
            [step(model, torch.tensor([t]), torch.tensor([[len(ids) + i]]), cache, None) for i, t in enumerate(feed)]
        ).float()


@pytest.mark.skipif(inductor_unavailable() is not None, reason=f"torch.compile unavailable: {inductor_unavailable()}")
def test_frozen_step_of_int8_models_follows_each_model_and_restores_inductor_config(capfd):
    """The step is compiled with inductor's freezing (weights become constants of the graph, so int8 can use
    inductor's own kernel): two int8 models of the same shapes through one compiled step must each get their own
    weights, and the global flags it sets around each call (``freezing``, ``fx_graph_cache``) must be back as they
    were. Its kernel benchmarking prints nothing (in a terminal it would land inside the streamed answer)."""
    from torch._inductor import config as inductor_config

    from llavakit.engine.generate import decode_step
    from llavakit.engine.quantize import Int8Linear, quantize_llava

    step = compile_decode_step()
    config_before = inductor_config.freezing, inductor_config.fx_graph_cache
    ids, feed = [1, 17, 33, 8, 90, 41], [5, 77, 12, 60]
    for seed in (8, 9):
        model = ours_from_hf(hf_model("llava", "qwen2", seed=seed)).to(torch.bfloat16)
        quantize_llava(model, "int8+head")
        assert isinstance(model.lm_head, Int8Linear)
        eager, compiled = _step_logits(model, decode_step, ids, feed), _step_logits(model, step, ids, feed)
        assert (inductor_config.freezing, inductor_config.fx_graph_cache) == config_before
        assert (compiled - eager).abs().max() <= 0.02 * eager.abs().max(), seed  # bf16 rounding only
        assert compiled.argmax(-1).tolist() == eager.argmax(-1).tolist()
    err = capfd.readouterr().err
    assert "AUTOTUNE" not in err and "Autotune" not in err and "TypedStorage" not in err, err[:500]


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    engine_compile.inductor_unavailable.cache_clear()
    try:
        assert "no C++ compiler" in (inductor_unavailable() or "")
        with pytest.raises(CompileUnavailable, match="no C\\+\\+ compiler.*without --compile"):
            compile_decode_step()
        import llavakit

        with pytest.raises(CompileUnavailable):  # before the model is read (no such directory: not reached)
            llavakit.load("/nonexistent/model", compile=True)
    finally:
        monkeypatch.delenv("CXX")
        engine_compile.inductor_unavailable.cache_clear()


def test_cli_takes_compile_flag():
    for cmd in (["generate", "--prompt", "hi"], ["chat"], ["caption", "imgs/", "--out", "o.jsonl"]):
        assert _parser().parse_args([*cmd, "--compile"]).compile is True
        assert _parser().parse_args(cmd).compile is False


def test_many_compiled_pipelines_fit_dynamos_graph_cache():
    """dynamo's graph limit is raised (its default: 8 graphs) so that a compiled step never fails mid-answer for
    one recompilation too many (fullgraph=True); each model's step keeps its own graphs."""
    import torch._dynamo

    from llavakit.engine.compile import RECOMPILE_LIMIT, compile_decode_step, inductor_unavailable

    if inductor_unavailable():
        pytest.skip(inductor_unavailable())
    compile_decode_step()
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT >= 64
