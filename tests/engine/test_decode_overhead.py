"""What removed per-token work must not change: the RoPE table equals a direct computation bit for bit, the
transposed float32 LM head keeps the weights and the tokens, the one-token mask equals the general one, few-row
products as W @ x^T equal nn.Linear and keep batched decoding equal to unbatched."""

from __future__ import annotations

import copy

import pytest
import torch

from llavakit.config import TextConfig
from llavakit.engine.generate import generate, stream_tokens
from llavakit.engine.linear import optimize_model, transpose_head
from llavakit.engine.threaded_linear import FEW_ROWS, ThreadedLinear, threaded_linear
from llavakit.model.rope import Rotary, apply_rotary, inv_freq
from llavakit.model.text import attention_mask_for
from tiny_models import hf_model, ours_from_hf


def _direct(config: TextConfig, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-call computation the table replaced: angles, cos, sin (unsigned)."""
    angles = pos[..., None].float() * inv_freq(config, 0, pos.device)
    emb = torch.cat([angles, angles], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_table_equals_direct_computation_bit_for_bit(dtype):
    config = TextConfig(head_dim=32, hidden_size=64, num_attention_heads=2, rope_theta=1e6)
    rot = Rotary(config)
    x = torch.randn(2, 3, 5, 32).to(dtype)
    for high in (50, 3000):  # the second call grows the table past its first 1024 rows
        pos = torch.randint(0, high, (2, 5))
        cos, sin = rot(pos, dtype)
        ref_cos, ref_sin = _direct(config, pos, dtype)
        assert torch.equal(cos, ref_cos)
        assert torch.equal(sin[..., 16:], ref_sin[..., 16:]) and torch.equal(sin[..., :16], -ref_sin[..., :16])
        rotated = torch.cat([-x[..., 16:], x[..., :16]], dim=-1)  # the rotation as written before
        assert torch.equal(apply_rotary(x, cos, sin), x * ref_cos + rotated * ref_sin)
    assert rot.table(1, pos.device, dtype)[0].shape[0] == 4096
    with pytest.raises(IndexError):  # a bound that is too low is an error, never a wrong angle
        rot(torch.tensor([[5000]]), dtype, limit=10)


def test_one_token_mask_equals_the_general_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])  # row 2: its own (last) slot marked 0
    fast = attention_mask_for(mask, 1, 5, None, mask.device)
    general = attention_mask_for(mask, 2, 4, None, mask.device)[:, :, -1:]  # same last query, general path
    assert fast.shape == (2, 1, 1, 6) and torch.equal(fast, general)


def test_transposed_head_keeps_weights_and_greedy_tokens():
    model = ours_from_hf(hf_model("llava", "qwen2", seed=2, tie_word_embeddings=True))
    fast = copy.deepcopy(model)
    assert optimize_model(fast) == {"transposed_head": 1}  # weights this small stay on F.linear
    assert transpose_head(fast) == 0  # already done
    w = fast.lm_head.weight
    assert w.stride() == (1, w.shape[0]) and w is fast.model.language_model.embed_tokens.weight
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fast.state_dict().values()))
    ids = torch.tensor([[1, 9, 44, 7, 63, 20, 5]])
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    kw = dict(max_new_tokens=10, eos_token_id=[])
    assert [int(t) for t in stream_tokens(fast, ids, **kw)] == [int(t) for t in stream_tokens(model, ids, **kw)]


@pytest.mark.parametrize("rows", [1, 2, 5, FEW_ROWS, FEW_ROWS + 1])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("column_major", [False, True])
def test_threaded_linear_equals_nn_linear(rows, bias, column_major):
    torch.manual_seed(rows)
    lin = torch.nn.Linear(48, 1024, bias=bias)
    ref = copy.deepcopy(lin)
    if column_major:  # the transposed LM head's layout
        lin.weight.data = lin.weight.data.t().contiguous().t()
    fast = ThreadedLinear(lin)
    assert fast.weight is lin.weight and fast.blocks == 8 and list(fast.state_dict()) == list(lin.state_dict())
    x = torch.randn(rows, 1, 48)  # (B, T=1, D): a batch of decode tokens
    with torch.no_grad():
        out = fast(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (rows, 1, 1024) and out.is_contiguous()


def test_threaded_linear_blocks_are_the_right_outputs():
    w = torch.arange(16.0).repeat_interleave(4).view(16, 4)  # row i is all i: output i of x = 1 is 4 i
    x = torch.ones(3, 4)
    for blocks in (2, 4, 8):
        assert torch.equal(threaded_linear(x, w, None, blocks), 4 * torch.arange(16.0).expand(3, 16))
        assert torch.equal(threaded_linear(x[:1], w, torch.ones(16), blocks), 4 * torch.arange(16.0)[None] + 1)


def test_threaded_batched_decode_equals_unbatched():
    model = ours_from_hf(hf_model("llava", "llama", seed=3))
    counts = optimize_model(model, min_threaded_weight=0)
    assert counts["ThreadedLinear"] > 0 and isinstance(model.lm_head, ThreadedLinear)
    prompts = [[1, 9, 44, 7, 63, 20, 5], [1, 30, 2, 8], [1, 11, 12, 13, 14, 15], [1, 4, 4]]
    kw = dict(max_new_tokens=8, eos_token_id=[])
    single = [[int(t) for t in stream_tokens(model, torch.tensor([p]), **kw)] for p in prompts]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left-padded (4, T)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = generate(model, ids, attention_mask=mask, **kw)
    assert batched[:, width:].tolist() == single


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_threaded_model_keeps_transformers_logits(family):
    hf = hf_model(family, "qwen2", seed=5)
    ours = ours_from_hf(hf)
    counts = optimize_model(ours, min_threaded_weight=0)  # every splittable decoder Linear and the head threaded
    assert counts["ThreadedLinear"] > 0
    # 14 rows (weight-left bmm, the head's row-major copy) and one row (x-left bmm, the transposed head)
    for ids in (torch.tensor([[1, 9, 44, 7, 63, 20, 5], [1, 30, 2, 8, 8, 12, 3]]), torch.tensor([[9]])):
        with torch.no_grad():
            ref = hf.lm_head(hf.model.language_model(input_ids=ids).last_hidden_state)
            out = ours(input_ids=ids).logits
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
