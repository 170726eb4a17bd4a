"""Stage 0 of the tiny recipe on a few dozen samples: tokenizer, CLIP vision tower, decoder LM; HF round trips."""

import json
import random
from pathlib import Path

import pytest
import torch

from llavakit.config import TextConfig, VisionConfig
from llavakit.data.synth import render_scene
from llavakit.model.text import CausalLM
from llavakit.processing.tokenizer import Tokenizer
from llavakit.train.stage0.clip import CLIP, ClipTrainConfig, load_vision_tower, save_vision_tower, train_clip
from llavakit.train.stage0.corpus import texts, training_scenes
from llavakit.train.stage0.lm import LMTrainConfig, pack, save_decoder, train_lm
from llavakit.train.stage0.patch_labels import NO_COLOUR, NO_KIND, NO_TEXT, char_spans, patch_labels
from llavakit.train.stage0.run import load_stage0_recipe
from llavakit.train.stage0.tokenizer import SPECIALS, train_tokenizer
from llavakit.train.stage0.views import build_pairs, text_caption, text_view, tile_views

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
    assert view.pixels.shape == (3, 48, 48) and view.text == text_caption(scene)
    assert (view.pixels.amin(0) < -1.5).any()  # the dark ink of the word (normalised values far below the background)
    assert text_caption(scene).endswith(f"'{scene.text.value}'")


