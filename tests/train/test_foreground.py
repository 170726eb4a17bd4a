"""Foreground flags of image tokens and the background-hiding curriculum (data.background_drop)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from loop_helpers import collate_fn, tiny_recipe
from PIL import Image, ImageDraw
from train_helpers import conv, tiny_processor

from llavakit.data.synth_render import render_scene
from llavakit.data.synth_scene import generate_scene
from llavakit.model.llava import IGNORE_INDEX, LlavaModel, pack_tiles
from llavakit.processing.anyres import num_image_tokens
from llavakit.processing.image import preprocess
from llavakit.tiny import tiny_config
from llavakit.train.build import build_model
from llavakit.train.data import SupervisedDataset
from llavakit.train.foreground import (
    foreground_pixels,
    hide_background,
    mask_flags,
    sample_foreground,
    scene_token_owners,
    token_foreground,
)
from llavakit.train.loop import train

BACKGROUND = (240, 235, 220)


def scene(w: int = 112, h: int = 56, box: tuple[int, int, int, int] | None = (0, 0, 13, 13)) -> Image.Image:
    """A plain background with one filled red rectangle (x0, y0, x1, y1 inclusive)."""
    im = Image.new("RGB", (w, h), BACKGROUND)
    if box is not None:
        ImageDraw.Draw(im).rectangle(box, fill=(200, 30, 30))
    return im


def test_anyres_flags_mark_the_patches_the_shape_covers():
    # tiny llava_next: tile 56, patch 14 (4x4 per view); a 56x112 image -> base view + a 1x2 tile grid (4x8
    # patches, nothing unpadded) + 4 newlines = 16 + 36 = 52 tokens
    p = tiny_processor("llava_next")
    f = token_foreground(scene(), p)
    assert f.shape == (num_image_tokens(56, 112, p.geometry),) == (52,)
    base, grid = f[:16].view(4, 4), f[16:].view(4, 9)
    assert base.nonzero().tolist() == [[0, 0]]  # squashed to 56x56, the 14 px square stays in patch (0, 0)
    assert grid[:, :8].nonzero().tolist() == [[0, 0]]  # full resolution: exactly the first patch
    assert grid[:, 8].all()  # newlines stay visible
    # moved to the right half: the second tile's last column
    g2 = token_foreground(scene(box=(100, 42, 111, 55)), p)[16:].view(4, 9)
    assert g2[:, :8].nonzero().tolist() == [[3, 7]]
    # nothing drawn: only the newlines are foreground
    assert int(token_foreground(scene(box=None), p).sum()) == 4


def test_unpadded_grid_and_single_resolution_line_up_with_the_token_count():
    p = tiny_processor("llava_next")
    # 56 x 80: fitted into a 56x112 canvas and padded; the padding is unpadded away and never foreground
    im = scene(w=80, h=56, box=(70, 20, 79, 40))
    f = token_foreground(im, p)
    assert f.shape[0] == num_image_tokens(56, 80, p.geometry)
    assert 0 < int(f.sum()) < f.shape[0]
    pad = tiny_processor("llava")  # LLaVA-1.5 `pad`: expanded to a square with the mean colour first
    f1 = token_foreground(scene(), pad)
    assert f1.shape == (16,)
    assert f1.view(4, 4).nonzero().tolist() == [[1, 0]]  # 112x112 square, image centred vertically


def _one_mask_flags(mask: np.ndarray, p) -> torch.Tensor:
    """The flags of one mask the direct way: drawn white on the pad colour, preprocessed to float, channel 0
    thresholded at the foreground level, patches with any foreground, the model's packing."""
    cfg, geom = p.image_config, p.geometry
    h, w = mask.shape
    img = Image.new("RGB", (w, h), cfg.pad_colour)
    img.paste((255, 255, 255), mask=Image.fromarray(mask.astype(np.uint8) * 255))
    fg = preprocess(img, cfg)[:, 0] > (0.75 - cfg.mean[0]) / cfg.std[0]  # (V, S, S)
    g = fg.shape[-1] // geom.patch
    flags = fg[:, : g * geom.patch, : g * geom.patch].reshape(-1, g, geom.patch, g, geom.patch).any(4).any(2)
    flags = flags.reshape(fg.shape[0], g * g)
    if geom.pinpoints is None:
        return flags[0]
    return pack_tiles(flags[..., None].float(), h, w, geom, torch.ones(1))[:, 0] > 0


