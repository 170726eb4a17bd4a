"""model.init of an original-format (liuhaotian) checkpoint whose vision tower cannot be used: the error names
the fix that works (``llava convert SRC DST --vision-tower DIR``, then model.init=DST), not model.vision_tower
(refused next to model.init) or a config.json the recipe has no place for."""

from __future__ import annotations

import json

import pytest

from llavakit.train.build import build_model
from llavakit.train.recipe import ModelSpec


def original_dir(tmp_path, tower: str, mm_hidden: int = 64):
    ckpt = tmp_path / "orig"
    ckpt.mkdir()
    cfg = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
           "vocab_size": 100, "rms_norm_eps": 1e-5, "max_position_embeddings": 512, "mm_vision_tower": tower,
           "mm_hidden_size": mm_hidden, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
           "mm_vision_select_feature": "patch"}  # fmt: skip
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def test_a_missing_tower_names_llava_convert_then_model_init(tmp_path):
    ckpt = original_dir(tmp_path, str(tmp_path / "gone-tower"))
    with pytest.raises(FileNotFoundError) as e:
        build_model(ModelSpec(init=str(ckpt)))
    assert f"llava convert {ckpt} DST --vision-tower DIR" in str(e.value) and "model.init=DST" in str(e.value)
    assert "as vision_tower" not in str(e.value)


def test_a_known_tower_of_another_width_names_llava_convert_then_model_init(tmp_path):
    ckpt = original_dir(tmp_path, "openai/clip-vit-large-patch14-336", mm_hidden=64)  # that tower is 1024 wide
    with pytest.raises(ValueError, match=r"mm_hidden_size 64 != hidden size 1024") as e:
        build_model(ModelSpec(init=str(ckpt)))
    assert "llava convert SRC DST --vision-tower DIR" in str(e.value) and "model.init=DST" in str(e.value)
    assert "pass the config.json" not in str(e.value)


def test_an_unknown_tower_name_names_llava_convert(tmp_path):
    from llavakit.checkpoint.original import config_from_original

    cfg = json.loads((original_dir(tmp_path, "./my-eva-clip") / "config.json").read_text())
    with pytest.raises(ValueError, match=r"unknown vision tower .*llava convert SRC DST --vision-tower DIR"):
        config_from_original(cfg)