def test_tile_views_caption_exactly_the_shapes_centred_in_each_tile():
    """Each AnyRes tile's caption names the shapes whose centre it holds: every shape lands in exactly one tile,
    and the pixel at a shape's centre (mapped into its tile) has that shape's colour."""
    from llavakit.data.synth import COLORS
    from llavakit.processing.anyres import select_best_resolution
    from llavakit.processing.image import CLIP_MEAN, CLIP_STD, fit_size

    for scene in SCENES[:12]:
        views = tile_views(render_scene(scene), scene, 48, PINS)
        ph, pw = select_best_resolution(scene.height, scene.width, tuple(tuple(p) for p in PINS))
        assert len(views) == (ph // 48) * (pw // 48)
        nh, nw = fit_size(scene.height, scene.width, ph, pw)
        named = sum(1 for v in views for s in scene.shapes if f"{s.color} {s.kind}" in v.text)
        assert named >= len(scene.shapes)  # each shape is named in the tile that holds its centre
        for shape in scene.shapes:
            x = shape.cx * nw / scene.width + (pw - nw) // 2
            y = shape.cy * nh / scene.height + (ph - nh) // 2
            view = views[int(y // 48) * (pw // 48) + int(x // 48)]
            assert f"{shape.color} {shape.kind}" in view.text
            px = view.pixels[:, int(y % 48), int(x % 48)] * torch.tensor(CLIP_STD)[:, None].squeeze() + torch.tensor(
                CLIP_MEAN
            )
            assert (px * 255 - torch.tensor(COLORS[shape.color], dtype=torch.float32)).abs().max() < 40
        assert all(v.text for v in views)


def test_patch_labels_worked_example():
    """The docstring's example: a circle of radius 10 at (50, 30), scale 0.8, offset (-40, 0), 16 px patches."""
    from llavakit.data.synth_scene import COLORS, KINDS, Scene, Shape

    scene = Scene(100, 60, (250, 250, 250), (Shape("circle", "blue", "small", 50, 30, 10),))
    labels = patch_labels(scene, (0.8, 0.8), (-40, 0), 80, 16).view(6, 5, 5)
    shown = (labels[0] != NO_KIND).nonzero().tolist()
    assert shown == [[1, 0]]  # patch centres (8, 8), (8, 24), (8, 40) lie 17.9, 8 and 17.9 px away; ink 8.8 + 4
    assert labels[0, 1, 0] == KINDS.index("circle") and labels[1, 1, 0] == list(COLORS).index("blue")
    assert labels[0, 1, 1] == NO_KIND and labels[1, 1, 1] == NO_COLOUR
    assert (labels[2] == NO_TEXT).all()  # no text in this scene
    assert labels[3].nonzero().tolist() == [[1, 0]]  # the circle's centre (0, 24) lies in patch (row 1, col 0)


def test_text_patch_labels_name_the_word_or_each_digit():
    """A word labels every patch it covers (grown by a quarter patch) with its index; a number labels each patch
    with the digit under its centre, left to right; patches off the text stay NO_TEXT."""
    from llavakit.data.synth_scene import WORDS, Scene, Text

    word = Scene(160, 80, (250, 250, 250), (), Text("apple", 30, "medium", (20, 20, 76, 46)))
    rows = patch_labels(word, (1.0, 1.0), (0, 0), 80, 16).view(6, 5, 5)[2]  # the scene's left 80 px
    # centres 8, 24, 40, 56, 72 on both axes; the box grown by 4 px spans x [16, 80), y [16, 50)
    assert (rows[1:3, 1:] == WORDS.index("apple")).all() and (rows[[0, 3, 4]] == NO_TEXT).all()
    assert (rows[:, 0] == NO_TEXT).all()
    spans = char_spans("472", 48, 10)
    assert [round(b - a) for a, b in spans] == [round(char_spans("4", 48, 10)[0][1] - spans[0][0])] * 3  # one advance
    x1 = round(spans[-1][1])
    number = Scene(160, 80, (250, 250, 250), (), Text("472", 48, "large", (10, 20, x1, 56)))
    digits = patch_labels(number, (1.0, 1.0), (0, 0), 80, 16).view(6, 5, 5)[2, 2].tolist()  # row centre y 40
    expect = []
    for cx in (8, 24, 40, 56, 72):
        if cx >= x1 + 4:
            expect.append(NO_TEXT)
            continue
        i = next((k for k, (a, b) in enumerate(spans) if a <= cx < b), 0 if cx < spans[0][0] else 2)
        expect.append(len(WORDS) + int("472"[i]))
    assert digits == expect and len(set(digits) - {NO_TEXT}) == 3


def test_patch_labels_agree_with_the_pixels():
    """Over full views, AnyRes tiles and text crops: a patch mostly painted in one shape colour (other than the
    padding's black and gray) is labelled with that colour, and nearly every patch labelled with a colour shows
    some of it (a star's gaps can hold none)."""
    from llavakit.data.synth_scene import COLORS
    from llavakit.processing.image import CLIP_MEAN, CLIP_STD

    views, _, labels = build_pairs(SCENES[:20], 80, 16, [[80, 160], [160, 80], [160, 160]])  # 5 x 5 patches
    rgb = (views * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]) * 255
    patches = rgb.unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).flatten(1, 2)  # (N, 25, 3, 16, 16)
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32)  # (C, 3)
    near = ((patches[:, :, None] - palette[None, None, :, :, None, None]).abs().amax(3) < 40).flatten(3)
    full, shows = near.float().mean(-1) >= 0.5, near.any(-1)  # (N, 25, C): the patch is mostly / partly colour c
    pads = [list(COLORS).index(c) for c in ("black", "gray")]  # AnyRes pads with black, the full view with the mean
    full[..., pads] = False
    colour = labels[:, 1]  # (N, 25)
    whole = full.any(-1).nonzero().tolist()
    assert len(whole) > 20
    assert all(colour[i, p] == full[i, p].int().argmax() for i, p in whole)
    labelled = (colour != NO_COLOUR).nonzero().tolist()
    assert len(labelled) > 100
    assert sum(bool(shows[i, p, colour[i, p]]) for i, p in labelled) / len(labelled) > 0.9  # 0.39 if off by 1
    assert (labels[:, 0] == NO_KIND).eq(colour == NO_COLOUR).all()  # kind and colour are labelled together
    # one centre mark per shape: each full view (the first view of each scene) marks its scene's shapes, fewer
    # only where two centres share a 16 px patch
    firsts, pins = [0], [[80, 160], [160, 80], [160, 160]]
    for scene in SCENES[:19]:
        firsts.append(firsts[-1] + 1 + len(tile_views(render_scene(scene), scene, 80, pins)) + (scene.text is not None))
    marks, shapes = [int(labels[i, 3].sum()) for i in firsts], [len(s.shapes) for s in SCENES[:20]]
    assert all(0 < m <= n for m, n in zip(marks, shapes, strict=True)) and sum(marks) >= 0.8 * sum(shapes)
    assert (labels[:, 0][labels[:, 3] == 1] != NO_KIND).float().mean() > 0.9  # a centre patch shows a shape


def test_patch_mean_pooling_reads_the_patch_features_llava_uses(tok):
    """``pool="patch_mean"`` embeds an image from the mean of its layer -2 patch features (CLS dropped), so
    changing the last layer leaves it unchanged, while the CLS variant depends on it."""
    views, _, _ = build_pairs(SCENES[:4], 48, 16, PINS)
    for pool, depends_on_last in (("patch_mean", False), ("cls", True)):
        torch.manual_seed(0)
        model = CLIP(VISION, tok.vocab_size, 32, pool=pool).eval()
        with torch.no_grad():
            before = model.encode_image(views[:3])
            for p in model.tower.vision_model.encoder.layers[-1].parameters():
                p.add_(torch.randn_like(p))
            after = model.encode_image(views[:3])
        assert torch.allclose(before, after) != depends_on_last
    with pytest.raises(ValueError, match="clip.pool"):
        CLIP(VISION, tok.vocab_size, 32, pool="max")


