"""Linear swaps for inference: int8 / int4 weight-only kernels, the fp16 decode path, oneDNN packing.

Tolerances: "tight" compares a kernel with the same arithmetic done in float32 on the dequantized weight; the
only difference is the rounding of the bf16 output (2^-8 relative) and of the kernels' internal sums, so we
allow 1% of the output's largest magnitude (measured 0.3-0.5%). "Loose" compares with the original float
layer: mean error relative to the mean output, measured 0.5% for per-channel int8 and 6-7% for int4 in
groups of 32-128 (nn.Linear's uniform init); we allow 1% and 10%.
"""

from __future__ import annotations

import copy

import pytest
import torch

from llavakit.engine.linear import (
    BF16DecodeLinear,
    PackedLinear,
    fp16_decode_available,
    optimize_for_decode,
    pack_linears,
    packing_available,
)
from llavakit.engine.quantize import (
    INT4_KERNEL_ROWS,
    INT8_KERNEL_ROWS,
    Int4Linear,
    Int8Linear,
    _unpack_int4,
    int4_fits,
    int4_group,
    quantization_error,
    quantize_llava,
    quantize_model,
)
from tiny_models import hf_model, ours_from_hf

ROWS = [1, 5, max(INT8_KERNEL_ROWS, INT4_KERNEL_ROWS) + 3]  # kernel path (1, 5) and dequantize + GEMM path


def has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


needs_int8 = pytest.mark.skipif(not has_op("_weight_int8pack_mm"), reason="torch has no _weight_int8pack_mm")
needs_int4 = pytest.mark.skipif(
    not (has_op("_weight_int4pack_mm_for_cpu") and has_op("_convert_weight_to_int4pack_for_cpu")),
    reason="torch has no CPU int4 pack kernels",
)
needs_fp16 = pytest.mark.skipif(not fp16_decode_available(), reason="no fbgemm fp16 kernels in this torch")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).abs().mean() / ref.abs().mean())


def assert_tight(out: torch.Tensor, ref: torch.Tensor) -> None:
    out, ref = out.detach().float(), ref.detach().float()
    assert float((out - ref).abs().max()) <= 0.01 * float(ref.abs().max())


def bf16_linear(k: int, n: int, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n).to(torch.bfloat16)


@needs_int8
@pytest.mark.parametrize("rows", ROWS)
def test_int8_matches_dequantized_reference_and_float_layer(rows):
    lin = bf16_linear(256, 96)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(2, rows, 256).to(torch.bfloat16)
    out = q(x)
    assert out.shape == (2, rows, 96) and out.dtype == torch.bfloat16
    assert_tight(out, x.float() @ q.dequantize().float().T + lin.bias.float())
    assert rel_err(out, lin(x)) < 0.01


@needs_int4
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("rows", ROWS)
def test_int4_matches_dequantized_reference_and_float_layer(rows, group_size):
    lin = bf16_linear(256, 96)  # 96 rows = one block of 64 + a tail of 32 in the packed layout
    q = Int4Linear.from_linear(lin, group_size)
    x = torch.randn(2, rows, 256).to(torch.bfloat16)
    out = q(x)
    assert out.shape == (2, rows, 96) and out.dtype == torch.bfloat16
    assert_tight(out, x.float() @ q.dequantize().float().T + lin.bias.float())
    assert rel_err(out, lin(x)) < 0.10


@needs_int4
@pytest.mark.parametrize("n", [16, 48, 64, 96, 192])
def test_int4_unpack_inverts_torch_packing(n):
    torch.manual_seed(n)
    q = torch.randint(0, 16, (n, 256), dtype=torch.int32)  # K > 64: catches a wrong block size
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(_unpack_int4(packed, n, 256).int(), q)


@needs_int4
def test_int4_dequantize_is_within_half_a_step_of_the_weight():
    lin = bf16_linear(128, 32)
    q = Int4Linear.from_linear(lin, 32)
    scale = q.scales_zeros[..., 0].float().T.repeat_interleave(32, dim=1)  # (N, K)
    err = (q.dequantize().float() - lin.weight.float()).abs()
    assert bool((err <= 0.5 * scale + 0.02 * lin.weight.float().abs().max()).all())  # + bf16 rounding of scales


