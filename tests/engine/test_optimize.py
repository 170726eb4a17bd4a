"""The optimized CPU inference path (``optimize_model``, what ``llavakit.load`` applies by default) in bfloat16:
same tokens as the plain model and as transformers, cached == uncached, batched == unbatched.

Tolerance for layer outputs: both sides accumulate in float32 and round the output to bf16 once, so they may
differ by one bf16 step (2^-8 relative) of the output's magnitude, plus summation-order noise; we allow 1% of
the largest output magnitude.
"""

from __future__ import annotations

import copy

import pytest
import torch

import llavakit
from llavakit.engine.generate import stream_tokens
from llavakit.engine.linear import (
    DECODE_ROWS,
    LEAN_DECODE_ROWS,
    BF16DecodeLinear,
    DenseLinear,
    PackedLinear,
    compute_dtype,
    dense_linear,
    fp16_decode_available,
    native_bf16_gemm,
    optimize_model,
)
from llavakit.engine.small_linear import SmallDecodeLinear
from llavakit.processing.anyres import num_image_tokens, num_tiles
from llavakit.tiny import write_tiny_checkpoint
from tiny_models import IMAGE_TOKEN, hf_model, ours_from_hf

needs_fp16 = pytest.mark.skipif(not fp16_decode_available(), reason="no fbgemm fp16 kernels in this torch")


def assert_close_bf16(out: torch.Tensor, ref: torch.Tensor) -> None:
    out, ref = out.detach().float(), ref.detach().float()
    assert float((out - ref).abs().max()) <= 0.01 * float(ref.abs().max())


def bf16_linear(k: int, n: int, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n).to(torch.bfloat16).requires_grad_(False)


def test_dense_linear_equals_the_float32_product():
    lin = bf16_linear(96, 80)
    x = torch.randn(3, 40, 96).to(torch.bfloat16)  # 120 rows: the float32 path where bf16 is not native
    ref = x.float() @ lin.weight.float().T + lin.bias.float()
    out = DenseLinear(lin)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 40, 80)
    assert_close_bf16(out, ref)
    assert list(DenseLinear(lin).state_dict()) == list(lin.state_dict())
    x32 = torch.randn(5, 96)  # float32 activations stay float32 (no widening needed)
    assert compute_dtype(torch.float32) == torch.float32
    torch.testing.assert_close(dense_linear(x32, lin.weight.float(), None), x32 @ lin.weight.float().T)


@needs_fp16
@pytest.mark.parametrize("rows", [1, 4, 30, 600])
def test_bf16_decode_linear_without_its_bf16_weight(rows):
    lin = bf16_linear(96, 80, seed=1)
    lean, full = BF16DecodeLinear(lin, keep_weight=False), BF16DecodeLinear(lin, keep_weight=True)
    assert lean.weight is None and set(lean.state_dict()) == {"bias"}
    w, back = lin.weight.float(), lean.full_weight().float()
    normal = w.abs() >= 2**-14  # fp16 holds these bf16 values exactly; smaller ones are fp16 subnormals
    assert torch.equal(back[normal], w[normal]) and float((back - w).abs().max()) <= 2**-25
    x = torch.randn(2, rows, 96).to(torch.bfloat16)
    assert_close_bf16(lean(x), full(x))
    assert_close_bf16(lean(x), x.float() @ lin.weight.float().T + lin.bias.float())


@pytest.mark.parametrize("rows", [1, DECODE_ROWS, DECODE_ROWS + 1, 300])
def test_small_decode_linear_equals_the_bf16_layer(rows):
    lin = bf16_linear(64, 96, seed=2)
    small = SmallDecodeLinear(lin)
    assert set(small.state_dict()) == {"weight", "bias"} and small.weight is lin.weight
    x = torch.randn(3, rows, 64).to(torch.bfloat16)
    out = small(x)
    assert out.dtype == torch.bfloat16 and out.shape == (3, rows, 96)
    assert_close_bf16(out, lin(x))
    if rows * 3 <= DECODE_ROWS:  # float32 product rounded once: the exact product's bf16 rounding
        exact = (x.double() @ lin.weight.double().T + lin.bias.double()).to(torch.bfloat16)
        assert float((out.float() - exact.float()).abs().max()) <= 2**-7 * float(exact.float().abs().max())


def test_small_bf16_decoder_layers_multiply_one_token_in_float32(models):
    hf, plain, _, _ = models
    fast = copy.deepcopy(plain)
    counts = optimize_model(fast)
    decoder = [m for layer in fast.model.language_model.layers for m in layer.modules()]
    if native_bf16_gemm():  # where bf16 kernels' fixed cost per call dominates products this small
        assert counts["SmallDecodeLinear"] == sum(isinstance(m, SmallDecodeLinear) for m in fast.modules()) > 0
        assert all(not isinstance(m, torch.nn.Linear) for m in decoder)
    else:
        assert "SmallDecodeLinear" not in counts
    geom, size = fast.geometry, (56, 56)
    ids, px = _request(geom, size, seed=1)
    assert _greedy(fast, ids, px, size) == _greedy(plain, ids, px, size)


def _request(geom, size, seed):
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(3, 100, (2 + 3 * seed,), generator=g).tolist()
    ids += [IMAGE_TOKEN] * num_image_tokens(*size, geom) + torch.randint(3, 100, (3,), generator=g).tolist()
    px = torch.randn(1, num_tiles(*size, geom), 3, geom.tile, geom.tile, generator=g)
    return ids, px


def _greedy(model, ids, px, size, n=10):
    steps = stream_tokens(
        model, torch.tensor([ids]), max_new_tokens=n, eos_token_id=[], pixel_values=px, image_sizes=torch.tensor([size])
    )
    return [int(t[0]) for t in steps]


