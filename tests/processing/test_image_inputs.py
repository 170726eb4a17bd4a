"""Hostile and unusual image inputs: extreme aspect ratios (bounded memory), 16-bit / float pixels, clear errors."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from image_bytes import encoded, noise, png_header
from PIL import Image

from llavakit.processing.image import (
    ImageConfig,
    check_geometry,
    expand_to_square,
    preprocess,
    resize_shortest_edge,
)
from llavakit.processing.image_load import load_image

LLAVA15_PAD = ImageConfig(tile=336, pad_square=True)  # llava-1.5-hf: pad to square, shortest edge, crop
LLAVA15_CLIP = ImageConfig(tile=336)  # do_pad=False: shortest edge, crop
ONEVISION = ImageConfig(  # SigLIP/384 AnyRes; multi-image prompts pad to square and squash
    tile=384, mean=(0.5,) * 3, std=(0.5,) * 3, resize_shortest=False, center_crop=False, pinpoints=((384, 768),)
)


# -- extreme aspect ratios: refused before any big intermediate is built -----------------------------------------


@pytest.mark.parametrize("w, h", [(1, 40_000), (100_000, 1)])
def test_extreme_aspect_ratios_are_refused_fast_with_clear_errors(w, h):
    data = encoded(Image.new("RGB", (w, h), (200, 10, 10)))
    assert len(data) < 2000  # a few hundred bytes: the reviewer's 1 x 40000 PNG needed 6.6 GB before
    img = load_image(data, name="1 of 1 (tall.png)")
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"image 1 of 1 \(tall\.png\): .*square.*over the limit of 64000000; crop"):
        preprocess(img, LLAVA15_PAD)
    with pytest.raises(ValueError, match=r"image 1 of 1 \(tall\.png\): .*too elongated.*crop it to an aspect ratio"):
        preprocess(img, LLAVA15_CLIP)
    with pytest.raises(ValueError, match=r"image 1 of 1 \(tall\.png\): .*square.*over the limit"):
        preprocess(img, ONEVISION, multi_image=True)
    with pytest.raises(ValueError, match=r"image x: .*square"):
        preprocess(img, LLAVA15_PAD, name="x")  # an explicit name wins
    # the building blocks refuse too (used directly by training code)
    with pytest.raises(ValueError, match="square"):
        expand_to_square(img, LLAVA15_PAD.pad_colour)
    with pytest.raises(ValueError, match="too elongated"):
        resize_shortest_edge(img, 336)
    assert time.perf_counter() - t < 2
    # AnyRes (a single OneVision image) never needs more than a pinpoint: accepted, bounded
    assert preprocess(img, ONEVISION).shape == (3, 3, 384, 384)


def test_an_image_that_would_vanish_is_refused():
    # 1 x 1000 padded to a 1000 x 1000 square (fine) and resized to 336: a 0.34 px line
    img = load_image(encoded(Image.new("RGB", (1000, 1))))
    with pytest.raises(ValueError, match=r"the given image bytes: 1000x1 .* height would be 0.34 px.*at most 672:1"):
        preprocess(img, LLAVA15_PAD)
    with pytest.raises(ValueError, match="would vanish"):
        preprocess(img, ONEVISION, multi_image=True)
    with pytest.raises(ValueError, match="resizing its shorter side to 336 px makes a 336000x336 image"):
        preprocess(img, LLAVA15_CLIP)  # no pad: nothing vanishes, but the resize is over the pixel limit
    with pytest.raises(ValueError, match="the image: 3x1 .*vanish"):
        check_geometry(3, 1, ImageConfig(tile=1, pad_square=True))


def test_the_limits_are_exact_and_what_they_accept_matches_transformers():
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    clip = dict(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    pad, nopad = ImageConfig(tile=56, pad_square=True), ImageConfig(tile=56)
    # pad: 7 x 784 is half a pixel high at 56 (kept), 7 x 785 less (refused); the canvas is 784^2
    img = noise(7, 784, 1)
    ref = LlavaImageProcessorPil(do_pad=True, **clip)(img, return_tensors="np")["pixel_values"]
    torch.testing.assert_close(preprocess(img, pad, max_pixels=784 * 784), torch.as_tensor(ref), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="784x784 square for this model, 614656 pixels, over the limit of 614655"):
        preprocess(img, pad, max_pixels=784 * 784 - 1)
    with pytest.raises(ValueError, match="vanish"):
        preprocess(noise(7, 785), pad)
    # shortest edge: 3 x 170 -> 56 x 3173 = 177688 pixels before the crop
    img = noise(3, 170, 2)
    ref = LlavaImageProcessorPil(do_pad=False, **clip)(img, return_tensors="np")["pixel_values"]
    torch.testing.assert_close(preprocess(img, nopad, max_pixels=177688), torch.as_tensor(ref), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="makes a 3173x56 image, 177688 pixels, over the limit of 177687"):
        preprocess(img, nopad, max_pixels=177687)


def test_processor_errors_name_the_image(tmp_path):
    from hf_processors import hf_processor
    from llavakit.processing.processor import LlavaProcessor

    hf_processor("llava", tmp_path)
    proc = LlavaProcessor.from_pretrained(tmp_path / "llava")
    (tmp_path / "tall.png").write_bytes(encoded(Image.new("RGB", (1, 40_000))))
    with pytest.raises(ValueError, match=r"^image 2 of 2 \(.*tall\.png\): 1x40000 \(w x h\) is padded to a 40000x"):
        proc(text="<image><image>\nx", images=[noise(20, 30), tmp_path / "tall.png"])


# -- 16-bit and float pixels ---------------------------------------------------------------------------------------


def _ramp16() -> np.ndarray:
    return np.linspace(0, 65535, 24 * 40).round().astype(np.uint16).reshape(24, 40)


def _expected8(v: np.ndarray) -> np.ndarray:
    grey = np.round(v.astype(np.float64) / 257).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def test_16bit_png_and_tiff_are_scaled_to_8_bits(tmp_path):
    v = _ramp16()
    png = encoded(Image.fromarray(v))
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    # what transformers' .convert("RGB") makes of it: clipped at 255, almost all white
    assert (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == 255).mean() > 0.99
    tiff_b = encoded(Image.frombytes("I;16B", (40, 24), v.astype(">u2").tobytes()), "TIFF")
    assert Image.open(io.BytesIO(tiff_b)).mode == "I;16B"
    (tmp_path / "g.png").write_bytes(png)
    for src in (png, tmp_path / "g.png", Image.open(tmp_path / "g.png"), tiff_b, Image.open(io.BytesIO(tiff_b))):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (40, 24)
        np.testing.assert_array_equal(np.asarray(out), _expected8(v))
    # I;16L / I;16N as PIL images
    for mode in ("I;16L", "I;16N"):
        img = Image.frombytes(mode, (40, 24), v.astype("<u2").tobytes())
        np.testing.assert_array_equal(np.asarray(load_image(img)), _expected8(v))
    out = np.asarray(load_image(png))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and abs(out.mean() - 127.5) < 1


def test_16bit_transparency_is_composited_on_white_for_pil_and_dropped_for_files():
    v = _ramp16()
    v[0, :5] = 1000
    png = encoded(Image.fromarray(v), transparency=1000)
    pil = np.asarray(load_image(Image.open(io.BytesIO(png))))
    assert (pil[0, :5] == 255).all()  # the transparent value is white, as transformers' convert_to_rgb
    np.testing.assert_array_equal(pil[1:], _expected8(v)[1:])
    np.testing.assert_array_equal(np.asarray(load_image(png)), _expected8(v))  # files: .convert("RGB")


def test_32bit_integer_images_use_the_16bit_range_or_are_refused(tmp_path):
    v = _ramp16()
    pgm = encoded(Image.fromarray(v), "PPM")  # a 16-bit PGM opens as mode "I"
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(pgm)), _expected8(v))
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(v.astype(np.int32)))), _expected8(v))
    for bad, rng in ((70_000, "0..70000"), (-5, "-5..")):
        arr = v.astype(np.int32)
        arr[3, 3] = bad
        with pytest.raises(ValueError, match=rf"the given PIL image: .*mode 'I'\) with values {rng}.*8 bits"):
            load_image(Image.fromarray(arr))
        (tmp_path / "i.tiff").write_bytes(encoded(Image.fromarray(arr), "TIFF"))
        with pytest.raises(ValueError, match=r"image .*i\.tiff: .*outside the 16-bit range"):
            load_image(tmp_path / "i.tiff")


def test_float_images_are_refused(tmp_path):
    f = Image.fromarray(np.random.default_rng(0).random((8, 8), dtype=np.float32))
    (tmp_path / "f.tiff").write_bytes(encoded(f, "TIFF"))
    assert Image.open(tmp_path / "f.tiff").mode == "F"
    msg = r"float pixels \(PIL mode 'F'\) have no known value range; convert the image to 8 bits"
    with pytest.raises(ValueError, match=r"image .*f\.tiff: 32-bit " + msg):
        load_image(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match="the given PIL image: 32-bit " + msg):
        load_image(f)
    with pytest.raises(ValueError, match="image 3 of 4: 32-bit " + msg):
        load_image((tmp_path / "f.tiff").read_bytes(), name="3 of 4")


# -- error messages ------------------------------------------------------------------------------------------------


def test_decode_errors_name_the_image_not_a_python_object(tmp_path):
    (tmp_path / "notes.png").write_bytes(b"this is not an image at all")
    cases = [
        (b"this is not an image at all", {}, "the given image bytes"),
        (b"this is not an image at all", {"name": "2 of 3"}, "image 2 of 3"),
        (tmp_path / "notes.png", {}, f"image {tmp_path / 'notes.png'}"),
        (b"\x89PNG\r\n\x1a\n garbage", {}, "the given image bytes"),
        (encoded(noise(64, 64))[:200], {}, "the given image bytes"),
    ]
    for src, kw, who in cases:
        with pytest.raises(ValueError) as e:
            load_image(src, **kw)
        msg = str(e.value)
        assert msg.startswith(f"{who}: cannot decode image: "), msg
        assert "PNG, JPEG, WebP, GIF" in msg and "0x" not in msg and "BytesIO" not in msg, msg


def test_a_file_is_not_read_whole_and_a_video_given_as_an_image_is_named(tmp_path, monkeypatch):
    """A path was read into memory before PIL saw its header: a multi-GB video passed as an image cost its size in
    memory (or a MemoryError traceback), then said only "not an image file"."""
    from pathlib import Path

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4096))
    big = tmp_path / "big.png"
    big.write_bytes(encoded(noise(64, 64)))
    (tmp_path / "empty.png").write_bytes(b"")

    def whole(self):
        raise AssertionError(f"{self} was read whole")

    monkeypatch.setattr(Path, "read_bytes", whole)
    with pytest.raises(ValueError, match=r"not an image file.*; it is a video file: pass it as a video \(--video"):
        load_image(clip)
    assert load_image(big).size == (64, 64)
    with pytest.raises(ValueError, match=r"empty.png: cannot decode image: empty file \(no bytes\)"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"^the given image bytes: cannot decode image: empty file"):
        load_image(b"")


def test_decompression_bomb_gives_one_message_with_our_limit():
    with pytest.raises(ValueError) as e:
        load_image(png_header(30_000, 30_000))  # PIL's own guard fires first (over 2 x 89478485 pixels)
    assert (
        str(e.value)
        == "the given image bytes: 900000000 pixels is over the limit of 64000000 pixels; downscale it first"
    )
    with pytest.raises(ValueError, match=r"^image big\.png: 900000000 pixels is over Pillow's .* limit of 178956970"):
        load_image(png_header(30_000, 30_000), max_pixels=10**12, name="big.png")


def test_a_directory_is_not_an_image_file(tmp_path):
    with pytest.raises(ValueError, match=rf"^image {tmp_path} is a directory, not an image file"):
        load_image(tmp_path)
    with pytest.raises(ValueError, match=rf"^image 1 of 2 \({tmp_path}\) is a directory"):
        load_image(str(tmp_path), name=f"1 of 2 ({tmp_path})")
    with pytest.raises(ValueError, match=rf"^image 1 of 2 \({tmp_path}\) is a directory"):
        load_image(tmp_path, name="1 of 2")
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "missing.png")


def test_32bit_integer_images_of_8bit_values_keep_them():
    """``Image.fromarray(int32)`` / ``convert("I")`` of an 8-bit image hold 0..255: taken as they are (as
    transformers takes them), not divided by 257 into a black image."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8))
    grey = rgb.convert("L")
    for img in (grey.convert("I"), Image.fromarray(np.asarray(grey).astype(np.int32))):
        assert img.mode == "I"
        np.testing.assert_array_equal(np.asarray(load_image(img)), np.asarray(grey.convert("RGB")))
    # a dark 16-bit PGM file (it opens as mode "I" too) keeps the 16-bit scale: dark, not 257 times brighter
    dark = np.full((4, 4), 200, dtype=np.uint16)
    dark[0, 0] = 250
    assert Image.open(io.BytesIO(encoded(Image.fromarray(dark), "PPM"))).mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(encoded(Image.fromarray(dark), "PPM"))), _expected8(dark))


