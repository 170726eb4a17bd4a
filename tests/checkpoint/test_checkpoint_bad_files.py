"""Checkpoint files that are present but not what a loader needs: one line naming the file, the problem and the fix
(never a traceback, never the wrong fix)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from llavakit import LlavaModel
from tiny_models import hf_model


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "llava"
    hf_model("llava").save_pretrained(path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line_cli_error(capsys, *argv: str) -> str:
    from llavakit.cli import main

    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "weight_map",
    [["model.safetensors"], {"lm_head.weight": 5}, {"lm_head.weight": None}, "model-00001-of-00001.safetensors"],
)
def test_an_index_whose_weight_map_has_the_wrong_types_is_named(tmp_path, tiny_hf, capsys, weight_map):
    """A weight_map that is a list, or maps a name to a non-string, ended in AttributeError / TypeError tracebacks."""
    path = _copy(tiny_hf, tmp_path / "m")
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="model.safetensors.index.json is not a valid index file"):
        LlavaModel.from_pretrained(path)
    err = _one_line_cli_error(capsys, "convert", str(path), str(tmp_path / "out"))
    assert "not a valid index file" in err


def test_an_index_naming_a_shard_outside_the_checkpoint_is_refused(tmp_path, tiny_hf):
    """An index whose shard is "../other/model.safetensors" read weights from outside the checkpoint directory."""
    path = _copy(tiny_hf, tmp_path / "m")
    (tmp_path / "other").mkdir()
    (path / "model.safetensors").rename(tmp_path / "other" / "model.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "other" / "model.safetensors"), "pt") as f:
        weight_map = dict.fromkeys(f.keys(), "../other/model.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=r"shard '../other/model.safetensors' lies outside"):
        LlavaModel.from_pretrained(path)


LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69f22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 13567\n"
)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_git_lfs_pointer_in_place_of_the_weights_says_git_lfs_pull(tmp_path, tiny_hf, name):
    """A repository cloned without git-lfs holds pointer files: 'corrupt or truncated, re-download it' sent the user
    to clone again, which gives the same pointers; the message names the pointer and `git lfs pull`."""
    path = _copy(tiny_hf, tmp_path / "m")
    (path / "model.safetensors").unlink()
    (path / name).write_bytes(LFS_POINTER)
    with pytest.raises(ValueError, match=f"{name} is a Git LFS pointer, not the weights: .*git lfs pull"):
        LlavaModel.from_pretrained(path)


def _original_config_only(path):  # noqa: ANN001, ANN202
    """A directory with an original-format (liuhaotian/*) config.json and nothing else yet."""
    path.mkdir()
    cfg = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    }
    (path / "config.json").write_text(json.dumps(cfg))


def test_an_original_lora_directory_is_named_as_an_adapter_not_an_incomplete_download(tmp_path, tiny_hf, capsys):
    """liuhaotian/*-lora repositories hold config.json (with mm_* fields), adapter_config.json, adapter_model.bin and
    non_lora_trainables.bin: they were refused as 'the download is incomplete ... re-download the checkpoint'."""
    path = tmp_path / "llava-v1.5-7b-lora"
    _original_config_only(path)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 128, "lora_alpha": 256}))
    (path / "adapter_model.bin").write_bytes(b"")
    (path / "non_lora_trainables.bin").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match="holds a LoRA adapter .* not a full model: merge it into its base model"
    ):
        LlavaModel.from_pretrained(path)
    err = _one_line_cli_error(capsys, "convert", str(path), str(tmp_path / "out"))
    assert "LoRA adapter" in err and "re-download" not in err


def test_a_stage1_projector_directory_is_named_as_such(tmp_path):
    """A stage-1 (pretraining) output holds config.json and mm_projector.bin only: not an incomplete download."""
    path = tmp_path / "llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5"
    _original_config_only(path)
    (path / "mm_projector.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="holds only the projector of a stage-1 .*not a full model"):
        LlavaModel.from_pretrained(path)


def test_a_config_json_that_is_not_utf8_is_named(tmp_path, tiny_hf):
    path = _copy(tiny_hf, tmp_path / "m")
    (path / "config.json").write_bytes(b"\xff\xfe{\x00}\x00")  # saved as UTF-16 by an editor
    with pytest.raises(ValueError, match=r"config.json is not UTF-8 text .*re-download or fix the file"):
        LlavaModel.from_pretrained(path)


@pytest.mark.parametrize(
    "key,value,want",
    [
        ("text_config", "llama", "an object"),
        ("vision_config", [1], "an object"),
        ("text_config.model_type", ["llama"], "a string"),
        ("text_config.rope_scaling", "linear", "an object"),
        ("image_token_index", "120", "an integer"),
        ("vision_feature_layer", "-2", "an integer or a list of integers"),
        ("tie_word_embeddings", "false", "true or false"),
        ("multimodal_projector_bias", "false", "true or false"),
        ("image_grid_pinpoints", [56, 112], r"a list of \[height, width\] pairs"),
        ("image_grid_pinpoints", "[[56, 112]]", r"a list of \[height, width\] pairs"),
        ("vision_aspect_ratio", 9, "a string"),
        ("video_token_index", "121", "an integer"),
    ],
)
def test_config_values_of_the_wrong_json_type_are_refused_by_key(tmp_path, key, value, want):
    """transformers refuses them (StrictDataclassFieldValidationError naming the field); llavakit ended in
    TypeError / AttributeError tracebacks, or read "false" as true (a projector bias the weights lack)."""
    from llavakit.checkpoint.api import load_config

    family = "llava_onevision" if key in ("vision_aspect_ratio", "video_token_index") else "llava_next"
    cfg = hf_model(family, "qwen2" if family == "llava_onevision" else "llama").config.to_dict()
    path = tmp_path / "m"
    path.mkdir()
    section, _, leaf = key.rpartition(".")
    (cfg[section] if section else cfg)[leaf] = value
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match=rf"config.json: {re.escape(key)} must be {want}, got {re.escape(repr(value))}"
    ):
        load_config(path)


@pytest.mark.parametrize(
    "key,value,want",
    [
        ("architectures", "LlavaLlamaForCausalLM", "a list of names"),
        ("mm_hidden_size", "1024", "an integer"),
        ("mm_vision_select_layer", "-2", "an integer"),
        ("mm_projector_type", 2, "a string"),
        ("mm_vision_tower", 5, "a string"),
        ("tie_word_embeddings", "false", "true or false"),
        ("mm_use_im_start_end", "true", "true or false"),
    ],
)
def test_original_config_values_of_the_wrong_json_type_are_refused_by_key(tmp_path, key, value, want):
    """An original config's mm_* values were read as they are: TypeError tracebacks (mm_projector_type 2,
    mm_vision_tower 5), misleading refusals ("unsupported architecture 'L'", "mm_hidden_size 1024 != hidden size
    1024"), or a string taken for another value ("-2" kept as the feature layer, "true" for
    mm_use_im_start_end read as false)."""
    from test_original import LLAVA_V15_7B

    from llavakit.checkpoint.api import load_config

    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**LLAVA_V15_7B, key: value}))
    message = rf"config.json: {re.escape(key)} must be {want}, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        load_config(path)


@pytest.mark.parametrize("dtype", ["int8", "float64"])
def test_a_dtype_that_is_not_a_model_dtype_is_refused_at_load(tiny_hf, dtype):
    """load(path, dtype=torch.int8) loaded and then failed in the first LayerNorm ('not implemented for Char');
    torch.float64 was taken though the string 'float64' is refused."""
    import torch

    import llavakit

    with pytest.raises(ValueError, match=f"dtype torch.{dtype} is not a model dtype; use one of torch.float32"):
        llavakit.load(str(tiny_hf), dtype=getattr(torch, dtype))


@pytest.mark.parametrize("layer", [-10, 7, [-2, -10]])
def test_a_vision_feature_layer_beyond_the_tower_is_refused_at_load(tmp_path, tiny_hf, layer):
    """A feature layer the tower does not have loaded fine and was refused only at the first image, from inside
    the vision tower's forward."""
    path = _copy(tiny_hf, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["vision_feature_layer"] = layer
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"vision_feature_layer .* is out of range for a vision tower of \d+ layers"):
        LlavaModel.from_pretrained(path)
