"""from_pretrained / save_pretrained / convert at the model level: logits survive every round trip."""

from __future__ import annotations

import json

import pytest
import torch

from llavakit import LlavaModel
from llavakit.checkpoint.fill import CheckpointMismatchError
from test_model_io_helpers import image_batch
from tiny_models import hf_model, ours_from_hf

FAMILIES = [("llava", "llama"), ("llava_next", "mistral"), ("llava_onevision", "qwen2")]


def _logits(model, batch):
    """Logits of the real (non-padding) positions."""
    with torch.no_grad():
        out = model(**batch).logits
    return out[batch["attention_mask"].bool()] if "attention_mask" in batch else out


@pytest.mark.parametrize("family,text", FAMILIES)
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path, family, text):
    hf = hf_model(family, text)
    hf.save_pretrained(tmp_path / "hf")  # transformers 5 writes its own on-disk layout
    ours = LlavaModel.from_pretrained(tmp_path / "hf")
    batch = image_batch(ours)
    torch.testing.assert_close(_logits(ours, batch), _logits(hf, batch), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family,text", FAMILIES)
def test_our_checkpoint_loads_in_transformers_identically(tmp_path, family, text):
    from transformers import AutoModelForImageTextToText

    hf = hf_model(family, text)
    ours = ours_from_hf(hf)
    ours.save_pretrained(tmp_path / "ours", max_shard_bytes=40_000)
    assert len(list((tmp_path / "ours").glob("*.safetensors"))) > 1
    back = AutoModelForImageTextToText.from_pretrained(tmp_path / "ours").eval()
    ref = hf.state_dict()
    for k, v in back.state_dict().items():  # HF -> ours -> HF is an identity of tensors
        assert torch.equal(v, ref[k]), k
    batch = image_batch(ours)
    torch.testing.assert_close(_logits(back, batch), _logits(hf, batch), atol=1e-5, rtol=1e-5)


def test_save_load_identity_and_dtype(tmp_path):
    ours = ours_from_hf(hf_model("llava_next"))
    ours.save_pretrained(tmp_path / "m")
    again = LlavaModel.from_pretrained(tmp_path / "m")
    for (k, a), (k2, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    bf = LlavaModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert {p.dtype for p in bf.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in bf.parameters())


def test_a_model_optimized_or_quantized_for_inference_is_not_saved_broken(tmp_path):
    """Packed / quantized inference Linears hold other tensors than the checkpoint layout: saving such a model
    wrote a file that loads nowhere; it is refused with the way out. float32's optimized layers save as they are."""
    from llavakit.engine.linear import optimize_model
    from llavakit.engine.quantize import quantize_llava

    q = quantize_llava(ours_from_hf(hf_model("llava")), "int8")
    with pytest.raises(ValueError, match="cannot be saved as a checkpoint: .* quantized for inference"):
        q.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()
    f32 = ours_from_hf(hf_model("llava"))
    optimize_model(f32)
    f32.save_pretrained(tmp_path / "f32")
    LlavaModel.from_pretrained(tmp_path / "f32")


def test_missing_weights_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    ours = ours_from_hf(hf_model("llava"))
    ours.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    sd = load_file(f)
    del sd["model.multi_modal_projector.linear_2.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="linear_2.weight"):
        LlavaModel.from_pretrained(tmp_path / "m")


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip_2"}))
    with pytest.raises(ValueError, match="blip_2.*not a LLaVA model"):
        LlavaModel.from_pretrained(tmp_path)


def _tiny_original(tmp_path, name: str = "./checkpoints/llava-mistral-tiny", **cfg):  # noqa: ANN202
    """A synthetic liuhaotian-style checkpoint directory (CLIP tower in ``tmp_path / "clip"``) and its HF twin."""
    from transformers import CLIPConfig, CLIPModel

    from llavakit.tiny import char_tokenizer
    from tiny_models import vision_config

    hf = hf_model("llava")
    torch.manual_seed(1)
    clip = CLIPModel(
        CLIPConfig(
            text_config={
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "vocab_size": 50,
                "projection_dim": 16,
            },
            vision_config=vision_config("clip").to_dict(),
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    with torch.no_grad():  # the tower in the HF model = the separate CLIP checkpoint
        hf.model.vision_tower.load_state_dict(
            {k.removeprefix("vision_model."): v for k, v in clip.state_dict().items() if k.startswith("vision_model.")}
        )
    t = hf.config.text_config
    src = tmp_path / "llava-v1.5-tiny"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlavaLlamaForCausalLM"],
                "model_type": "llava",
                "_name_or_path": name,  # the name guesses the conversation template
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "vocab_size": t.vocab_size,
                "rms_norm_eps": t.rms_norm_eps,
                "max_position_embeddings": 4096,
                "mm_vision_tower": "openai/clip-vit-large-patch14-336",
                "mm_hidden_size": 32,
                "mm_projector_type": "mlp2x_gelu",
                "mm_vision_select_layer": -2,
                "mm_vision_select_feature": "patch",
                "image_aspect_ratio": "pad",
                "mm_patch_merge_type": "flat",
                **cfg,
            }
        )
    )
    state = {}
    for k, v in hf.state_dict().items():
        if k.startswith("model.vision_tower."):
            continue
        k = k.replace("model.multi_modal_projector.linear_1.", "model.mm_projector.0.")
        k = k.replace("model.multi_modal_projector.linear_2.", "model.mm_projector.2.")
        state[k.replace("model.language_model.", "model.")] = v.clone()
    torch.save(state, src / "pytorch_model.bin")
    char_tokenizer().save(src)  # the original vocabulary has no <image>: rename ours away
    tj = src / "tokenizer.json"
    tj.write_text(tj.read_text().replace('"<image>"', '"<extra_120>"').replace('"<video>"', '"<extra_121>"'))
    return src, hf


def test_convert_refuses_a_template_it_cannot_guess_before_writing(tmp_path, capsys):
    """A Llama checkpoint of no known vocabulary or name: the template is not silently the family default (it
    was vicuna_v1 for Llama-3 checkpoints); --template names it. A Llama-3 name guesses llama3."""
    from llavakit.cli import main
    from llavakit.processing.processor import LlavaProcessor

    src, _ = _tiny_original(tmp_path, name="./checkpoints/my-llava")
    clip = ["--vision-tower", str(tmp_path / "clip")]
    assert main(["convert", str(src), str(tmp_path / "out"), *clip]) == 2
    err = capsys.readouterr().err
    assert "cannot tell which conversation template" in err and "--template NAME" in err
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(src), str(tmp_path / "out"), *clip, "--template", "vicuna_v1"]) == 0
    assert LlavaProcessor.from_pretrained(tmp_path / "out").template == "vicuna_v1"
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "lmms-lab/llama3-llava-next-8b"}))
    assert main(["convert", str(src), str(tmp_path / "l3"), *clip]) == 0
    assert LlavaProcessor.from_pretrained(tmp_path / "l3").template == "llama3"