@needs_int8
@needs_int4
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_state_lives_on_the_right_device_and_dtype_and_reloads_from_meta(mode):
    lin = bf16_linear(128, 64)
    q = Int8Linear.from_linear(lin) if mode == "int8" else Int4Linear.from_linear(lin, 64)
    sd = q.state_dict()
    if mode == "int8":
        assert set(sd) == {"qweight", "scale", "bias"}
        assert sd["qweight"].dtype == torch.int8 and sd["qweight"].shape == (64, 128)
        assert sd["scale"].dtype == torch.bfloat16 and sd["scale"].shape == (64,)
    else:
        assert set(sd) == {"packed", "scales_zeros", "bias"}
        assert sd["packed"].dtype == torch.uint8 and sd["packed"].shape == (64, 64)
        assert sd["scales_zeros"].dtype == torch.bfloat16 and sd["scales_zeros"].shape == (2, 64, 2)
    assert sd["bias"].dtype == torch.bfloat16 and all(t.device.type == "cpu" for t in sd.values())
    with torch.device("meta"):
        empty = Int8Linear(128, 64) if mode == "int8" else Int4Linear(128, 64, group_size=64)
    empty.load_state_dict(sd, strict=True, assign=True)
    x = torch.randn(3, 128).to(torch.bfloat16)
    torch.testing.assert_close(empty(x), q(x), atol=0, rtol=0)


@needs_int8
def test_int8_follows_the_activation_dtype():
    lin = bf16_linear(64, 32)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(1, 64)
    out = q(x)  # float32 activations, bf16 scales
    assert out.dtype == torch.float32
    assert_tight(out, x @ q.dequantize(torch.float32).T + lin.bias.float())


def test_int4_rejects_shapes_the_kernel_cannot_take():
    assert int4_fits(256, 96, 128) and not int4_fits(256, 40, 128) and not int4_fits(96, 64, 64)
    with pytest.raises(ValueError, match="out_features % 16"):
        Int4Linear(96, 64, group_size=64)


@needs_int8
@needs_int4
def test_quantize_model_swaps_exactly_the_linear_layers_not_skipped():
    model = ours_from_hf(hf_model("llava", "llama")).to(torch.bfloat16)
    lm = model.model.language_model
    n_linear = sum(type(m) is torch.nn.Linear for m in lm.modules())
    quantize_model(lm, "int8", skip=lambda name: name.endswith("o_proj"))
    assert sum(isinstance(m, Int8Linear) for m in lm.modules()) == n_linear - len(lm.layers)
    assert all(type(layer.self_attn.o_proj) is torch.nn.Linear for layer in lm.layers)
    assert type(model.model.multi_modal_projector.linear_1) is torch.nn.Linear  # outside the decoder
    assert type(model.lm_head) is torch.nn.Linear
    with pytest.raises(ValueError, match="quantize must be 'int8' or 'int4'"):
        quantize_model(lm, "int3")

    model = ours_from_hf(hf_model("llava", "llama")).to(torch.bfloat16)
    fits = {
        n
        for n, m in model.named_modules()
        if type(m) is torch.nn.Linear and int4_fits(m.in_features, m.out_features, 32)
    }
    quantize_model(model, "int4", group_size=32)
    assert fits and {n for n, m in model.named_modules() if isinstance(m, Int4Linear)} == fits


@needs_int8
@needs_int4
@pytest.mark.parametrize("mode,max_rel", [("int8", 0.02), ("int4", 0.15)])
def test_tiny_mlp_stays_close_after_quantization(mode, max_rel):
    torch.manual_seed(3)
    ref = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.SiLU(), torch.nn.Linear(128, 64)).to(torch.bfloat16)
    q = quantize_model(copy.deepcopy(ref), mode, group_size=32)
    kind = Int8Linear if mode == "int8" else Int4Linear
    assert [type(m) for m in q] == [kind, torch.nn.SiLU, kind]
    for rows in (1, 64):  # decode kernels and the dequantize + GEMM path
        stats = quantization_error(ref, q, torch.randn(rows, 64).to(torch.bfloat16))
        assert 0 < stats["rel"] < max_rel and stats["max_abs"] >= stats["mean_abs"] > 0