@pytest.mark.parametrize("family", ["llava_next", "llava"])
def test_masks_packed_three_to_an_image_flag_as_each_alone(family):
    # mask_flags puts three masks in the channels of one image and thresholds uint8 views with a lookup table:
    # the same flags as preprocessing each mask alone and thresholding its normalised channel 0
    p = tiny_processor(family)
    rng = np.random.default_rng(0)
    for h, w in [(56, 112), (70, 45), (130, 130), (41, 160)]:
        masks = [rng.random((h, w)) < q for q in (0.0, 0.002, 0.01, 0.05, 0.3)]
        masks.append(np.zeros((h, w), dtype=bool))
        masks[-1][h // 3 : h // 3 + 9, w // 2 : w // 2 + 7] = True  # a block: edges the resize blurs
        got = mask_flags(masks, (h, w), p)
        assert len(got) == len(masks)
        for m, f in zip(masks, got):
            assert torch.equal(f, _one_mask_flags(m, p))


def test_scene_token_owners_name_each_shape_where_its_pixels_fall():
    p = tiny_processor("llava_next")
    sc = generate_scene(3, min_side=112, max_side=160)
    assert len(sc.shapes) >= 3
    owner = scene_token_owners(sc, p)
    newline = _one_mask_flags(np.zeros((sc.height, sc.width), dtype=bool), p)  # a blank mask flags the newlines
    assert torch.equal(owner == -3, newline)
    for i, s in enumerate(sc.shapes):
        alone = render_scene(dataclasses.replace(sc, shapes=(s,), text=None))
        f = _one_mask_flags(foreground_pixels(alone), p) & ~newline
        assert f.any()
        assert ((owner == i) <= f).all()  # a token owned by shape i shows shape i
        assert (f <= ((owner == i) | (owner == -2))).all()  # every token showing shape i is i's or shared


def test_hidden_background_is_the_same_as_leaving_those_tokens_out():
    torch.manual_seed(0)
    model = LlavaModel(tiny_config("llava_next")).eval()
    p = tiny_processor("llava_next")
    im = scene(box=(20, 10, 60, 40))
    enc = p(text="<image>\nWhat color is the square?", images=[im])
    ids = enc["input_ids"]
    fg = sample_foreground(ids[0], [im], p)[None]  # (1, T)
    assert 0 < int((~fg).sum()) < int((ids == p.image_token_id).sum())
    full = torch.ones_like(ids)
    hidden = hide_background(full, fg, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(hidden.bool(), fg)  # p = 1: every background image token, nothing else
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        a = model(ids, enc["pixel_values"], enc["image_sizes"], attention_mask=hidden, position_ids=pos).logits
        emb = model.embed(ids, enc["pixel_values"], enc["image_sizes"])
        keep = fg[0]
        b = model(inputs_embeds=emb[:, keep], position_ids=pos[:, keep]).logits
    torch.testing.assert_close(a[:, keep], b, rtol=1e-5, atol=1e-5)
    # p = 0 hides nothing; p in between hides some background and never foreground
    assert torch.equal(hide_background(full, fg, 0.0, torch.Generator()), full)
    some = hide_background(full, fg, 0.5, torch.Generator().manual_seed(1)).bool()
    assert some[fg].all() and 0 < int((~some).sum()) < int((~fg).sum())


def test_dataset_items_carry_flags_at_their_image_tokens(tmp_path):
    p = tiny_processor("llava_next")
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    scene(box=(30, 5, 50, 30)).save(tmp_path / "a.png")
    rec = [{"id": "0", "image": "a.png", "conversations": conv("<image>\nColor?", "red")}]
    (tmp_path / "d.json").write_text(json.dumps(rec))
    ds = SupervisedDataset(tmp_path / "d.json", tmp_path, p, None, 512, foreground=True)
    item = ds[0]
    slots = item["input_ids"] == p.image_token_id
    assert torch.equal(item["foreground"][slots], token_foreground(Image.open(tmp_path / "a.png").convert("RGB"), p))
    assert item["foreground"][~slots].all()
    assert "foreground" not in SupervisedDataset(tmp_path / "d.json", tmp_path, p, None, 512)[0]


class SceneDataset:
    """``n`` one-shape scenes: "<image>\\nColor?" -> the shape's colour; items carry foreground flags."""

    COLOURS = [((200, 30, 30), "red"), ((30, 160, 40), "green"), ((40, 60, 220), "blue")]

    def __init__(self, processor, n: int = 8) -> None:
        self.items = []
        for i in range(n):
            rgb, name = self.COLOURS[i % 3]
            im = Image.new("RGB", (60 + 9 * i, 56 + 5 * (i % 3)), BACKGROUND)
            ImageDraw.Draw(im).ellipse([5 + 3 * i, 8, 25 + 3 * i, 30], fill=rgb)
            enc = processor(text=f"<image>\nColor? {name}</s>", images=[im])
            ids = enc["input_ids"][0]
            n_ans = len(processor.tokenizer.encode(f"{name}</s>", add_special_tokens=False))
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[-n_ans:] = ids[-n_ans:]
            self.items.append(
                {
                    "input_ids": ids,
                    "labels": labels,
                    "pixel_values": enc["pixel_values"],
                    "image_sizes": enc["image_sizes"],
                    "foreground": sample_foreground(ids, [im], processor),
                    "id": str(i),
                    "length": int(ids.shape[0]),
                    "modality": "image",
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _run(tmp_path, *overrides):
    recipe = tiny_recipe(tmp_path, "llava_next", "train.max_steps=4", *overrides)
    model, processor = build_model(recipe.model)
    return train(recipe, model=model, processor=processor, dataset=SceneDataset(processor), collate_fn=collate_fn)


def test_background_drop_trains_differently_and_resumes_exactly(tmp_path):
    plain = _run(tmp_path / "plain")
    zero = _run(tmp_path / "zero", "data.background_drop=[0.0, 0.0]")
    assert zero.losses == plain.losses  # nothing hidden: the same run, bit for bit
    ramp = _run(tmp_path / "ramp", "data.background_drop=[1.0, 0.0]")
    assert ramp.losses[0] != plain.losses[0]
    # killed after 2 steps and resumed: the same tokens are hidden at every step
    args = ("data.background_drop=[1.0, 0.0]", "train.save_every=1")
    first = _run(tmp_path / "b", *args, "train.stop_after=2")
    second = _run(tmp_path / "b", *args, "train.resume=true")
    assert first.steps == [1, 2] and second.steps == [3, 4]
    assert first.losses + second.losses == ramp.losses


def test_background_drop_needs_flags_and_valid_probabilities(tmp_path):
    from loop_helpers import ColorDataset

    recipe = tiny_recipe(tmp_path, "llava_next", "data.background_drop=[1.0, 0.0]")
    model, processor = build_model(recipe.model)
    with pytest.raises(ValueError, match="background_drop needs items with foreground flags"):
        train(recipe, model=model, processor=processor, dataset=ColorDataset(processor, 8), collate_fn=collate_fn)
    with pytest.raises(ValueError, match=r"data.background_drop must be \[start, end\] probabilities"):
        tiny_recipe(tmp_path, "llava_next", "data.background_drop=[1.5, 0.0]", "data.path=x.json")  # when read


def test_scene_token_owners_name_the_shape_of_each_token():
    from llavakit.data.synth_scene import Scene, Shape
    from llavakit.train.foreground import scene_token_owners

    p = tiny_processor("llava_next")
    shapes = (Shape("square", "red", "small", 10, 10, 6), Shape("circle", "blue", "small", 100, 45, 6))
    owner = scene_token_owners(Scene(112, 56, BACKGROUND, shapes), p)
    grid = owner[16:].view(4, 9)
    assert (grid[:, 8] == -3).all() and int((owner == -3).sum()) == 4  # the newlines
    assert set(grid[:2, :2].flatten().tolist()) <= {0, -1} and (grid == 0).any()  # square: top-left
    assert set(grid[2:, 6:8].flatten().tolist()) <= {1, -1} and (grid == 1).any()  # circle: bottom-right
    assert int((grid[:, :8] >= 0).sum()) < 12  # most of the grid is background
