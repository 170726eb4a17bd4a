"""Stage 0 of the tiny recipe on a few dozen samples: tokenizer, CLIP vision tower, decoder LM; HF round trips."""

import random

import pytest
import torch

from llavakit.config import TextConfig, VisionConfig
from llavakit.data.synth import render_scene
from llavakit.model.text import CausalLM
from llavakit.processing.tokenizer import Tokenizer
from llavakit.train.stage0.clip import (
    ClipTrainConfig,
    build_pairs,
    load_vision_tower,
    save_vision_tower,
    text_caption,
    text_view,
    train_clip,
)
from llavakit.train.stage0.corpus import texts, training_scenes
from llavakit.train.stage0.lm import LMTrainConfig, pack, save_decoder, train_lm
from llavakit.train.stage0.run import load_stage0_recipe
from llavakit.train.stage0.tokenizer import SPECIALS, train_tokenizer

SCENES = list(training_scenes(40, 0, min_side=128, max_side=256))
PINS = [[48, 96], [96, 48], [96, 96]]
VISION = VisionConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=48, patch_size=16
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(texts(SCENES, "vicuna_v1"), vocab_size=600)


def test_tokenizer_round_trip_and_specials(tok, tmp_path):
    corpus = texts(SCENES, "vicuna_v1")
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3, 4]
    for t in corpus[:10] + ["What number is written in the image? 907", "unseen wörds ✓"]:
        ids = tok.encode(t)
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids[1:]) == t  # byte-level: any text, specials included, comes back exactly
    ids = tok.encode("USER: <image>\nhi ASSISTANT: red</s>", add_special_tokens=False)
    assert ids.count(tok.image_token_id) == 1 and ids[-1] == tok.eos_token_id  # markers stay single tokens
    assert tok.encode("907", add_special_tokens=False) == [tok.token_to_id(d) for d in "907"]  # digit by digit
    tok.save(tmp_path)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf(corpus[1])["input_ids"] == tok.encode(corpus[1])
    assert Tokenizer.from_dir(tmp_path).encode(corpus[3]) == tok.encode(corpus[3])


def test_text_view_contains_the_text():
    scene = next(s for s in SCENES if s.text is not None)
    view = text_view(render_scene(scene), scene, 48, PINS, random.Random(0))
    assert view.shape == (3, 48, 48)
    assert (view.amin(0) < -1.5).any()  # the dark ink of the word (normalised values far below the background)
    assert text_caption(scene).endswith(f"'{scene.text.value}'")


def test_clip_loss_falls_and_tower_loads_in_transformers(tok, tmp_path):
    views, captions = build_pairs(SCENES[:24], 48, PINS)
    assert len(views) == len(captions) > 24
    model, losses = train_clip(views, captions, VISION, tok, ClipTrainConfig(steps=30, batch_size=16, warmup=3))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    save_vision_tower(model.tower, tmp_path)
    ours = load_vision_tower(tmp_path)
    from transformers import CLIPVisionModel

    hf = CLIPVisionModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = hf(views[:3], output_hidden_states=True).hidden_states[-2]
        got = ours(views[:3], [-2])
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(got, model.tower(views[:3], [-2]), atol=1e-6)


def test_lm_loss_falls_and_decoder_loads_in_transformers(tok, tmp_path):
    rows = pack(tok, texts(SCENES, "vicuna_v1"), 64)
    assert rows.shape[1] == 64 and (rows == tok.eos_token_id).any()
    config = TextConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model, losses = train_lm(rows, config, LMTrainConfig(steps=30, batch_size=8, seq_len=64, lr=3e-3, warmup=3))
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    save_decoder(model, tok, tmp_path)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = rows[:2, :20]
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-4)
    reloaded = CausalLM(config)
    from safetensors.torch import load_file

    reloaded.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert Tokenizer.from_dir(tmp_path).image_token_id == 4


def test_stage0_recipe_yaml_is_type_checked(tmp_path):
    r = load_stage0_recipe("recipes/tiny-synth-stage0.yaml", ["clip.steps=3"])
    assert r.clip.steps == 3 and r.vision.image_size % r.vision.patch_size == 0
    with pytest.raises(ValueError, match="clip.stepz"):
        load_stage0_recipe("recipes/tiny-synth-stage0.yaml", ["clip.stepz=3"])
    with pytest.raises(ValueError, match="training seeds"):
        list(training_scenes(1, 1_000_000, min_side=128, max_side=256))
