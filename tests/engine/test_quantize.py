"""Weight-only int8 / int4 Linear swaps: kernels vs dequantized references, swaps, model-level error."""

from __future__ import annotations

import pytest
import torch

from llavakit.engine.quantize import Int4Linear, Int8Linear, quantization_error, quantize_model
from tiny_models import hf_model, ours_from_hf


@pytest.mark.parametrize("make", [Int8Linear, lambda lin: Int4Linear(lin, 64)], ids=["int8", "int4"])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_kernel_matches_dequantized_reference(make, rows):
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96).to(torch.bfloat16)
    q = make(lin)
    x = torch.randn(2, rows, 256).to(torch.bfloat16)
    ref = x.float() @ q.dequantize().float().T + lin.bias.float()
    out = q(x)
    assert out.shape == (2, rows, 96) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.03, rtol=0.02)  # bf16 rounding of the kernels
    # against the float layer: int8 keeps ~1% of the output scale, int4 ~15%
    err = (out.float() - lin(x).float()).abs().mean() / lin(x).float().abs().mean()
    assert err < (0.02 if isinstance(q, Int8Linear) else 0.2)


def test_quantize_model_swaps_exactly_the_linear_layers_not_skipped():
    model = ours_from_hf(hf_model("llava", "llama")).to(torch.bfloat16)
    lm = model.model.language_model
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in lm.modules())
    quantize_model(lm, "int8", skip=lambda name: name.endswith("o_proj"))
    assert sum(isinstance(m, Int8Linear) for m in lm.modules()) == n_linear - len(lm.layers)
    assert all(isinstance(layer.self_attn.o_proj, torch.nn.Linear) for layer in lm.layers)
    assert isinstance(model.model.multi_modal_projector.linear_1, torch.nn.Linear)  # outside the decoder
    with pytest.raises(ValueError, match="quantize must be 'int8' or 'int4'"):
        quantize_model(lm, "int3")


@pytest.mark.parametrize("mode,max_rel", [("int8", 0.05), ("int4", 0.35)])
def test_quantized_model_stays_close(mode, max_rel):
    hf = hf_model("llava", "llama", seed=2)
    ref = ours_from_hf(hf).to(torch.bfloat16)
    q = ours_from_hf(hf).to(torch.bfloat16)
    quantize_model(q.model.language_model, mode, group_size=32)
    ids = torch.randint(3, 100, (1, 12))
    stats = quantization_error(ref, q, {"input_ids": ids})
    assert stats["rel"] < max_rel and 0 <= stats["top1_agreement"] <= 1


def test_packed_linears_give_the_same_logits():
    from llavakit.engine.linear import PackedLinear, pack_linears, packing_available

    if not packing_available():
        pytest.skip("oneDNN linear packing is not available in this torch build")
    hf = hf_model("llava", "qwen2", seed=4, tie_word_embeddings=True)
    ref = ours_from_hf(hf).to(torch.bfloat16)
    packed = ours_from_hf(hf).to(torch.bfloat16)
    assert pack_linears(ours_from_hf(hf)) == 0  # float32 stays on the plain path
    n = pack_linears(packed)
    assert n > 0 and not isinstance(packed.lm_head, PackedLinear)  # the tied head is left alone by default
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        a, b = packed(input_ids=ids).logits.float(), ref(input_ids=ids).logits.float()
    assert (a - b).abs().max() < 0.05 * b.abs().max()  # same maths, bf16 accumulation order may differ