def test_convert_notes_a_projector_transformers_cannot_load(tmp_path, capsys):
    from llavakit.cli import main

    src, _ = _tiny_original(tmp_path, mm_projector_type="linear")
    state = torch.load(src / "pytorch_model.bin")
    state = {k.replace("mm_projector.0.", "mm_projector."): v for k, v in state.items() if "mm_projector.2" not in k}
    w = state["model.mm_projector.weight"]
    state["model.mm_projector.weight"] = torch.randn(state["model.embed_tokens.weight"].shape[1], w.shape[1])
    state["model.mm_projector.bias"] = torch.zeros(state["model.embed_tokens.weight"].shape[1])
    torch.save(state, src / "pytorch_model.bin")
    assert main(["convert", str(src), str(tmp_path / "out"), "--vision-tower", str(tmp_path / "clip")]) == 0
    assert "its linear projector runs in llavakit; transformers' and vLLM's" in capsys.readouterr().out
    assert LlavaModel.from_pretrained(tmp_path / "out").config.projector_type == "linear"


@pytest.mark.parametrize("model_type", ["llava", "llava_llama"])  # released configs say "llava"
def test_original_checkpoint_converts_to_the_same_logits(tmp_path, model_type):
    """A synthetic liuhaotian-style checkpoint (separate CLIP tower, original keys and config) converts with
    `llava convert` and gives the logits of the HF model holding the same weights."""
    from llavakit import LlavaProcessor
    from llavakit.cli import main
    from llavakit.processing.anyres import num_image_tokens

    src, hf = _tiny_original(tmp_path, model_type=model_type)
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 99]}))
    assert main(["convert", str(src), str(tmp_path / "out"), "--vision-tower", str(tmp_path / "clip")]) == 0
    # the extra end-of-sequence ids, the original's conversation template, vLLM's text architecture come along
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text())["eos_token_id"] == [2, 99]
    assert LlavaProcessor.from_pretrained(tmp_path / "out").template == "mistral_instruct"
    # ... also as a Jinja chat template, for transformers' apply_chat_template and vLLM's chat endpoint
    from llavakit.processing.jinja_export import template_name

    assert template_name((tmp_path / "out" / "chat_template.jinja").read_text()) == "mistral_instruct"
    text_cfg = json.loads((tmp_path / "out" / "config.json").read_text())["text_config"]
    assert text_cfg["architectures"] == ["LlamaForCausalLM"]
    ours = LlavaModel.from_pretrained(tmp_path / "out")
    assert ours.config.image_token_id == 128 and ours.config.text.vocab_size == 192
    n = num_image_tokens(56, 56, ours.geometry)
    ids = torch.tensor([[1, 5, 6] + [120] * n + [7, 8, 9]])
    px = torch.randn(1, 3, 56, 56)
    ref = _logits(hf, {"input_ids": ids, "pixel_values": px})
    out = _logits(ours, {"input_ids": ids.masked_fill(ids == 120, 128), "pixel_values": px})
    torch.testing.assert_close(out[..., :128], ref, atol=1e-4, rtol=1e-4)

    from PIL import Image

    proc = LlavaProcessor.from_pretrained(tmp_path / "out")  # the converted processor: <image> at 128, `pad`
    assert proc.image_token_id == 128 and proc.image_config.pad_square
    inputs = proc(text="USER: <image>\nhi ASSISTANT:", images=[Image.new("RGB", (90, 40), (9, 99, 199))])
    assert int((inputs["input_ids"] == 128).sum()) == n
    assert ours(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_convert_hf_checkpoint_to_current_layout(tmp_path):
    """`llava convert` on a transformers-written directory (weights + processor) rewrites it in the current layout."""
    import sys
    from pathlib import Path

    from safetensors import safe_open

    sys.path.insert(0, str(Path(__file__).parents[1] / "processing"))
    from hf_processors import hf_processor
    from llavakit.cli import main

    hf_processor("llava_next", tmp_path)
    hf = hf_model("llava_next", "llama")
    hf.save_pretrained(tmp_path / "llava_next")
    assert main(["convert", str(tmp_path / "llava_next"), str(tmp_path / "t"), "--template", "llama3"]) == 2
    assert not (tmp_path / "t").exists()  # --template is for original checkpoints: refused, not ignored
    assert main(["convert", str(tmp_path / "llava_next"), str(tmp_path / "out")]) == 0
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.image_newline" in keys and any(k.startswith("model.vision_tower.vision_model.") for k in keys)
    assert any(k.startswith("model.language_model.layers.") for k in keys)
    ours = LlavaModel.from_pretrained(tmp_path / "out")
    batch = image_batch(ours)
    torch.testing.assert_close(_logits(ours, batch), _logits(hf, batch), atol=1e-4, rtol=1e-4)
    from llavakit import LlavaProcessor

    assert (
        LlavaProcessor.from_pretrained(tmp_path / "out").geometry
        == LlavaProcessor.from_pretrained(tmp_path / "llava_next").geometry
    )
