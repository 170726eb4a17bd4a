"""The full model against transformers on the same random weights: logits, features, generation, errors."""

from __future__ import annotations

import pytest
import torch

from llavakit.processing.anyres import num_image_tokens, num_tiles, num_video_tokens
from tiny_models import IMAGE_TOKEN, VIDEO_TOKEN, hf_model, ours_from_hf

ATOL = 1e-4


def _prompt(n_image_tokens: list[int], seed: int, video_tokens: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(3, 100, (3,), generator=g).tolist()
    for n in n_image_tokens:
        ids += [IMAGE_TOKEN] * n + torch.randint(3, 100, (2,), generator=g).tolist()
    ids += [VIDEO_TOKEN] * video_tokens
    return ids + torch.randint(3, 100, (4,), generator=g).tolist()


def _batch(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad to a batch; positions count real tokens only."""
    t = max(map(len, prompts))
    ids = torch.zeros(len(prompts), t, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, t - len(p) :] = torch.tensor(p)
        mask[i, t - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids, mask, pos


def _pixels(sizes, ours, multi=None, seed=0) -> torch.Tensor:
    geom = ours.geometry
    multi = multi or [False] * len(sizes)
    counts = [num_tiles(h, w, geom, multi_image=m) for (h, w), m in zip(sizes, multi)]
    g = torch.Generator().manual_seed(seed)
    pv = torch.zeros(len(sizes), max(counts), 3, geom.tile, geom.tile)
    for i, n in enumerate(counts):
        pv[i, :n] = torch.randn(n, 3, geom.tile, geom.tile, generator=g)
    return pv


def _compare(hf, ours, ids, mask, pos, **kw):
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits
        out = ours(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits
    real = mask.bool()
    assert out.shape == ref.shape
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("text", ["llama", "qwen2"])
@pytest.mark.parametrize("layer,strategy", [(-2, "default"), ([-3, -1], "default"), (-1, "full")])
def test_llava15_logits(text, layer, strategy):
    hf = hf_model("llava", text, vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    ours = ours_from_hf(hf)
    n = num_image_tokens(56, 56, ours.geometry)
    assert n == (16 if strategy == "default" else 17)
    ids, mask, pos = _batch([_prompt([n], 0), _prompt([n], 1)[:-3]])
    pv = torch.randn(2, 3, 56, 56)
    _compare(hf, ours, ids, mask, pos, pixel_values=pv)


NEXT_SIZES = [(56, 56), (30, 120), (120, 30), (5, 7), (800, 600), (113, 57), (168, 100)]


@pytest.mark.parametrize("text", ["llama", "mistral"])
def test_llava_next_logits_mixed_sizes(text):
    hf = hf_model("llava_next", text)
    ours = ours_from_hf(hf)
    geom = ours.geometry
    sizes = NEXT_SIZES
    prompts = [_prompt([num_image_tokens(h, w, geom)], i) for i, (h, w) in enumerate(sizes)]
    ids, mask, pos = _batch(prompts)
    _compare(hf, ours, ids, mask, pos, pixel_values=_pixels(sizes, ours), image_sizes=torch.tensor(sizes))


def test_llava_next_several_images_per_prompt():
    hf = hf_model("llava_next")
    ours = ours_from_hf(hf)
    sizes = [(56, 56), (40, 150), (150, 40)]
    counts = [num_image_tokens(h, w, ours.geometry) for h, w in sizes]
    ids, mask, pos = _batch([_prompt(counts[:2], 0), _prompt(counts[2:], 1)])
    _compare(hf, ours, ids, mask, pos, pixel_values=_pixels(sizes, ours), image_sizes=torch.tensor(sizes))


OV_SIZES = [(70, 70), (420, 420), (100, 380), (380, 100), (9, 13), (1500, 1000)]


def test_onevision_single_images_incl_downsampling():
    hf = hf_model("llava_onevision", "qwen2")
    ours = ours_from_hf(hf)
    geom = ours.geometry
    # 420x420 fills 6x6 tiles: 30x30 features, ratio sqrt(900 / (9 * 25)) = 2 > 1.1 -> 15x15, 25 + 15 * 16 tokens
    assert num_image_tokens(420, 420, geom) == 25 + 15 * 16
    prompts = [_prompt([num_image_tokens(h, w, geom)], i) for i, (h, w) in enumerate(OV_SIZES)]
    ids, mask, pos = _batch(prompts)
    _compare(
        hf,
        ours,
        ids,
        mask,
        pos,
        pixel_values=_pixels(OV_SIZES, ours),
        image_sizes=torch.tensor(OV_SIZES),
        batch_num_images=torch.tensor([1] * len(OV_SIZES)),
    )


def test_onevision_multi_image_prompt():
    hf = hf_model("llava_onevision", "qwen2")
    ours = ours_from_hf(hf)
    geom = ours.geometry
    sizes = [(70, 70), (200, 90), (300, 300)]
    multi = [True, True, False]
    counts = [num_image_tokens(h, w, geom, multi_image=m) for (h, w), m in zip(sizes, multi)]
    assert counts[0] == counts[1] == 25 + 1
    ids, mask, pos = _batch([_prompt(counts[:2], 0), _prompt(counts[2:], 1)])
    _compare(
        hf,
        ours,
        ids,
        mask,
        pos,
        pixel_values=_pixels(sizes, ours, multi),
        image_sizes=torch.tensor(sizes),
        batch_num_images=torch.tensor([2, 1]),
    )


def test_onevision_video_matches_hf_model_level():
    hf = hf_model("llava_onevision", "qwen2")
    ours = ours_from_hf(hf)
    frames = 4
    n = num_video_tokens(frames, ours.geometry)
    assert n == frames * 9 + 1  # 5x5 grid pooled to 3x3
    ids, mask, pos = _batch([_prompt([], 0, video_tokens=n), _prompt([], 1, video_tokens=n)])
    videos = torch.randn(2, frames, 3, 70, 70)
    _compare(hf, ours, ids, mask, pos, pixel_values_videos=videos)


def test_features_tokens_mismatch_names_both_counts():
    hf = hf_model("llava_next")
    ours = ours_from_hf(hf)
    n = num_image_tokens(30, 120, ours.geometry)
    ids, mask, pos = _batch([_prompt([n - 1], 0)])
    with pytest.raises(ValueError, match=rf"{n - 1} image tokens.*give {n} features"):
        ours(input_ids=ids, pixel_values=_pixels([(30, 120)], ours), image_sizes=torch.tensor([(30, 120)]))


def test_image_tokens_without_pixels_is_an_error():
    ours = ours_from_hf(hf_model("llava"))
    ids, _, _ = _batch([_prompt([16], 0)])
    with pytest.raises(ValueError, match="16 image tokens but no image pixels"):
        ours(input_ids=ids)


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_greedy_generation_token_identical(family):
    hf = hf_model(family, "qwen2" if family == "llava_onevision" else "llama")
    ours = ours_from_hf(hf)
    size = (56, 56) if family != "llava_onevision" else (200, 90)
    n = num_image_tokens(*size, ours.geometry)
    ids = torch.tensor([_prompt([n], 0)])
    kw = (
        {"pixel_values": torch.randn(1, 3, 56, 56)}
        if family == "llava"
        else {"pixel_values": _pixels([size], ours), "image_sizes": torch.tensor([size])}
    )
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, max_new_tokens=20, do_sample=False, **kw)
    out = ours.generate(ids, max_new_tokens=20, **kw)
    assert out.tolist() == ref.tolist()
    assert out.shape[1] > ids.shape[1]