def test_clip_loss_falls_and_tower_loads_in_transformers(tok, tmp_path):
    views, captions, _ = build_pairs(SCENES[:24], 48, 16, PINS, tiles=False)  # distinct captions: the loss can reach 0
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


def test_patch_loss_falls_alone_and_needs_labels(tok):
    views, captions, labels = build_pairs(SCENES[:24], 48, 16, PINS)
    cfg = ClipTrainConfig(steps=30, batch_size=16, warmup=3, contrastive_weight=0.0, patch_weight=1.0)
    model, losses = train_clip(views, captions, VISION, tok, cfg, labels=labels)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert all(p.grad is None for p in model.text.parameters())  # the text encoder took no part
    with pytest.raises(ValueError, match="needs patch labels"):
        train_clip(views, captions, VISION, tok, cfg)
    with pytest.raises(ValueError, match="both 0"):
        CLIP(VISION, tok.vocab_size, 32, contrastive_weight=0.0)


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


def test_lm_starts_from_the_init_std_of_its_config(tok):
    rows = pack(tok, texts(SCENES, "vicuna_v1"), 64)
    config = TextConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    for std in (0.02, 0.07):
        model, losses = train_lm(rows, config, LMTrainConfig(steps=0, init_std=std), log=lambda m: None)
        assert losses == []
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                assert abs(p.std().item() - std) < 0.1 * std, name
            else:
                assert torch.equal(p, torch.ones_like(p)), name  # RMSNorm weights stay at one
    assert load_stage0_recipe(None).lm.init_std == 0.02  # HF's initializer_range, unless a recipe says otherwise


def test_decoder_alone_keeps_the_tokenizer_and_tower_of_output_dir(tok, tmp_path):
    from hashlib import sha1

    from llavakit.model.vision import VisionTower
    from llavakit.train.stage0.run import run_stage0
    from llavakit.train.stage0.tokenizer import save_tokenizer

    small = ["scenes.n=12", "lm.steps=2", "lm.batch_size=2", "lm.seq_len=32", "decoder.hidden_size=32"]
    small += ["decoder.intermediate_size=64", "decoder.num_hidden_layers=1", "decoder.num_attention_heads=2"]
    small += ["decoder.num_key_value_heads=2", "parts=[decoder]", f"output_dir={tmp_path}"]
    recipe = load_stage0_recipe("recipes/tiny-synth-stage0.yaml", small)
    with pytest.raises(ValueError, match="tokenizer does not exist and parts=\\['decoder'\\] does not train it"):
        run_stage0(recipe, log=lambda m: None)
    save_tokenizer(tok, tmp_path / "tokenizer")
    save_vision_tower(VisionTower(VISION), tmp_path / "vision_tower")
    tower = sha1((tmp_path / "vision_tower" / "model.safetensors").read_bytes()).hexdigest()
    run_stage0(recipe, log=lambda m: None)
    assert sha1((tmp_path / "vision_tower" / "model.safetensors").read_bytes()).hexdigest() == tower
    assert Tokenizer.from_dir(tmp_path / "decoder").vocab_size == tok.vocab_size
    info = json.loads((tmp_path / "stage0.json").read_text())
    assert info["parts"] == ["decoder"] and info["lm_loss"]["steps"] == 2 and info["clip_loss"] is None
    with pytest.raises(ValueError, match="parts must be some of"):
        run_stage0(load_stage0_recipe("recipes/tiny-synth-stage0.yaml", [*small, "parts=[lm]"]), log=lambda m: None)


def test_stage0_recipe_yaml_is_type_checked(tmp_path):
    r = load_stage0_recipe("recipes/tiny-synth-stage0.yaml", ["clip.steps=3"])
    assert r.clip.steps == 3 and r.vision.image_size % r.vision.patch_size == 0
    with pytest.raises(ValueError, match="clip.stepz"):
        load_stage0_recipe("recipes/tiny-synth-stage0.yaml", ["clip.stepz=3"])
    with pytest.raises(ValueError, match="training seeds"):
        list(training_scenes(1, 1_000_000, min_side=128, max_side=256))