@needs_int8
@needs_int4
@pytest.mark.parametrize("mode,max_rel", [("int8", 0.05), ("int4", 0.35)])
def test_quantized_llava_stays_close(mode, max_rel):
    hf = hf_model("llava", "llama", seed=2)
    ref = ours_from_hf(hf).to(torch.bfloat16)
    q = ours_from_hf(hf).to(torch.bfloat16)
    quantize_model(q.model.language_model, mode, group_size=32)
    stats = quantization_error(ref, q, {"input_ids": torch.randint(3, 100, (1, 12))})
    assert stats["rel"] < max_rel and 0 <= stats["top1_agreement"] <= 1


def test_int4_group_falls_back_to_the_largest_group_the_kernel_takes():
    assert int4_group(896, 4864, 128) == 128  # the asked group fits
    assert int4_group(192, 512, 128) == 64  # the docstring's example: 192 = 3 x 64
    assert int4_group(96, 64, 128) == 32 and int4_group(96, 64, 32) == 32
    assert int4_group(80, 64, 128) is None and int4_group(256, 40, 128) is None  # 80 % 32, 40 % 16


@needs_int4
def test_int4_quantizes_a_layer_its_group_does_not_divide_with_a_finer_group():
    lin = torch.nn.Linear(192, 64).to(torch.bfloat16)
    q = quantize_model(torch.nn.Sequential(lin), "int4", group_size=128)[0]
    assert isinstance(q, Int4Linear) and q.group_size == 64
    x = torch.randn(3, 192, dtype=torch.bfloat16)
    assert_tight(q(x), x.float() @ q.dequantize().float().T + lin.bias.float())


@needs_int8
@needs_int4
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("mode", ["int8", "int4", "int8+head", "int4+head"])
def test_quantize_llava_takes_the_decoder_and_the_head_only_when_asked(mode, tied):
    """What ``llavakit.load(quantize=...)`` does: the decoder's Linears always, the LM head with "+head" (a tied
    head gets its own quantized copy: the embedding lookup stays float), the vision tower and projector never."""
    hf = hf_model("llava", "llama", seed=3, tie_word_embeddings=tied)
    ref = ours_from_hf(hf).to(torch.bfloat16)
    q = ours_from_hf(hf).to(torch.bfloat16)
    quantize_llava(q, mode, group_size=32)
    kind = Int8Linear if mode.startswith("int8") else Int4Linear
    names = {n for n, m in q.named_modules() if isinstance(m, kind)}
    linears = {n: m for n, m in ref.named_modules() if type(m) is torch.nn.Linear}
    if kind is Int4Linear:  # int4 leaves the shapes its kernel does not take in float
        linears = {n: m for n, m in linears.items() if int4_fits(m.in_features, m.out_features, 32)}
    decoder = {n for n in linears if n.startswith("model.language_model.")}
    assert decoder and names == decoder | ({"lm_head"} & linears.keys() if mode.endswith("+head") else set())
    assert mode != "int8+head" or "lm_head" in names
    assert type(q.model.language_model.embed_tokens) is torch.nn.Embedding
    assert torch.equal(q.model.language_model.embed_tokens.weight, ref.model.language_model.embed_tokens.weight)
    stats = quantization_error(ref, q, {"input_ids": torch.randint(3, 100, (1, 12))})
    assert stats["rel"] < (0.05 if mode.startswith("int8") else 0.4)
    with pytest.raises(ValueError, match="quantize must be one of int8, int4, int8\\+head, int4\\+head"):
        quantize_llava(q, "int4+vision")


@needs_fp16
@pytest.mark.parametrize("rows", [1, 3, 20])  # fp16 matrix-vector kernel; F.linear from 5 rows on
def test_bf16_decode_linear_equals_the_float_layer(rows):
    lin = bf16_linear(96, 80)
    fast = BF16DecodeLinear(lin)
    assert fast.weight is lin.weight and list(fast.state_dict()) == list(lin.state_dict())
    x = torch.randn(2, rows, 96).to(torch.bfloat16)
    ref = x.float() @ lin.weight.float().T + lin.bias.float()
    out = fast(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, rows, 80)
    torch.testing.assert_close(out.float(), ref, atol=0.02, rtol=0.01)  # bf16 output rounding only