@pytest.fixture(scope="module")
def models():
    hf = hf_model("llava_next", "qwen2", seed=3).to(torch.bfloat16)
    plain = ours_from_hf(hf).to(torch.bfloat16)
    fast = copy.deepcopy(plain)
    # force the fp16 path: no weight is small enough for SmallDecodeLinear, every one big enough for fbgemm
    counts = optimize_model(fast, min_fp16_weight=0, fp16_decode=fp16_decode_available(), max_small_weight=0)
    return hf, plain, fast, counts


def test_optimize_model_swaps_the_expected_layers(models):
    _, plain, fast, counts = models
    n_linear = sum(type(m) is torch.nn.Linear for m in plain.modules())
    assert sum(counts.values()) == n_linear and not any(type(m) is torch.nn.Linear for m in fast.modules())
    decoder = [fast.lm_head, *[m for layer in fast.model.language_model.layers for m in layer.modules()]]
    vision = [m for m in fast.model.vision_tower.modules() if isinstance(m, torch.nn.Module)]
    if fp16_decode_available():
        # by default each keeps its bf16 weight for prompts (the same tensor: no copy) beside the fp16 copy
        assert fast.lm_head.weight is plain.lm_head.weight or torch.equal(fast.lm_head.weight, plain.lm_head.weight)
        assert fast.lm_head.decode_rows == DECODE_ROWS
        assert any(isinstance(m, BF16DecodeLinear) for m in decoder)
        lean = copy.deepcopy(plain)
        optimize_model(lean, min_fp16_weight=0, fp16_decode=True, keep_bf16_weights=False, max_small_weight=0)
        assert lean.lm_head.weight is None  # untied head: only the fp16 copy is kept (no extra memory)
        assert lean.lm_head.decode_rows == LEAN_DECODE_ROWS
    assert any(isinstance(m, (PackedLinear, DenseLinear)) for m in vision)
    fp32 = ours_from_hf(hf_model("llava", "llama"))
    # float32: the head's weight is transposed; weights this small stay on F.linear (no ThreadedLinear)
    assert optimize_model(fp32) == {"transposed_head": 1}
    assert all(type(m) is torch.nn.Linear for m in fp32.model.vision_tower.modules() if "Linear" in type(m).__name__)
    tied = ours_from_hf(hf_model("llava", "qwen2", seed=4, tie_word_embeddings=True)).to(torch.bfloat16)
    default = copy.deepcopy(tied)
    optimize_model(default)  # weights this small stay off fbgemm (parallel-region overhead > the product)
    assert not any(isinstance(m, BF16DecodeLinear) for m in default.modules())
    optimize_model(tied, min_fp16_weight=0, fp16_decode=fp16_decode_available(), max_small_weight=0)
    if fp16_decode_available():  # a tied head keeps sharing the embedding matrix (the lookup needs it)
        assert isinstance(tied.lm_head, BF16DecodeLinear)
        assert tied.lm_head.weight is tied.model.language_model.embed_tokens.weight


def test_optimized_greedy_tokens_equal_the_plain_model_and_transformers(models):
    hf, plain, fast, _ = models
    geom = fast.geometry
    size = (56, 56)
    ids, px = _request(geom, size, 0)
    ours = _greedy(fast, ids, px, size)
    assert ours == _greedy(plain, ids, px, size)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor([ids]),
            pixel_values=px.to(torch.bfloat16),
            image_sizes=torch.tensor([size]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert ours == ref[0, len(ids) :].tolist()


def test_optimized_cached_equals_uncached(models):
    _, _, fast, _ = models
    size = (30, 150)
    ids, px = _request(fast.geometry, size, 1)
    new = _greedy(fast, ids, px, size, n=8)
    with torch.no_grad():  # one uncached forward over prompt + answer: every next token is its argmax
        logits = fast(
            input_ids=torch.tensor([ids + new]), pixel_values=px.to(torch.bfloat16), image_sizes=torch.tensor([size])
        ).logits[0]
    assert logits[len(ids) - 1 : -1].argmax(-1).tolist() == new


def test_optimized_batched_equals_unbatched(models):
    _, _, fast, _ = models
    sizes = [(56, 56), (30, 150), (170, 60)]
    reqs = [_request(fast.geometry, s, i) for i, s in enumerate(sizes)]
    single = [_greedy(fast, ids, px, s, n=8) for (ids, px), s in zip(reqs, sizes)]
    t = max(len(ids) for ids, _ in reqs)
    ids = torch.tensor([[0] * (t - len(x)) + x for x, _ in reqs])
    tiles = max(px.shape[1] for _, px in reqs)
    pv = torch.cat([torch.cat([px, px.new_zeros(1, tiles - px.shape[1], *px.shape[2:])], 1) for _, px in reqs])
    steps = stream_tokens(
        fast,
        ids,
        attention_mask=(ids != 0).long(),
        max_new_tokens=8,
        eos_token_id=[],
        pixel_values=pv,
        image_sizes=torch.tensor(sizes),
    )
    assert torch.stack(list(steps), 1).tolist() == single


def test_load_optimizes_bfloat16_by_default(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny", "llava_next", seed=2)
    fast = llavakit.load(path, dtype="bfloat16")
    plain = llavakit.load(path, dtype="bfloat16", optimize=False)
    assert not any(type(m) is torch.nn.Linear for m in fast.model.modules())
    assert any(type(m) is torch.nn.Linear for m in plain.model.modules())
    msgs = [{"role": "user", "content": "Say something."}]
    assert fast.chat(msgs, max_new_tokens=8) == plain.chat(msgs, max_new_tokens=8)