def test_stage0_command_names_bad_recipes_without_a_traceback(tmp_path):
    import subprocess
    import sys

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny-synth-stage0.yaml")
    small = [f"output_dir={tmp_path}", "scenes.n=6", "vocab_size=300"]
    for args, named in (
        ([str(tmp_path / "no.yaml")], "no.yaml"),
        ([recipe, "clip.bogus=1"], "unknown recipe key 'clip.bogus'"),
        ([recipe, *small, "clip.contrastive_weight=0", "clip.patch_weight=0"], "both 0"),
        ([recipe, *small, "clip.text_seed=1000000"], "clip.text_seed must be a training seed"),
        ([recipe, *small, "clip.text_crops=-1"], "clip.text_scenes and clip.text_crops must be >= 0"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "llavakit.train.stage0", *args], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 2 and named in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_centre_labels_add_a_head_and_a_loss(tok):
    """``centre_labels=True`` adds a two-way head for row 3 (a shape's centre lies in the patch): its loss then
    depends on the centre marks, the default's does not."""
    views, _, labels = build_pairs(SCENES[:6], 48, 16, PINS)
    assert labels[:, 3].any()
    moved = labels.clone()
    moved[:, 3] = 1 - moved[:, 3]
    ids = torch.zeros(len(views), 4, dtype=torch.long)
    mask = torch.ones_like(ids, dtype=torch.bool)
    for centre, differs in ((False, False), (True, True)):
        torch.manual_seed(0)
        clip = CLIP(
            VISION, tok.vocab_size, contrastive_weight=0.0, patch_weight=1.0, text_labels=False, centre_labels=centre
        )
        assert clip.patch_head.out_features == NO_KIND + 1 + NO_COLOUR + 1 + 2 * centre
        with torch.no_grad():
            a, b = clip.loss(views, ids, mask, labels), clip.loss(views, ids, mask, moved)
        assert (a != b) == differs


def test_position_labels_name_the_side_of_the_scene_in_the_full_view_only():
    """Rows 4-5 give the side a position question would answer (`synth_questions.side`) for each patch of a shape
    in the full view; tiles and text crops, which do not show where in the scene they are, carry IGNORE."""
    from llavakit.data.synth_questions import side
    from llavakit.data.synth_scene import Scene, Shape
    from llavakit.train.stage0.patch_labels import IGNORE

    left = Shape("circle", "red", "large", 20, 20, 16)  # x: left; y: top
    middle = Shape("square", "blue", "large", 100, 50, 12)  # within 10% of the middle on both axes
    scene = Scene(200, 100, (250, 250, 250), (left, middle))
    assert (side(scene, left, "x"), side(scene, left, "y"), side(scene, middle, "x")) == ("left", "top", None)
    labels = patch_labels(scene, (0.4, 0.8), (0, 0), 80, 16).view(6, 5, 5)  # the whole scene in one 80 px view
    assert labels[4, 1, 0] == 0 and labels[5, 1, 0] == 0  # the circle at (8, 16): left, top
    assert labels[4, 2, 2] == IGNORE and labels[5, 2, 2] == IGNORE  # the square at (40, 40): the middle
    assert labels[4, 4, 4] == IGNORE  # background
    right = Scene(200, 100, (250, 250, 250), (Shape("star", "green", "large", 180, 90, 12),))
    labels = patch_labels(right, (0.4, 0.8), (0, 0), 80, 16).view(6, 5, 5)
    assert labels[4, 4, 4] == 1 and labels[5, 4, 4] == 1  # right, bottom
    _, _, pairs = build_pairs([scene, right], 48, 16, PINS)
    views_per_scene = [1 + len(tile_views(render_scene(s), s, 48, PINS)) for s in (scene, right)]
    full = [0, views_per_scene[0]]
    assert all((pairs[i, 4:] != IGNORE).any() for i in full)
    assert all((pairs[i, 4:] == IGNORE).all() for i in range(len(pairs)) if i not in full)


def test_position_labels_add_two_heads_and_survive_a_batch_without_sides(tok):
    """``position_labels=True`` adds two two-way heads (rows 4-5); a batch whose side labels are all IGNORE (tiles
    only) still gives a finite loss."""
    from llavakit.train.stage0.patch_labels import IGNORE

    views, _, labels = build_pairs(SCENES[:6], 48, 16, PINS)
    ids = torch.zeros(len(views), 4, dtype=torch.long)
    mask = torch.ones_like(ids, dtype=torch.bool)
    torch.manual_seed(0)
    clip = CLIP(VISION, tok.vocab_size, contrastive_weight=0.0, patch_weight=1.0, text_labels=False,
                position_labels=True)  # fmt: skip
    assert clip.patch_head.out_features == NO_KIND + 1 + NO_COLOUR + 1 + 4
    flipped = labels.clone()
    known = flipped[:, 4:] != IGNORE
    flipped[:, 4:][known] = 1 - flipped[:, 4:][known]
    none = labels.clone()
    none[:, 4:] = IGNORE
    with torch.no_grad():
        a, b, c = (clip.loss(views, ids, mask, x) for x in (labels, flipped, none))
    assert a != b and torch.isfinite(c) and c < a + 1e3


def test_text_labels_can_be_left_out(tok):
    """``text_labels=False`` gives the two-row head of the kind and colour labels only (the recipe before text
    labels): its loss ignores the text row, the full head's does not."""
    views, _, labels = build_pairs([s for s in SCENES if s.text is not None][:6], 48, 16, PINS)
    assert (labels[:, 2] != NO_TEXT).any()
    blanked = labels.clone()
    blanked[:, 2] = NO_TEXT
    ids = torch.zeros(len(views), 4, dtype=torch.long)
    mask = torch.ones_like(ids, dtype=torch.bool)
    for text_labels, differs in ((False, False), (True, True)):
        torch.manual_seed(0)
        clip = CLIP(VISION, tok.vocab_size, contrastive_weight=0.0, patch_weight=1.0, text_labels=text_labels)
        assert clip.patch_head.out_features == NO_KIND + 1 + NO_COLOUR + 1 + (NO_TEXT + 1) * text_labels
        with torch.no_grad():
            a, b = clip.loss(views, ids, mask, labels), clip.loss(views, ids, mask, blanked)
        assert (a != b) == differs


def test_reading_pairs_show_every_scene_text_in_its_full_view_and_crops():
    from llavakit.data.synth import caption, generate_scene, scene_seed
    from llavakit.train.stage0.views import reading_pairs

    views, captions, labels = reading_pairs(4, 5, 2, 48, 16, PINS, 128, 256)
    assert views.shape == (12, 3, 48, 48) and labels.shape == (12, 6, 9) and len(captions) == 12
    for i in range(4):
        scene = generate_scene(scene_seed(5, i), text_prob=1.0, min_side=128, max_side=256)
        assert captions[3 * i] == caption(scene) and captions[3 * i + 1 :][:2] == [text_caption(scene)] * 2
        if scene.text.bucket != "tiny":  # both crops name the text on some patch (tiny ink can miss every centre)
            assert all((labels[3 * i + v, 2] != NO_TEXT).any() for v in (1, 2))
        assert (labels[3 * i + 1 : 3 * i + 3, 4:] == -100).all()  # crops do not show where in the scene they are
    again = reading_pairs(4, 5, 2, 48, 16, PINS, 128, 256)
    assert torch.equal(again[0], views) and torch.equal(again[2], labels)  # seeded
    assert not torch.equal(reading_pairs(4, 6, 2, 48, 16, PINS, 128, 256)[0], views)
    assert reading_pairs(0, 5, 2, 48, 16, PINS, 128, 256)[0].shape == (0, 3, 48, 48)
    with pytest.raises(ValueError, match="clip.text_seed must be a training seed"):
        reading_pairs(1, 1_000_000, 2, 48, 16, PINS, 128, 256)
    with pytest.raises(ValueError, match="clip.text_scenes and clip.text_crops must be >= 0"):
        reading_pairs(-1, 5, 2, 48, 16, PINS, 128, 256)


def test_text_scenes_add_their_views_to_stage0(tok, tmp_path):
    from llavakit.train.stage0.run import run_stage0
    from llavakit.train.stage0.tokenizer import save_tokenizer

    small = ["scenes.n=4", "clip.steps=1", "clip.batch_size=4", "vision.hidden_size=32", "vision.intermediate_size=64"]
    small += ["vision.num_hidden_layers=2", "parts=[vision_tower]", f"output_dir={tmp_path}"]
    save_tokenizer(tok, tmp_path / "tokenizer")
    (tmp_path / "decoder").mkdir()
    views = []
    for extra in (["clip.text_scenes=0"], ["clip.text_scenes=3", "clip.text_crops=1"]):
        run_stage0(load_stage0_recipe("recipes/tiny-synth-stage0.yaml", small + extra), log=lambda m: None)
        views.append(json.loads((tmp_path / "stage0.json").read_text())["clip_views"])
    assert views[1] == views[0] + 3 * 2
