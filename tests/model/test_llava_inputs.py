"""Input forms transformers' LLaVA models accept, against transformers on the same random weights.

- ``inputs_embeds`` with pixels: the features go where the embeddings equal the image (video) token's row;
- AnyRes ``pixel_values`` as every image's views concatenated, (total tiles, 3, S, S), and ``image_sizes`` as a list;
- image sizes at the edges of the AnyRes / unpad / anyres_max arithmetic, feature by feature and counted.
"""

from __future__ import annotations

import pytest
import torch
from test_llava import _batch, _compare, _pixels, _prompt

from llavakit.processing.anyres import num_image_tokens, num_tiles, num_video_tokens
from tiny_models import hf_model, ours_from_hf

TEXT = {"llava": "llama", "llava_next": "mistral", "llava_onevision": "qwen2"}


def _image_inputs(family: str, ours, sizes: list[tuple[int, int]]) -> dict:
    if family == "llava":
        return {"pixel_values": torch.randn(len(sizes), 3, 56, 56, generator=torch.Generator().manual_seed(0))}
    return {"pixel_values": _pixels(sizes, ours), "image_sizes": torch.tensor(sizes)}


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_inputs_embeds_with_pixels_match_transformers(family):
    """transformers finds the placeholders of ``inputs_embeds`` by the image token's embedding; we ignored the pixels
    (llava_next: max |logit diff| ~8 before the fix)."""
    hf = hf_model(family, TEXT[family])
    ours = ours_from_hf(hf)
    sizes = [(57, 113), (200, 90)]
    counts = [num_image_tokens(h, w, ours.geometry) for h, w in sizes]
    video = num_video_tokens(2, ours.geometry) if family == "llava_onevision" else 0
    ids, mask, pos = _batch([_prompt(counts[:1], 0, video_tokens=video), _prompt(counts[1:], 1)])
    kw = _image_inputs(family, ours, sizes)
    if video:
        kw["pixel_values_videos"] = torch.randn(1, 2, 3, 70, 70, generator=torch.Generator().manual_seed(1))
    embeds = hf.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, **kw).logits
        from_ids = ours(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits
        out = ours(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, **kw).logits
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[real], from_ids[real], atol=0, rtol=0)


def test_inputs_embeds_with_too_few_placeholders_is_a_clear_error():
    hf = hf_model("llava_next")
    ours = ours_from_hf(hf)
    n = num_image_tokens(30, 120, ours.geometry)
    ids, _, _ = _batch([_prompt([n - 1], 0)])
    embeds = hf.get_input_embeddings()(ids).detach()
    with pytest.raises(ValueError, match=rf"inputs_embeds hold {n - 1} image tokens.*give {n} features"):
        ours(inputs_embeds=embeds, pixel_values=_pixels([(30, 120)], ours), image_sizes=torch.tensor([(30, 120)]))


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_concatenated_tiles_and_list_image_sizes_match_transformers(family):
    """transformers takes AnyRes pixels as (total tiles, 3, S, S) and image_sizes as a list; we refused both."""
    hf = hf_model(family, TEXT[family])
    ours = ours_from_hf(hf)
    geom = ours.geometry
    sizes = [(57, 113), (1, 300), (200, 90)]
    counts = [num_image_tokens(h, w, geom) for h, w in sizes]
    ids, mask, pos = _batch([_prompt(counts[:2], 0), _prompt(counts[2:], 1)])
    padded = _pixels(sizes, ours)  # (N, max tiles, 3, S, S)
    flat = torch.cat([pv[: num_tiles(h, w, geom)] for pv, (h, w) in zip(padded, sizes)])  # (total tiles, 3, S, S)
    _compare(hf, ours, ids, mask, pos, pixel_values=flat, image_sizes=torch.tensor(sizes))
    _compare(hf, ours, ids, mask, pos, pixel_values=padded, image_sizes=[list(s) for s in sizes])
    with pytest.raises(ValueError, match=r"pixel_values holds \d+ tiles but the 3 image_sizes need"):
        ours(input_ids=ids, attention_mask=mask, pixel_values=flat[:-1], image_sizes=torch.tensor(sizes))


def test_anyres_with_the_cls_token_kept_is_a_clear_error():
    """CLIP + "full" on llava_next: 17 features per 4x4 tile cannot be re-assembled (transformers fails as well)."""
    ours = ours_from_hf(hf_model("llava_next", vision_feature_select_strategy="full"))
    with pytest.raises(ValueError, match="AnyRes packing needs 16 features per tile .* gives 17"):
        ours.image_features(_pixels([(30, 120)], ours), torch.tensor([(30, 120)]))


def _edge_sizes(t: int) -> list[tuple[int, int]]:
    """1-pixel strips, odd sizes, sizes one pixel off the pinpoints (tile t), larger than the largest pinpoint."""
    sizes = [(1, 1), (1, 2 * t + 1), (2 * t + 1, 1), (1, 7 * t), (7 * t, 1), (5, 7), (7, 5)]
    sizes += [(t - 1, 2 * t), (t, 2 * t), (t + 1, 2 * t), (2 * t, t + 1), (2 * t - 1, 2 * t + 1), (3 * t, t - 1)]
    return sizes + [(6 * t + 1, 6 * t), (6 * t, 5 * t + 1), (20 * t, 3 * t), (113, 57), (421, 419)]


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_edge_sizes_features_and_counts_match_transformers(family):
    hf = hf_model(family, TEXT[family])
    ours = ours_from_hf(hf)
    sizes = _edge_sizes(ours.geometry.tile)
    pv, hw = _pixels(sizes, ours), torch.tensor(sizes)
    with torch.no_grad():
        ref = hf.model.get_image_features(pixel_values=pv, image_sizes=hw).pooler_output
        out = ours.image_features(pv, hw)
    for (h, w), r, o in zip(sizes, ref, out):
        assert o.shape[0] == r.shape[0] == num_image_tokens(h, w, ours.geometry), (h, w)
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