@needs_fp16
def test_bf16_decode_linear_refuses_weights_outside_fp16():
    lin = bf16_linear(16, 16)
    with torch.no_grad():
        lin.weight[0, 0] = 1e6
    with pytest.raises(ValueError, match="does not fit float16"):
        BF16DecodeLinear(lin)
    assert optimize_for_decode(torch.nn.Sequential(lin), min_weight=0) == 0


@needs_fp16
def test_bf16_decode_linear_survives_copies_and_compiles_without_graph_breaks():
    lin = bf16_linear(64, 48)
    first = BF16DecodeLinear(lin)
    second = copy.deepcopy(first)
    assert second.handle != first.handle
    del first  # the copy owns its packed weight
    x = torch.randn(1, 64).to(torch.bfloat16)
    with torch.no_grad():
        want = second(x)
        torch._dynamo.reset()
        got = torch.compile(second, fullgraph=True)(x)  # fullgraph: a graph break would raise
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@needs_fp16
def test_optimize_for_decode_keeps_logits_and_the_tied_head():
    hf = hf_model("llava", "qwen2", seed=4, tie_word_embeddings=True)
    ref = ours_from_hf(hf).to(torch.bfloat16)
    fast = ours_from_hf(hf).to(torch.bfloat16)
    lm = fast.model.language_model
    n_text = sum(type(m) is torch.nn.Linear for m in lm.modules()) + 1  # + lm_head
    n = optimize_for_decode(fast, skip=lambda name: "vision_tower" in name or "projector" in name, min_weight=0)
    assert n == n_text and isinstance(fast.lm_head, BF16DecodeLinear)
    assert fast.lm_head.weight is lm.embed_tokens.weight  # tied: no second bf16 copy
    assert type(fast.model.multi_modal_projector.linear_1) is torch.nn.Linear
    ids = torch.randint(3, 100, (1, 9))
    with torch.no_grad():
        for t in (9, 1):  # prefill rows go through F.linear, one row through the fp16 kernel
            a, b = fast(input_ids=ids[:, :t]).logits.float(), ref(input_ids=ids[:, :t]).logits.float()
            assert rel_err(a, b) < 0.01 and bool((a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8)


def test_packed_linears_give_the_same_logits():
    if not packing_available():
        pytest.skip("oneDNN linear packing is not available in this torch build")
    hf = hf_model("llava", "qwen2", seed=4, tie_word_embeddings=True)
    ref = ours_from_hf(hf)
    packed = ours_from_hf(hf)
    n = pack_linears(packed)
    assert n > 0 and not isinstance(packed.lm_head, PackedLinear)  # the tied head is left alone by default
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


@needs_int8
def test_quantization_error_accepts_tensors_tuples_and_dicts():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 16)
    q = quantize_model(torch.nn.Sequential(torch.nn.Linear(32, 16)), "int8")
    q[0].load_state_dict(Int8Linear.from_linear(lin).state_dict())
    x = torch.randn(4, 32)
    a = quantization_error(lin, q, x)
    assert a == quantization_error(lin, q, (x,)) == quantization_error(lin, q, {"input": x})
    assert quantization_error(lin, lin, x) == {
        "max_abs": 0.0,
        "mean_abs": 0.0,
        "rel": 0.0,
        "top1_agreement": 1.0,
    }


def test_int8_bf16_rows_of_a_width_the_kernel_crashes_on_take_the_dequantized_weight():
    """torch's bf16 int8 kernel segfaults for 2-15 rows when in_features is not a multiple of 16 (a batch of two
    killed the server): those calls must not reach it, and they give the dequantized layer's result."""
    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        q = Int8Linear.from_linear(torch.nn.Linear(40, 24, bias=False).to(dtype))
        for rows in (1, 1, 1, 1, 2, 7, 15) * 3:  # one row gave garbage now and then (memory-dependent)
            x = torch.randn(rows, 40, dtype=dtype)
            ref = torch.nn.functional.linear(x.float(), q.dequantize(torch.float32))
            torch.testing.assert_close(q(x).float(), ref, atol=0.05, rtol=0.02)


def test_quantizing_a_quantized_or_optimized_model_is_an_error():
    model = ours_from_hf(hf_model("llava", seed=0))
    quantize_llava(model, "int8")
    with pytest.raises(ValueError, match="no nn.Linear layer left to quantize"):
        quantize_llava(model, "int4")
