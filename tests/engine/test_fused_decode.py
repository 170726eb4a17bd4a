"""Stacked q/k/v and gate/up products for decode (``engine.fused_decode``): the unfused layers' results bit for bit,
the same parameters and state-dict keys, prompts through the bf16 weights."""

from __future__ import annotations

import copy

import pytest
import torch

from llavakit.engine.fused_decode import FusedDecodeAttention, FusedDecodeMLP, fuse_decode_projections
from llavakit.engine.linear import DECODE_ROWS, BF16DecodeLinear, fp16_decode_available, optimize_model
from tiny_models import hf_model, ours_from_hf

pytestmark = pytest.mark.skipif(not fp16_decode_available(), reason="no fbgemm fp16 kernels in this torch")


@pytest.fixture(scope="module")
def layers():
    plain = ours_from_hf(hf_model("llava", "qwen2", seed=11)).to(torch.bfloat16)  # q/k/v with biases
    unfused = copy.deepcopy(plain)
    for layer in unfused.model.language_model.layers:  # every part on its own fp16 product
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(layer.self_attn, name, BF16DecodeLinear(getattr(layer.self_attn, name)))
        for name in ("gate_proj", "up_proj"):
            setattr(layer.mlp, name, BF16DecodeLinear(getattr(layer.mlp, name)))
    fused = copy.deepcopy(plain)
    counts = fuse_decode_projections(fused, min_weight=0)
    return plain, unfused, fused, counts


def test_every_decoder_layer_is_fused_and_keeps_its_keys(layers):
    plain, _, fused, counts = layers
    n = plain.config.text.num_hidden_layers
    assert counts == {"FusedDecodeAttention": 3 * n, "FusedDecodeMLP": 2 * n}
    for layer in fused.model.language_model.layers:
        assert type(layer.self_attn) is FusedDecodeAttention and type(layer.mlp) is FusedDecodeMLP
    ours, ref = fused.state_dict(), plain.state_dict()
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert type(plain.model.language_model.layers[0].mlp).__name__ == "MLP"  # the original is left alone


@pytest.mark.parametrize("rows", [1, 3, DECODE_ROWS])
def test_few_rows_equal_the_unfused_products_bit_for_bit(layers, rows):
    _, unfused, fused, _ = layers
    x = torch.randn(1, rows, unfused.config.text.hidden_size, generator=torch.Generator().manual_seed(rows))
    x = x.to(torch.bfloat16)
    a, b = unfused.model.language_model.layers[1], fused.model.language_model.layers[1]
    for ours, ref in zip(b.self_attn.project(x), a.self_attn.project(x)):
        assert ours.shape == ref.shape and torch.equal(ours, ref)
    for ours, ref in zip(b.mlp.gate_up(x), a.mlp.gate_up(x)):
        assert torch.equal(ours, ref)
    assert torch.equal(b.mlp(x), a.mlp(x))


def test_prompts_use_the_bf16_weights(layers):
    plain, _, fused, _ = layers
    x = torch.randn(2, DECODE_ROWS + 5, plain.config.text.hidden_size).to(torch.bfloat16)
    a, b = plain.model.language_model.layers[0], fused.model.language_model.layers[0]
    for ours, ref in zip(b.self_attn.project(x), a.self_attn.project(x)):
        assert torch.equal(ours, ref)
    assert torch.equal(b.mlp(x), a.mlp(x))


def test_a_copy_has_its_own_packed_weights(layers):
    _, unfused, fused, _ = layers
    twin = copy.deepcopy(fused)
    x = torch.randn(1, 1, fused.config.text.hidden_size).to(torch.bfloat16)
    a, b = twin.model.language_model.layers[0], unfused.model.language_model.layers[0]
    assert a.mlp.gate_up_fp16.handle != fused.model.language_model.layers[0].mlp.gate_up_fp16.handle
    assert torch.equal(a.mlp(x), b.mlp(x))


def test_quantized_or_small_layers_are_not_fused():
    from llavakit.engine.quantize import quantize_llava

    model = ours_from_hf(hf_model("llava", "qwen2", seed=12)).to(torch.bfloat16)
    assert fuse_decode_projections(copy.deepcopy(model), min_weight=10**9) == {}  # too small together
    quantize_llava(model, "int8")
    assert fuse_decode_projections(model, min_weight=0) == {}


def test_optimize_model_fuses_only_with_the_bf16_weights_kept():
    model = ours_from_hf(hf_model("llava", "qwen2", seed=13)).to(torch.bfloat16)
    lean = copy.deepcopy(model)
    counts = optimize_model(model, min_fp16_weight=0, max_small_weight=0, fp16_decode=True)  # also on AVX2-only CPUs
    assert counts["FusedDecodeAttention"] > 0 and counts["FusedDecodeMLP"] > 0
    lean_counts = optimize_model(lean, min_fp16_weight=0, max_small_weight=0, keep_bf16_weights=False, fp16_decode=True)
    assert "FusedDecodeMLP" not in lean_counts  # without the bf16 weights prompts need each part's own fp16 copy
