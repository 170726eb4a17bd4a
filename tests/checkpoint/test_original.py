"""Original-format configs and checkpoints -> the HF conventions of transformers' converted models."""

from __future__ import annotations

import json

import pytest
import torch

from llavakit.checkpoint.fill import load_into
from llavakit.checkpoint.keymaps import detect_layout
from llavakit.checkpoint.load import read_config_dict
from llavakit.checkpoint.original import (
    config_from_original,
    is_original_config,
    original_tensors,
    pinpoints_to_hf,
    read_vision_tower_config,
)
from llavakit.checkpoint.save import save_config, save_state_dict
from llavakit.checkpoint.vocab_growth import add_image_tokens, converted_vocab_size, grow_rows
from tiny_models import TINY_CLIP_TEXT, hf_model, vision_config

# Modelled on the published config.json files of liuhaotian/llava-v1.5-7b, llava-v1.6-mistral-7b,
# llava-v1.6-34b and lmms-lab/llava-onevision-qwen2-0.5b-ov (training-only fields left out). The mm_* field
# sets follow copies of liuhaotian/llava-v1.6-vicuna-7b and lmms-lab/llava-onevision-qwen2-7b-ov found in
# public code; LLM sizes are the base models' (Vicuna-7B, Mistral-7B-v0.2, Yi-34B, Qwen2-0.5B).
V16_PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
OV_PINS = [[i * 384, j * 384] for i in range(1, 7) for j in range(1, 7)]
# fmt: off
LLAVA_V15_7B = {
    "_name_or_path": "./checkpoints/vicuna-7b-v1-5", "architectures": ["LlavaLlamaForCausalLM"],
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
    "image_aspect_ratio": "pad", "initializer_range": 0.02, "intermediate_size": 11008, "max_length": 4096,
    "max_position_embeddings": 4096, "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "model_type": "llava", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.31.0",
    "tune_mm_mlp_adapter": False, "use_cache": True, "use_mm_proj": True, "vocab_size": 32000,
}
LLAVA_V16_MISTRAL_7B = {
    "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["LlavaMistralForCausalLM"],
    "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
    "image_aspect_ratio": "anyres", "image_crop_resolution": 224, "image_grid_pinpoints": V16_PINS,
    "image_split_resolution": 224, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "mm_hidden_size": 1024, "mm_patch_merge_type": "spatial_unpad", "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "model_type": "llava_mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.36.2", "unfreeze_mm_vision_tower": True, "use_cache": True,
    "use_mm_proj": True, "vocab_size": 32000,
}
LLAVA_V16_34B = {
    "_name_or_path": "NousResearch/Nous-Hermes-2-Yi-34B", "architectures": ["LlavaLlamaForCausalLM"],
    "attention_bias": False, "bos_token_id": 1, "eos_token_id": 7, "hidden_act": "silu", "hidden_size": 7168,
    "image_aspect_ratio": "anyres", "image_grid_pinpoints": V16_PINS, "intermediate_size": 20480,
    "max_position_embeddings": 4096, "mm_hidden_size": 1024, "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "model_type": "llava", "num_attention_heads": 56,
    "num_hidden_layers": 60, "num_key_value_heads": 8, "pad_token_id": 0, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 5000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "use_mm_proj": True, "vocab_size": 64000,
}
LLAVA_OV_05B = {
    "_name_or_path": "lmms-lab/llava-onevision-qwen2-0.5b-ov", "architectures": ["LlavaQwenForCausalLM"],
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "hidden_size": 896, "image_aspect_ratio": "anyres_max_9", "image_crop_resolution": None,
    "image_grid_pinpoints": OV_PINS, "image_split_resolution": None, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 24, "mm_hidden_size": 1152,
    "mm_newline_position": "one_token", "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_type": "mlp2x_gelu", "mm_spatial_pool_mode": "bilinear",
    "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "google/siglip-so400m-patch14-384", "model_type": "llava", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_mm_proj": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
# fmt: on


def test_llava_v15_7b():
    orig = config_from_original(LLAVA_V15_7B, name="liuhaotian/llava-v1.5-7b")
    c = orig.config
    assert (c.model_type, c.text.model_type, c.vision.model_type) == ("llava", "llama", "clip_vision_model")
    assert (c.vision.image_size, c.vision.num_hidden_layers, c.vision.hidden_size) == (336, 24, 1024)
    assert (c.vision_feature_layer, c.vision_feature_select_strategy) == (-2, "default")
    assert (c.image_token_id, c.video_token_id, c.text.vocab_size, orig.stored_vocab_size) == (
        32000,
        None,
        32064,
        32000,
    )
    assert (c.text.hidden_size, c.text.num_key_value_heads, c.text.rms_norm_eps) == (4096, 32, 1e-5)
    assert c.projector_type == "mlp2x_gelu" and c.image_grid_pinpoints is None and not c.tie_word_embeddings
    p = orig.processing
    assert (p.image_aspect_ratio, p.template, p.image_size) == ("pad", "vicuna_v1", 336)
    assert p.image_mean == (0.48145466, 0.4578275, 0.40821073)


def test_llava_v16_mistral_7b():
    orig = config_from_original(LLAVA_V16_MISTRAL_7B)
    c = orig.config
    assert (c.model_type, c.text.model_type) == ("llava_next", "mistral")
    assert c.image_grid_pinpoints == [[672, 336], [336, 672], [672, 672], [336, 1008], [1008, 336]]
    assert (c.text.rope_theta, c.text.sliding_window, c.text.num_key_value_heads) == (1e6, None, 8)
    assert (c.image_token_id, c.text.vocab_size) == (32000, 32064)
    assert orig.processing.template == "mistral_instruct"
    assert orig.processing.image_aspect_ratio == "anyres"


def test_llava_v16_34b():
    orig = config_from_original(LLAVA_V16_34B, name="liuhaotian/llava-v1.6-34b")
    c = orig.config
    assert (c.model_type, c.text.model_type) == ("llava_next", "llama")
    assert (c.text.hidden_size, c.text.num_attention_heads, c.text.num_hidden_layers) == (7168, 56, 60)
    assert (c.text.rope_theta, c.text.eos_token_id) == (5e6, 7)
    assert (c.image_token_id, c.text.vocab_size) == (64000, 64064)  # llava-hf/llava-v1.6-34b-hf: 64000
    assert orig.processing.template == "chatml_direct"


def test_llava_onevision_qwen2_05b():
    orig = config_from_original(LLAVA_OV_05B)
    c = orig.config
    assert (c.model_type, c.text.model_type, c.vision.model_type) == (
        "llava_onevision",
        "qwen2",
        "siglip_vision_model",
    )
    # the original deletes SigLIP's last layer and uses what remains, all tokens
    assert (c.vision.num_hidden_layers, c.vision_feature_layer, c.vision_feature_select_strategy) == (
        26,
        -1,
        "full",
    )
    assert (c.vision.hidden_size, c.vision.image_size, c.vision.hidden_act) == (
        1152,
        384,
        "gelu_pytorch_tanh",
    )
    assert (c.image_token_id, c.video_token_id, c.text.vocab_size) == (151646, 151647, 152000)
    assert c.vision_aspect_ratio == "anyres_max_9" and c.tie_word_embeddings and c.text.qkv_bias
    assert c.text.sliding_window is None  # use_sliding_window false
    assert c.image_grid_pinpoints == [[j * 384, i * 384] for i in range(1, 7) for j in range(1, 7)]
    p = orig.processing
    assert (p.template, p.image_mean, p.image_std) == ("qwen_1_5", (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("cfg", [LLAVA_V15_7B, LLAVA_V16_MISTRAL_7B, LLAVA_V16_34B, LLAVA_OV_05B])
def test_converted_configs_load_in_transformers(tmp_path, cfg):
    from transformers import AutoConfig

    c = config_from_original(cfg).config
    save_config(c, tmp_path)
    ref = AutoConfig.from_pretrained(tmp_path)
    assert ref.model_type == c.model_type and ref.image_token_index == c.image_token_id
    assert ref.text_config.vocab_size == c.text.vocab_size
    assert ref.vision_config.num_hidden_layers == c.vision.num_hidden_layers


def test_pinpoints_choose_the_same_tile_grid_as_the_original():
    """Original select_best_resolution on (width, height) pins vs transformers' on our (height, width)."""
    from transformers.image_processing_utils import select_best_resolution

    def original(width, height, pins):  # transcription of LLaVA-NeXT mm_utils.select_best_resolution
        best, best_eff, best_waste = None, 0, float("inf")
        for w, h in pins:
            scale = min(w / width, h / height)
            eff = min(int(width * scale) * int(height * scale), width * height)
            waste = w * h - eff
            if eff > best_eff or (eff == best_eff and waste < best_waste):
                best, best_eff, best_waste = (w, h), eff, waste
        return best

    g = torch.Generator().manual_seed(0)
    asymmetric = [[336, 672], [1008, 336], [672, 1008]]  # where forgetting the swap shows
    for pins, tile in ((V16_PINS, 336), (OV_PINS, 384), (asymmetric, 336), ("(1x1),...,(3x2)", 384)):
        ours = pinpoints_to_hf(pins, tile)
        listed = pins if isinstance(pins, list) else [[i * tile, j * tile] for i in (1, 2, 3) for j in (1, 2)]
        for _ in range(200):
            height, width = torch.randint(50, 3000, (2,), generator=g).tolist()
            w, h = original(width, height, listed)
            assert tuple(select_best_resolution((height, width), ours)) == (h, w)


def test_pinpoint_string_form():
    assert pinpoints_to_hf("(1x1),...,(6x6)", 384) == pinpoints_to_hf(OV_PINS, 384)
    assert pinpoints_to_hf("[(336, 672), (672, 336)]", 336) == [[672, 336], [336, 672]]
    with pytest.raises(ValueError, match="cannot parse"):
        pinpoints_to_hf("(axb)", 384)


def test_unsupported_configs_fail_clearly():
    with pytest.raises(ValueError, match="not an original LLaVA config"):
        config_from_original({"model_type": "llama"})
    with pytest.raises(ValueError, match="unsupported combination"):
        config_from_original({**LLAVA_V15_7B, "image_aspect_ratio": "anyres"})
    with pytest.raises(ValueError, match="unsupported architecture 'LlavaMixtralForCausalLM'"):
        config_from_original({**LLAVA_V15_7B, "architectures": ["LlavaMixtralForCausalLM"]})
    with pytest.raises(ValueError, match="unknown vision tower"):
        config_from_original({**LLAVA_V15_7B, "mm_vision_tower": "./my-eva-clip"})
    with pytest.raises(ValueError, match="mm_hidden_size 768"):
        config_from_original({**LLAVA_V15_7B, "mm_hidden_size": 768})
    with pytest.raises(ValueError, match="mm_projector_type 'identity'"):
        config_from_original({**LLAVA_V15_7B, "mm_projector_type": "identity"})
    with pytest.raises(ValueError, match="mm_use_im_start_end true .* not supported"):
        config_from_original({**LLAVA_V15_7B, "mm_use_im_start_end": True})
    assert config_from_original({**LLAVA_V15_7B, "mm_use_im_patch_token": True}).config.model_type == "llava"
    for key, value in (("mm_newline_position", "grid"), ("mm_spatial_pool_mode", "max"), ("mm_spatial_pool_stride", 4)):
        with pytest.raises(ValueError, match=f"{key} {value!r} is not supported"):
            config_from_original({**LLAVA_OV_05B, key: value})
    assert (
        config_from_original({**LLAVA_OV_05B, "mm_newline_position": "one_token"}).config.model_type
        == "llava_onevision"
    )


def test_template_guesses():
    assert config_from_original({**LLAVA_V15_7B, "vocab_size": 128256}).processing.template == "llama3"
    assert config_from_original(LLAVA_V15_7B, name="lmms-lab/llama3-llava-next-8b").processing.template == "llama3"
    assert config_from_original({**LLAVA_V15_7B, "vocab_size": 50000}).processing.template is None
    assert config_from_original(LLAVA_V15_7B).processing.template == "vicuna_v1"
    assert is_original_config(LLAVA_V15_7B) and not is_original_config({"model_type": "llava"})


def test_vocab_growth():
    assert converted_vocab_size(32000, [32000]) == 32064
    assert converted_vocab_size(151936, [151646, 151647]) == 152000
    assert converted_vocab_size(152064, [151646, 151647]) == 152128
    assert converted_vocab_size(100, [300]) == 320
    torch.manual_seed(0)
    emb, head = torch.randn(100, 8), torch.randn(100, 8)
    grown = add_image_tokens(
        {"model.language_model.embed_tokens.weight": emb, "lm_head.weight": head, "x": emb},
        config_from_original({**LLAVA_V15_7B, "vocab_size": 100}).config,
    )
    for key, w in (("model.language_model.embed_tokens.weight", emb), ("lm_head.weight", head)):
        assert grown[key].shape == (128, 8)  # 100 + 2 -> 128
        assert torch.equal(grown[key][:100], w)
        torch.testing.assert_close(grown[key][100:], w.mean(0).expand(28, 8))
    assert grown["x"] is emb
    assert grow_rows(emb, 100) is emb
    with pytest.raises(ValueError, match="more than the config's vocab_size"):
        grow_rows(emb, 64)


# -- whole original checkpoints ------------------------------------------------------------------------------


def tiny_original_config(hf, tower: str, **mm) -> dict:
    t = hf.config.text_config
    return {
        "architectures": ["LlavaQwenForCausalLM" if t.model_type == "qwen2" else "LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "vocab_size": t.vocab_size,
        "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "mm_vision_tower": tower,
        "mm_hidden_size": hf.config.vision_config.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        **mm,
    }


def original_state(hf, with_tower: bool) -> dict[str, torch.Tensor]:
    """The original key layout (llava-compat.md table), written out by hand."""
    out = {}
    for k, v in hf.state_dict().items():
        if k.startswith("model.vision_tower."):
            if not with_tower:
                continue
            k = "model.vision_tower.vision_tower.vision_model." + k.removeprefix("model.vision_tower.")
        k = k.replace("model.multi_modal_projector.linear_1.", "model.mm_projector.0.")
        k = k.replace("model.multi_modal_projector.linear_2.", "model.mm_projector.2.")
        k = k.replace("model.language_model.", "model.")
        out[k] = v.clone()
    out["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    return out


def hf_meta_from(config, tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    save_config(config, tmp_path / "converted")
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(tmp_path / "converted"))


def flat(pairs):  # transformers 5 modules hold the tower without the vision_model level
    for k, v in pairs:
        yield k.replace("model.vision_tower.vision_model.", "model.vision_tower.", 1), v


def check_loaded(module, hf, tower_sd, vocab, tied=False):
    """Every tensor as in the source; embeddings grown by mean rows; the tower from tower_sd when given."""
    got = module.state_dict()
    emb = "model.language_model.embed_tokens.weight"
    for k, v in hf.state_dict().items():
        if k.startswith("model.vision_tower.") and tower_sd is not None:
            v = tower_sd[k.removeprefix("model.vision_tower.")]
        if k == "lm_head.weight" and tied:
            v = hf.state_dict()[emb]
        if k in ("lm_head.weight", emb):
            assert got[k].shape[0] == vocab
            torch.testing.assert_close(got[k][v.shape[0] :], v.mean(0).expand(vocab - v.shape[0], -1))
            assert torch.equal(got[k][: v.shape[0]], v), k
        else:
            assert torch.equal(got[k], v), k


def test_llava15_checkpoint_with_separate_clip_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=TINY_CLIP_TEXT, vision_config=vision_config("clip").to_dict()))
    tower_dir = tmp_path / "clip"
    clip.save_pretrained(tower_dir)
    hf = hf_model("llava")
    ckpt = tmp_path / "llava-v1.5-tiny"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(tiny_original_config(hf, str(tower_dir), image_aspect_ratio="pad")))
    torch.save(original_state(hf, with_tower=False), ckpt / "pytorch_model.bin")

    cfg = read_config_dict(ckpt)
    orig = config_from_original(cfg, read_vision_tower_config(cfg, ckpt))
    assert orig.config.text.vocab_size == 192 and orig.config.image_token_id == 128
    module = hf_meta_from(orig.config, tmp_path)
    load_into(module, flat(original_tensors(ckpt, orig.config)))
    tower_sd = {
        k.removeprefix("vision_model."): v for k, v in clip.state_dict().items() if k.startswith("vision_model.")
    }
    check_loaded(module, hf, tower_sd, vocab=192)


def test_onevision_checkpoint_with_tower_inside_and_tied_embeddings(tmp_path):
    hf = hf_model("llava_onevision", "qwen2")
    ckpt = tmp_path / "ov-tiny"
    sd = original_state(hf, with_tower=True)
    sd.pop("lm_head.weight")
    save_state_dict(sd, ckpt, max_shard_bytes=60_000)
    cfg = tiny_original_config(
        hf,
        "google/siglip-so400m-patch14-384",
        image_aspect_ratio="anyres_max_9",
        mm_patch_merge_type="spatial_unpad",
        image_grid_pinpoints="(1x1),...,(6x6)",
        tie_word_embeddings=True,
        image_token_index=120,
    )
    tower_cfg = {
        "model_type": "siglip",
        "vision_config": {**vision_config("siglip").to_dict(), "num_hidden_layers": 4},
    }  # one more than stored
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert detect_layout(sd) == "original"
    orig = config_from_original(cfg, tower_cfg)
    c = orig.config
    assert (c.vision.num_hidden_layers, c.vision_feature_layer, c.vision_feature_select_strategy) == (
        3,
        -1,
        "full",
    )
    assert c.image_grid_pinpoints == [[j * 70, i * 70] for i in range(1, 7) for j in range(1, 7)]
    assert (c.image_token_id, c.video_token_id, c.text.vocab_size) == (120, 121, 192)
    module = hf_meta_from(c, tmp_path)
    assert module.lm_head.weight is module.model.language_model.embed_tokens.weight
    load_into(module, flat(original_tensors(ckpt, c)))
    assert module.lm_head.weight is module.model.language_model.embed_tokens.weight
    check_loaded(module, hf, None, vocab=192, tied=True)


def test_missing_separate_tower_names_the_fix(tmp_path):
    hf = hf_model("llava")
    ckpt = tmp_path / "ckpt"
    save_state_dict(original_state(hf, with_tower=False), ckpt)
    cfg = tiny_original_config(hf, str(tmp_path / "gone"), image_aspect_ratio="pad")
    with pytest.raises(FileNotFoundError, match="needs its vision tower .*gone.*--vision-tower DIR"):
        read_vision_tower_config(cfg, ckpt)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    config = config_from_original(cfg, vision_config("clip").to_dict()).config
    with pytest.raises(FileNotFoundError, match="needs its vision tower"):
        list(original_tensors(ckpt, config))


def test_a_siglip_tower_at_single_resolution_squashes_like_its_processor():
    """LLaVA-NeXT's SigLIP image processor resizes straight to the tile; CLIP's resizes the shortest edge and crops."""
    from llavakit.checkpoint.convert import image_config_of

    siglip = {**LLAVA_OV_05B, "image_aspect_ratio": "square", "mm_patch_merge_type": "flat"}
    c = image_config_of(config_from_original(siglip).processing)
    assert not c.resize_shortest and not c.center_crop and c.tile == 384
    c = image_config_of(config_from_original({**LLAVA_V15_7B, "image_aspect_ratio": "square"}).processing)
    assert c.resize_shortest and c.center_crop and not c.pad_square
