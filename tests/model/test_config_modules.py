"""The config sections live in their own modules (config_vision, config_text); llavakit.config still exports every
name it did, as the same objects."""

from __future__ import annotations

import llavakit.config as config
import llavakit.config_text as config_text
import llavakit.config_vision as config_vision

VISION_NAMES = ["VisionConfig", "VISION_TYPES", "VISION_ACTIVATIONS", "_positive"]
TEXT_NAMES = ["TextConfig", "TEXT_TYPES", "TEXT_ACTIVATIONS", "ROPE_TYPES", "LAYER_TYPES", "QWEN2_MAX_WINDOW_LAYERS",
              "TEXT_ARCHITECTURES", "HF_TEXT_DEFAULTS"]  # fmt: skip
LLAVA_NAMES = ["LlavaConfig", "FAMILIES", "V16_PINPOINTS", "OV_PINPOINTS", "HF_FAMILY_DEFAULTS", "QUANTIZE_MODES",
               "onevision_pinpoints", "_within", "_MLP_RE", "_LLAVA_DEFAULTS", "_OV_SIDES"]  # fmt: skip


def test_sections_are_defined_in_their_modules_and_reexported():
    for name in VISION_NAMES:
        assert getattr(config, name) is getattr(config_vision, name), name
    for name in TEXT_NAMES:
        assert getattr(config, name) is getattr(config_text, name), name
    assert config.VisionConfig.__module__ == "llavakit.config_vision"
    assert config.TextConfig.__module__ == "llavakit.config_text"
    for name in LLAVA_NAMES:
        assert hasattr(config, name), name


def test_the_split_changes_no_behaviour():
    """Round trips through config.json and the checks of each section, whichever module they come from."""
    import pytest

    for family in config.FAMILIES:
        cfg = config.LlavaConfig.from_hf({"model_type": family, "text_config": {"vocab_size": 152000}})
        again = config.LlavaConfig.from_hf(cfg.to_hf())
        assert again == cfg
    qwen = {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 64, "num_hidden_layers": 30}
    text = config_text.TextConfig.from_hf(qwen)  # transformers' rule: windows from max_window_layers (28) on
    assert [text.layer_window(i) for i in (27, 28)] == [None, 64]
    assert config_text.TextConfig.from_hf(text.to_hf()) == text
    with pytest.raises(ValueError, match=r"vision_config.patch_size must be a positive integer"):
        config_vision.VisionConfig(patch_size=0)
    with pytest.raises(ValueError, match=r"text_config.hidden_size must be a positive integer"):
        config_text.TextConfig(hidden_size=0)
