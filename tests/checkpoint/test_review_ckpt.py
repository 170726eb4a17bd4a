"""Checkpoint review: transformers checkpoints whose config carries keys transformers ignores still load, with
transformers' logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tiny_models as tm
from llavakit import LlavaModel
from test_model_io_helpers import image_batch


def _hf_with_text(family: str, text: str, **text_kw: Any) -> torch.nn.Module:
    from transformers import LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    cfg = tm.hf_config(family, text)
    cfg.text_config = tm.text_config(text, **text_kw)
    cls = LlavaNextForConditionalGeneration if family == "llava_next" else LlavaOnevisionForConditionalGeneration
    torch.manual_seed(0)
    return tm.randomize(cls(cfg).eval())


@pytest.mark.parametrize(
    "family,text,key",
    [
        ("llava_next", "mistral", "attention_bias"),
        ("llava_next", "mistral", "mlp_bias"),
        ("llava_onevision", "qwen2", "mlp_bias"),
    ],  # fmt: skip
)
def test_bias_keys_only_llama_reads_are_ignored_like_transformers(tmp_path: Path, family: str, text: str, key: str):
    """transformers' Mistral and Qwen2 have fixed biases and keep a stray attention_bias / mlp_bias key in
    config.json without using it: their checkpoints have no such biases and must load (they were refused as
    missing q_proj.bias / gate_proj.bias)."""
    hf = _hf_with_text(family, text, **{key: True})
    hf.save_pretrained(tmp_path)
    ours = LlavaModel.from_pretrained(tmp_path)
    batch = image_batch(ours)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits[real], hf(**batch).logits[real], atol=1e-4, rtol=1e-4)


def test_a_head_missing_because_the_config_unties_it_says_so(tmp_path: Path) -> None:
    """A checkpoint saved tied (no lm_head.weight) under a config that says untied: the one missing key is the
    head and the fix is tie_word_embeddings in config.json, not 'a truncated download'."""
    import json

    from llavakit.checkpoint.fill import CheckpointMismatchError

    tm.hf_model("llava", tie_word_embeddings=True).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)1 missing: lm_head\.weight.*tie_word_embeddings.: true"):
        LlavaModel.from_pretrained(tmp_path)


def test_an_unsupported_vision_activation_is_refused_by_its_config_key() -> None:
    """Every vision activation we accept is one the tower runs; another one (transformers runs any ACT2FN name)
    is refused naming vision_config.hidden_act when the config is read (it was a bare KeyError('gelu_new') while
    building the model)."""
    from llavakit.config import VISION_ACTIVATIONS, LlavaConfig
    from llavakit.model.vision import ACTIVATIONS
    from llavakit.tiny import tiny_config

    assert set(VISION_ACTIVATIONS) == set(ACTIVATIONS)
    d = tiny_config("llava").to_hf()
    d["vision_config"]["hidden_act"] = "gelu_new"
    with pytest.raises(ValueError, match="vision_config.hidden_act 'gelu_new' is not supported"):
        LlavaConfig.from_hf(d)


def test_saved_config_names_the_weights_dtype_as_transformers_writes_it(tmp_path):
    """config.json carries ``"dtype"`` (transformers 5 writes it; vLLM's "auto" dtype reads it): save_pretrained of
    a bfloat16 model says bfloat16, and transformers' AutoConfig reads it back."""
    from transformers import AutoConfig

    from llavakit.tiny import write_tiny_checkpoint

    src = write_tiny_checkpoint(tmp_path / "tiny", "llava_next", seed=0)
    model = LlavaModel.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoConfig.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    LlavaModel.from_pretrained(src).save_pretrained(tmp_path / "f32")
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"


def test_training_outputs_name_their_weights_dtype(tmp_path):
    from llavakit.tiny import write_tiny_checkpoint
    from llavakit.train.checkpointing import write_model

    model = LlavaModel.from_pretrained(write_tiny_checkpoint(tmp_path / "tiny", "llava", seed=0))
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    write_model(tmp_path / "out", state, model.config, None)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
