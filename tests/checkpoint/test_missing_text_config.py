"""An HF config.json without text_config: transformers' default language model (a 7B Llama; Qwen2's defaults for
OneVision) is assumed, and weights of another size are refused in one line naming the missing text_config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llavakit import LlavaModel
from llavakit.checkpoint.fill import CheckpointMismatchError
from tiny_models import hf_model


def _without_text_config(path: Path, family: str = "llava", empty: bool = False) -> Path:
    hf_model(family, "qwen2" if family == "llava_onevision" else "llama").save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    if empty:
        cfg["text_config"] = {}
    else:
        del cfg["text_config"]
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def _as_bin(path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")


def _one_line(err: pytest.ExceptionInfo, *words: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 600, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize(
    "family,name", [("llava", "7B Llama"), ("llava_next", "7B Llama"), ("llava_onevision", "Qwen2")]
)
def test_weights_of_another_size_name_the_missing_text_config(tmp_path, monkeypatch, family, name):
    path = _without_text_config(tmp_path / "m", family)

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data read before the shapes were checked")

    monkeypatch.setattr("llavakit.checkpoint.load.iter_checkpoint_tensors", no_data)  # headers only
    with pytest.raises(CheckpointMismatchError) as err:
        LlavaModel.from_pretrained(path)
    _one_line(err, "config.json has no text_config", name, "add the text_config of the checkpoint")
    assert "embed_tokens.weight: checkpoint (128, 48) vs model (" in str(err.value)


def test_an_empty_text_config_and_a_bin_checkpoint_get_the_same_message(tmp_path):
    """.bin files have no header to read: the same message comes once the weights were compared."""
    path = _without_text_config(tmp_path / "m", empty=True)
    _as_bin(path)
    with pytest.raises(CheckpointMismatchError) as err:
        LlavaModel.from_pretrained(path)
    _one_line(err, "config.json has no text_config", "7B Llama: 32 layers, hidden size 4096, vocabulary 32000")


def test_an_image_token_beyond_the_default_vocabulary_names_the_missing_text_config(tmp_path):
    path = _without_text_config(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "image_token_index": 32000}))  # llava-1.5-hf's id
    with pytest.raises(ValueError) as err:
        LlavaModel.from_pretrained(path)
    _one_line(err, "config.json has no text_config", "Llama", "token id 32000", "add the text_config")


def test_weights_that_fit_the_assumed_model_pass_the_header_check(tmp_path):
    from llavakit.checkpoint.api import check_assumed_text
    from llavakit.config import LlavaConfig

    hf = hf_model("llava")
    hf.save_pretrained(tmp_path / "m")
    with torch.device("meta"):
        model = LlavaModel(LlavaConfig.from_hf(hf.config.to_dict()))
    check_assumed_text(tmp_path / "m", model)  # the same shapes: nothing to refuse


def test_a_config_with_text_config_keeps_the_detailed_mismatch_report(tmp_path):
    hf_model("llava").save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError) as err:
        LlavaModel.from_pretrained(tmp_path / "m")
    assert "missing" in str(err.value) and "text_config" not in str(err.value)
