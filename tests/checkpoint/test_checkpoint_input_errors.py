"""Checkpoint directories and convert flags that cannot be used: one line naming the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from llavakit import LlavaModel
from llavakit.checkpoint.load import read_config_dict
from tiny_models import hf_model


def test_config_json_that_is_a_directory_is_named_as_such(tmp_path, capsys):
    from llavakit.cli import main

    (tmp_path / "m" / "config.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"config.json is a directory .* replace it with the config.json file"):
        read_config_dict(tmp_path / "m")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        LlavaModel.from_pretrained(tmp_path / "m")
    assert main(["convert", str(tmp_path / "m"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "config.json is a directory" in err and "not found" not in err and len(err.strip().splitlines()) == 1


def test_tokenizer_file_that_is_a_directory_is_named_as_such(tmp_path):
    from llavakit.processing.tokenizer import Tokenizer
    from llavakit.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "tiny")
    (path / "tokenizer_config.json").unlink()
    (path / "tokenizer_config.json").mkdir()
    with pytest.raises(IsADirectoryError, match="tokenizer_config.json is a directory .* replace it"):
        Tokenizer.from_dir(path)


def test_convert_refuses_vision_tower_for_an_hf_checkpoint(tmp_path: Path, capsys):
    """--vision-tower names the separate tower of an original checkpoint; an HF checkpoint holds its own, and
    the flag was silently ignored: refused before anything is written."""
    from llavakit.cli import main

    hf_model("llava").save_pretrained(tmp_path / "hf")
    tower = tmp_path / "clip"
    tower.mkdir()
    capsys.readouterr()  # transformers' save progress
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--vision-tower", str(tower)]) == 2
    err = capsys.readouterr().err
    assert "--vision-tower applies to original checkpoints" in err and "leave --vision-tower out" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_load_model_refuses_vision_tower_for_an_hf_checkpoint(tmp_path: Path):
    """The library call took ``vision_tower`` for an HF checkpoint and ignored it."""
    from llavakit.checkpoint.api import load_model

    hf_model("llava").save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="vision_tower applies to original checkpoints .* leave vision_tower out"):
        load_model(tmp_path / "hf", vision_tower=tmp_path / "clip")
    assert load_model(tmp_path / "hf") is not None


def test_a_lora_adapter_directory_points_to_merge_lora(tmp_path, capsys):
    """A LoRA run's checkpoint (or OUT/adapter) has adapter files and no config.json: said, with the command."""
    from llavakit.cli import main

    (tmp_path / "step-00000010").mkdir()
    (tmp_path / "step-00000010" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds a LoRA adapter: merge it into its base model first"):
        LlavaModel.from_pretrained(tmp_path / "step-00000010")
    assert main(["generate", "--model", str(tmp_path / "step-00000010"), "--prompt", "hi"]) == 2
    assert "llava merge-lora --base BASE" in capsys.readouterr().err