def test_arrays_become_the_images_they_hold_or_are_refused_with_the_fix():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    as_pil = Image.fromarray(rgb)
    for arr in (rgb, rgb.transpose(2, 0, 1), torch.from_numpy(rgb).permute(2, 0, 1), rgb.astype(np.int64)):
        out = load_image(arr)
        assert out.mode == "RGB" and out.size == (60, 40) and np.array_equal(np.asarray(out), rgb)
    grey = rgb[..., 0]
    for arr in (grey, grey[None], grey[..., None]):
        assert np.array_equal(np.asarray(load_image(arr)), np.asarray(as_pil.split()[0].convert("RGB")))
    rgba = np.concatenate([rgb, np.zeros((40, 60, 1), np.uint8)], -1)  # fully transparent: white, as PIL's RGBA
    assert np.array_equal(np.asarray(load_image(rgba)), np.asarray(load_image(Image.fromarray(rgba))))
    with pytest.raises(ValueError, match=r"the given array holds float32 pixels.*astype\(np.uint8\)"):
        load_image(rgb.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"the given tensor has shape \(40, 60, 5\); an image array is"):
        load_image(torch.zeros(40, 60, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"int64 pixels in 0\.\.300; pass 8-bit pixels"):
        load_image(np.array([[0, 300]]))
    with pytest.raises(ValueError, match=r"image 2 of 2 has shape \(2, 3, 4, 5\)"):
        load_image(np.zeros((2, 3, 4, 5), np.uint8), name="2 of 2")
    with pytest.raises(ValueError, match="zero"):
        load_image(np.zeros((0, 5, 3), np.uint8))


def test_array_dtypes_16_bit_and_non_pixels():
    """uint16 arrays are 16-bit pixels, scaled as a 16-bit PIL image is; dtypes that are not pixels (bool, strings,
    complex, torch floats without a numpy twin, meta tensors) are refused as ValueErrors naming the image."""
    for v in (0, 200, 257 * 3 + 100, 65535):
        arr = np.full((10, 20), v, np.uint16)
        assert np.array_equal(np.asarray(load_image(arr)), np.asarray(load_image(Image.fromarray(arr))))
    refused = {
        "bfloat16 pixels": torch.zeros(3, 4, 4, dtype=torch.bfloat16),
        "bool values, not pixels": np.zeros((4, 4), bool),
        "<U1 values, not pixels": np.array([["a", "b"]]),
        "complex128 pixels": np.zeros((4, 4), complex),
        "a meta tensor": torch.zeros(3, 4, 4, dtype=torch.uint8, device="meta"),
    }
    for words, arr in refused.items():
        with pytest.raises(ValueError, match=f"^image x (holds|is) {words}"):
            load_image(arr, name="x")
