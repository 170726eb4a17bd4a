"""Key layouts: every foreign layout of a transformers reference model maps back to exactly its current keys.

The layouts are produced here by hand from the literal table of llava-compat.md ("Checkpoint layouts"),
independently of llavakit.checkpoint.keymaps.
"""

from __future__ import annotations

import pytest
import torch

from llavakit.checkpoint.keymaps import detect_layout, rename_key, to_hf_keys, trim_vision_layers
from tiny_models import TINY_CLIP_TEXT, current, hf_model, vision_config

FAMILIES = ["llava", "llava_next", "llava_onevision"]

# current prefix -> pre-4.52 prefix, and current prefix -> original prefix (llava-compat.md table)
OLD = [
    ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]
ORIGINAL = [
    ("model.vision_tower.vision_model.", "model.vision_tower.vision_tower.vision_model."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.image_newline", "model.image_newline"),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
]


def relabel(sd: dict[str, torch.Tensor], table: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        new = next(n + k.removeprefix(c) for c, n in table if k.startswith(c))
        out[new] = v
    return out


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("text", ["llama", "qwen2"])
def test_three_layouts_roundtrip(family, text):
    want = current(hf_model(family, text))
    old = relabel(want, OLD)
    orig = relabel(want, ORIGINAL)
    # junk the originals carry: rotary buffers per layer, CLIP position ids
    junk = {
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(6),
        "model.vision_tower.vision_tower.vision_model.embeddings.position_ids": torch.arange(17)[None],
    }
    orig.update(junk)
    assert detect_layout(want) == "hf"
    assert detect_layout(old) == "hf_old"
    assert detect_layout(orig) == "original"
    assert_same(to_hf_keys(want, "hf"), want)
    assert_same(to_hf_keys(old, "hf_old"), want)
    assert_same(to_hf_keys(orig, "original"), want)
    assert sorted(to_hf_keys(list(orig), "original")) == sorted(want)  # key-only form


def test_transformers5_variants_without_vision_model_level(tmp_path):
    """transformers 5 keeps the tower flat in memory and saves fresh models in an old-style flat layout."""
    from safetensors import safe_open

    hf = hf_model("llava_next")
    want = current(hf)
    flat = hf.state_dict()
    assert detect_layout(flat) == "hf"
    assert_same(to_hf_keys(flat, "hf"), want)
    hf.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert any(k.startswith("vision_tower.embeddings.") for k in saved)
    assert detect_layout(saved) == "hf_old"
    assert_same(to_hf_keys(saved, "hf_old"), want)


def test_pairs_are_renamed_lazily():
    want = current(hf_model("llava"))
    old = relabel(want, OLD)
    seen = []

    def pairs():
        for k, v in old.items():
            seen.append(k)
            yield k, v

    it = to_hf_keys(pairs(), "hf_old")
    assert len(seen) == 1  # only the first pair was read to tell pairs from keys
    assert_same(dict(it), want)


def test_separate_clip_tower_keeps_only_vision_model():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=TINY_CLIP_TEXT, vision_config=vision_config("clip").to_dict()))
    sd = clip.state_dict()
    assert any(k.startswith("text_model.") for k in sd) and "logit_scale" in sd
    assert detect_layout(sd) == "original"
    got = to_hf_keys(sd, "original")
    want_keys = {k for k in current(hf_model("llava")) if k.startswith("model.vision_tower.")}
    assert set(got) == want_keys
    for k, v in got.items():
        assert torch.equal(v, sd["vision_model." + k.removeprefix("model.vision_tower.vision_model.")])


def test_separate_siglip_tower_loses_head_and_last_layer():
    """google/siglip-so400m-patch14-384 is a whole SiglipModel; OneVision keeps vision_model minus head and
    its last layer."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    siglip = SiglipModel(
        SiglipConfig(text_config=TINY_CLIP_TEXT, vision_config=vision_config("siglip", vision_use_head=True).to_dict())
    )
    sd = siglip.state_dict()
    assert any(k.startswith("vision_model.head.") for k in sd) and "logit_bias" in sd
    got = dict(trim_vision_layers(to_hf_keys(sd, "original").items(), num_layers=2))
    want = {k for k in current(hf_model("llava_onevision")) if k.startswith("model.vision_tower.")}
    want = {k for k in want if ".encoder.layers.2." not in k}  # the tiny tower has 3 layers; originals drop one
    assert set(got) == want
    for k, v in got.items():
        assert torch.equal(v, sd["vision_model." + k.removeprefix("model.vision_tower.vision_model.")])


def test_projector_files():
    w = {i: torch.randn(4, 4) for i in range(3)}
    stage1 = {
        "model.mm_projector.0.weight": w[0],
        "model.mm_projector.0.bias": w[1],
        "model.mm_projector.2.weight": w[2],
        "model.mm_projector.4.weight": w[0],
    }
    assert detect_layout(stage1) == "original"
    got = to_hf_keys(stage1, "original")
    assert set(got) == {
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_1.bias",
        "model.multi_modal_projector.linear_2.weight",
        "model.multi_modal_projector.linear_3.weight",
    }
    assert got["model.multi_modal_projector.linear_2.weight"] is w[2]
    linear = to_hf_keys({"model.mm_projector.weight": w[0], "model.mm_projector.bias": w[1]}, "original")
    assert linear == {
        "model.multi_modal_projector.linear_1.weight": w[0],
        "model.multi_modal_projector.linear_1.bias": w[1],
    }
    with pytest.raises(ValueError, match="activations"):
        rename_key("model.mm_projector.1.weight", "original")


def test_non_lora_trainables_and_lora_weights():
    keys = ["base_model.model.model.mm_projector.0.weight", "base_model.model.model.mm_projector.2.bias"]
    assert detect_layout(keys) == "original"
    assert to_hf_keys(keys, "original") == [
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_2.bias",
    ]
    with pytest.raises(ValueError, match="merge the adapter"):
        to_hf_keys(["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"], "original")


def test_errors():
    with pytest.raises(ValueError, match="mixes key layouts"):
        detect_layout(["language_model.model.norm.weight", "model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(ValueError, match="cannot tell"):
        detect_layout(["encoder.block.0.weight", "lm_head.weight"])
    with pytest.raises(ValueError, match="both map to"):
        to_hf_keys({"vision_tower.vision_model.a.weight": 1, "vision_tower.a.weight": 2}, "hf_old")
    with pytest.raises(ValueError, match="unknown layout"):
        rename_key("lm_head.weight", "gguf")  # type: ignore[arg-type]


def test_unknown_keys_pass_through_for_strict_load_to_report():
    assert rename_key("model.faster_token", "original") == "model.faster_token"
    assert rename_key("model.vision_resampler.x", "original") == "model.vision_resampler.x"
