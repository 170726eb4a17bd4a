"""The decoder against transformers' Llama / Mistral / Qwen2 on the same random weights; cache invariants."""

from __future__ import annotations

import pytest
import torch

from llavakit.config import TextConfig
from llavakit.engine.kv_cache import KVCache
from llavakit.model.text import CausalLM
from tiny_models import randomize, text_config

CASES = {
    "llama": ("llama", {}),
    "llama_head_dim": ("llama", {"head_dim": 16}),
    "llama_bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "llama_tied": ("llama", {"tie_word_embeddings": True}),
    "llama_linear": ("llama", {"rope_scaling": {"type": "linear", "factor": 4.0}}),
    "llama_dynamic": ("llama", {"max_position_embeddings": 16, "rope_scaling": {"type": "dynamic", "factor": 2.0}}),
    "llama3": (
        "llama",
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "mistral_window": ("mistral", {"sliding_window": 5}),
    "qwen2": ("qwen2", {}),
    "qwen2_tied": ("qwen2", {"tie_word_embeddings": True, "rope_theta": 1e6}),
    # transformers windows only the layers from max_window_layers on (here the second of two)
    "qwen2_window": ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}),
    "qwen2_layer_types": (
        "qwen2",
        {"use_sliding_window": True, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
    ),
}


def _pair(case: str):
    from transformers import AutoModelForCausalLM

    kind, kw = CASES[case]
    hf_cfg = text_config(kind, **kw)
    torch.manual_seed(0)
    hf = randomize(AutoModelForCausalLM.from_config(hf_cfg).eval())
    cfg = TextConfig.from_hf(hf_cfg.to_dict())
    ours = CausalLM(cfg).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case):
    hf, ours = _pair(case)
    ids = torch.randint(3, 120, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama", "mistral_window", "qwen2", "qwen2_window"])
def test_left_padded_batch_matches_transformers(case):
    hf, ours = _pair(case)
    ids = torch.randint(3, 120, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        out = ours(ids, position_ids=pos, attention_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama", "mistral_window", "llama_linear", "qwen2", "qwen2_layer_types"])
def test_cached_decoding_equals_full_forward(case):
    _, ours = _pair(case)
    ids = torch.randint(3, 120, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        full = ours(ids, position_ids=pos, attention_mask=mask)
        cache = KVCache(ours.config, 2, 32)
        parts = [ours(ids[:, :12], position_ids=pos[:, :12], attention_mask=mask[:, :12], cache=cache)]
        for i in range(12, 20):
            parts.append(
                ours(ids[:, i : i + 1], position_ids=pos[:, i : i + 1], attention_mask=mask[:, : i + 1], cache=cache)
            )
    torch.testing.assert_close(torch.cat(parts, 1)[mask.bool()], full[mask.bool()], atol=1e-4, rtol=1e-4)


def test_dynamic_rope_cached_decoding_matches_transformers_cache():
    """Dynamic NTK changes the frequencies as the sequence grows, so cached != uncached by design (in HF too):
    compare step by step with transformers' own cached decoding instead."""
    hf, ours = _pair("llama_dynamic")
    ids = torch.randint(3, 120, (1, 24))  # max_position_embeddings is 16: scaling kicks in during decoding
    with torch.no_grad():
        cache = KVCache(ours.config, 1, 24)
        out = [ours(ids[:, :10], cache=cache)]
        ref_step = hf(ids[:, :10], use_cache=True)
        ref, past = [ref_step.logits], ref_step.past_key_values
        for i in range(10, 24):
            out.append(ours(ids[:, i : i + 1], cache=cache))
            ref_step = hf(ids[:, i : i + 1], past_key_values=past, use_cache=True)
            ref.append(ref_step.logits)
            past = ref_step.past_key_values
    torch.testing.assert_close(torch.cat(out, 1), torch.cat(ref, 1), atol=1e-4, rtol=1e-4)


def test_chunked_prefill_and_truncate_equal_fresh():
    _, ours = _pair("mistral_window")
    ids = torch.randint(3, 120, (1, 16))
    with torch.no_grad():
        full = ours(ids)
        cache = KVCache(ours.config, 1, 16)
        ours(ids[:, :10], cache=cache)
        cache.truncate(6)  # forget slots 6..9, then feed them again in one chunk with the rest
        tail = ours(ids[:, 6:], cache=cache)
    torch.testing.assert_close(tail, full[:, 6:], atol=1e-4, rtol=1e-4)


def test_cache_overflow_is_a_clear_error():
    _, ours = _pair("llama")
    cache = KVCache(ours.config, 1, 8)
    with pytest.raises(ValueError, match="do not fit the KV cache of 8 slots"):
        ours(torch.randint(3, 120, (1, 9)), cache=cache)


def test_meta_build_then_assign_load():
    hf, ours = _pair("qwen2")
    with torch.device("meta"):
        fresh = CausalLM(ours.config)
    fresh.load_state_dict(hf.state_dict(), strict=True, assign=True)
    ids = torch.randint(3, 120, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), ours(ids))


@pytest.mark.parametrize("case", ["qwen2_window", "qwen2_layer_types", "mistral_window", "qwen2"])
def test_layer_windows_round_trip_through_transformers_config(case):
    """Which layers are windowed survives to_hf -> transformers' config -> from_hf (the saved checkpoint's config)."""
    from transformers import AutoConfig

    _, ours = _pair(case)
    cfg = ours.config
    d = cfg.to_hf()
    hf_cfg = AutoConfig.for_model(**d)
    again = TextConfig.from_hf(hf_cfg.to_dict())
    windows = [cfg.layer_window(i) for i in range(cfg.num_hidden_layers)]
    assert [again.layer_window(i) for i in range(cfg.num_hidden_layers)] == windows
    if getattr(hf_cfg, "layer_types", None) is not None:  # transformers runs the same layers windowed
        assert [k == "sliding_attention" and hf_cfg.sliding_window is not None for k in hf_cfg.layer_types] == [
            w is not None for w in windows
        ]


def test_qwen2_window_layers_differ_from_all_windowed():
    """The per-layer rule matters on these inputs: windowing every layer would give other logits."""
    _, ours = _pair("qwen2_window")
    ids = torch.randint(3, 120, (1, 24))
    with torch.no_grad():
        per_layer = ours(ids)
        ours.config.layer_types = None  # every layer windowed (Mistral's rule)
        every = ours(ids)
    assert not torch.allclose(per_layer, every, atol=1e-3)


def test_layer_types_of_the_wrong_length_are_refused():
    d = text_config("qwen2", use_sliding_window=True, sliding_window=4).to_dict()
    with pytest.raises(ValueError, match="layer_types"):
        TextConfig.from_hf(d | {"layer_types": ["full_attention"]})
