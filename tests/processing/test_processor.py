"""Our processor against transformers' processors on the same files: input_ids, pixel_values, image_sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_processors import hf_processor
from PIL import Image

from llavakit import LlavaProcessor

SIZES = [(56, 56), (30, 120), (120, 30), (7, 5), (1500, 2000), (113, 57), (333, 251)]


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _check(ours, ref):
    assert ours["input_ids"].tolist() == ref["input_ids"].tolist()
    assert ours["attention_mask"].tolist() == ref["attention_mask"].tolist()
    torch.testing.assert_close(ours["pixel_values"], torch.as_tensor(ref["pixel_values"]), atol=1e-5, rtol=0)
    if "image_sizes" in ref:
        assert ours["image_sizes"].tolist() == torch.as_tensor(ref["image_sizes"]).tolist()


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_single_images_of_many_sizes(tmp_path, family):
    hf = hf_processor(family, tmp_path)
    ours = LlavaProcessor.from_pretrained(tmp_path / family)
    for i, (h, w) in enumerate(SIZES):
        img = _image(h, w, i)
        prompt = "USER: <image>\nWhat is it? ASSISTANT:"
        _check(ours(text=prompt, images=[img]), hf(text=prompt, images=[img], return_tensors="pt"))


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_batch_mixing_sizes_left_padded(tmp_path, family):
    hf = hf_processor(family, tmp_path)
    ours = LlavaProcessor.from_pretrained(tmp_path / family)
    imgs = [_image(h, w, i) for i, (h, w) in enumerate(SIZES[:4])]
    texts = [f"<image>\nQ{i}" + "?" * i for i in range(4)]
    _check(ours(text=texts, images=imgs), hf(text=texts, images=imgs, return_tensors="pt", padding=True))


def test_llava15_without_pad(tmp_path):
    hf = hf_processor("llava", tmp_path, do_pad=False)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava")
    assert not ours.image_config.pad_square
    img = _image(40, 130, 3)
    _check(ours(text="<image>\nx", images=[img]), hf(text="<image>\nx", images=[img], return_tensors="pt"))


def test_onevision_multi_image_prompt(tmp_path):
    hf = hf_processor("llava_onevision", tmp_path)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava_onevision")
    imgs = [_image(90, 200, 1), _image(300, 120, 2), _image(150, 150, 3)]
    texts = ["<image><image>\ncompare", "<image>\none"]
    out = ours(text=texts, images=imgs)
    ref = hf(text=texts, images=[imgs[:2], imgs[2:]], return_tensors="pt", padding=True)
    _check(out, ref)
    assert out["batch_num_images"].tolist() == [2, 1]


def test_wrong_number_of_images_names_both_counts(tmp_path):
    hf_processor("llava_next", tmp_path)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava_next")
    with pytest.raises(ValueError, match=r"hold 2 <image> placeholder\(s\) but 1 image"):
        ours(text="<image><image> hi", images=[_image(10, 10, 0)])


def test_save_roundtrip_loads_in_transformers(tmp_path):
    from transformers import AutoProcessor

    hf_processor("llava_next", tmp_path)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava_next")
    ours.save_pretrained(tmp_path / "again")
    again = LlavaProcessor.from_pretrained(tmp_path / "again")
    ref = AutoProcessor.from_pretrained(tmp_path / "again")
    img = _image(77, 190, 5)
    _check(again(text="<image>\nhi", images=[img]), ref(text="<image>\nhi", images=[img], return_tensors="pt"))
