"""Image loading (modes, EXIF, bad input) and the preprocessing steps against transformers' PIL processors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from image_bytes import encoded, noise, png_header
from PIL import Image

from llavakit.processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    ImageConfig,
    anyres_views,
    center_crop,
    expand_to_square,
    fit_size,
    preprocess,
    resize_shortest_edge,
    sample_frames,
    to_tile,
    video_frames,
)
from llavakit.processing.image_load import load_image


# I;16, I and F are deliberately unlike transformers (scaled to 8 bits / refused): see test_high_bit_depth_*
@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "1", "YCbCr"])
def test_every_mode_converts_like_transformers(mode):
    from transformers.image_transforms import convert_to_rgb

    rgba = np.random.default_rng(1).integers(0, 256, (6, 9, 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA").convert(mode)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (9, 6)
    np.testing.assert_array_equal(np.asarray(out), convert_to_rgb(img, return_numpy=True))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "RGB"])
def test_files_convert_like_transformers_load_image(tmp_path, mode):
    from transformers.image_utils import load_image as hf_load_image

    rgba = np.random.default_rng(2).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rgba[..., 3] > 128, 255, 0)  # half the pixels fully transparent
    img = Image.fromarray(rgba, "RGBA").convert(mode)
    file = tmp_path / "x.tiff"
    img.save(file)
    expected = np.asarray(hf_load_image(str(file)))
    for src in (file, str(file), file.read_bytes()):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (5, 7)
        np.testing.assert_array_equal(np.asarray(out), expected)


def test_transparency_of_files_is_dropped_and_of_pil_images_composited_on_white():
    # files: .convert("RGB") keeps the colour under the alpha (transformers' load_image, original LLaVA);
    # PIL images: white background (transformers' image processors' convert_to_rgb)
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(encoded(img)).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    data = encoded(pal, transparency=0)
    assert load_image(data).getpixel((1, 1)) == (10, 20, 30)
    assert load_image(Image.open(io.BytesIO(data))).getpixel((1, 1)) == (255, 255, 255)


def test_exif_rotated_jpeg_comes_out_rotated(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white block at the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "r.jpg").write_bytes(encoded(img, "JPEG", exif=exif.tobytes(), quality=95))
    for out in (load_image(tmp_path / "r.jpg"), load_image(Image.open(tmp_path / "r.jpg"))):
        assert out.size == (10, 30)
        arr = np.asarray(out).astype(float)
        assert arr[:10].mean() > 200 and arr[15:].mean() < 50  # the white block is now at the top


def test_bad_images_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match=r"cannot decode image: .*\(truncated or unsupported"):
        load_image(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot decode image"):
        load_image(b"this is not an image at all")
    with pytest.raises(ValueError, match="cannot decode image"):
        load_image(encoded(noise(64, 64))[:200])  # truncated
    with pytest.raises(ValueError, match="empty"):
        load_image(b"")
    with pytest.raises(ValueError, match="zero-size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="50x50 .* 2500 pixels is over the limit of 1000"):
        load_image(encoded(Image.new("RGB", (50, 50))), max_pixels=1000)
    # a decompression bomb is refused from its header, before anything is decoded
    with pytest.raises(ValueError, match="10000x9000 .*90000000 pixels is over the limit of 64000000"):
        load_image(png_header(10_000, 9_000))
    with pytest.raises(ValueError, match=r"limit"):
        load_image(png_header(30_000, 30_000), max_pixels=10**12)  # PIL's own bomb guard, reworded
    with pytest.raises(TypeError, match="path, bytes, PIL.Image or a uint8 array"):
        load_image(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("hw", [(30, 120), (120, 30), (7, 5), (57, 113), (1500, 2000), (56, 56)])
def test_resize_crop_pad_match_transformers(hw):
    from transformers.image_utils import SizeDict
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    ref = LlavaImageProcessorPil()
    img = noise(*hw)
    arr = np.asarray(img).transpose(2, 0, 1).copy()  # (3, H, W) as the backend holds it
    r = ref.resize(arr, SizeDict(shortest_edge=56), resample=Image.Resampling.BICUBIC)
    ours = resize_shortest_edge(img, 56)
    np.testing.assert_array_equal(np.asarray(ours).transpose(2, 0, 1), r)
    np.testing.assert_array_equal(
        np.asarray(center_crop(ours, 56)).transpose(2, 0, 1), ref.center_crop(r, SizeDict(height=56, width=56))
    )
    colour = tuple(int(m * 255) for m in CLIP_MEAN)
    assert colour == (122, 116, 104)
    np.testing.assert_array_equal(
        np.asarray(expand_to_square(img, colour)).transpose(2, 0, 1), ref.pad_to_square(arr, colour)
    )


def test_center_crop_of_a_small_image_zero_pads():
    out = np.asarray(center_crop(Image.new("RGB", (4, 10), (255, 255, 255)), 8))
    assert out.shape == (8, 8, 3) and out[:, :2].max() == 0 and out[:, 2:6].min() == 255


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_one_tile_matches_clip_and_siglip_processors(kind):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if kind == "clip":
        ref = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        cfg = ImageConfig(tile=56)
    else:
        ref = SiglipImageProcessorPil(size={"height": 70, "width": 70})
        cfg = ImageConfig(tile=70, mean=(0.5,) * 3, std=(0.5,) * 3, resize_shortest=False, center_crop=False)
    for i, hw in enumerate([(40, 90), (300, 77), (5, 7), (70, 70)]):
        img = noise(*hw, seed=i)
        expected = torch.as_tensor(np.asarray(ref(img, return_tensors="np")["pixel_values"]))
        torch.testing.assert_close(torch.from_numpy(to_tile(img, cfg))[None], expected, atol=1e-5, rtol=0)


def test_anyres_views_layout():
    # a 1:2 (h:w) image on pinpoints multiples of 56: best 56 x 112 -> base + 2 tiles, row-major
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 0, 255), (100, 0, 200, 100))  # right half blue
    views = anyres_views(img, 56, ((56, 112), (112, 56), (112, 112)))
    assert [v.size for v in views] == [(56, 56)] * 3
    assert np.asarray(views[1])[..., 0].mean() > 200 and np.asarray(views[2])[..., 2].mean() > 200
    assert fit_size(768, 1024, 672, 672) == (504, 672) and fit_size(5, 7, 56, 112) == (56, 79)
    cfg = ImageConfig(tile=56, pinpoints=((56, 112), (112, 56), (112, 112)))
    assert preprocess(img, cfg).shape == (3, 3, 56, 56)
    assert preprocess(img, cfg, multi_image=True).shape == (1, 3, 56, 56)


def test_video_frames_and_sampling(tmp_path):
    frames = [noise(30, 50, i) for i in range(4)]
    (tmp_path / "f.png").write_bytes(encoded(frames[0]))
    cfg = ImageConfig(tile=70, mean=CLIP_MEAN, std=CLIP_STD, resize_shortest=False, center_crop=False)
    out = video_frames([tmp_path / "f.png", *frames[1:]], cfg)
    assert out.shape == (4, 3, 70, 70) and out.dtype == torch.float32
    x = np.asarray(frames[2].resize((70, 70), Image.Resampling.BICUBIC)).astype(np.float64) / 255
    ref = ((x - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)
    torch.testing.assert_close(out[2], torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at least one frame"):
        video_frames([], cfg)
    assert sample_frames(10, 4) == [0, 3, 6, 9]
    assert sample_frames(100, 3) == [0, 49, 99]
    assert sample_frames(3, 8) == [0, 1, 2]
    assert sample_frames(32, 32) == list(range(32))
    idx = sample_frames(1000, 32)
    assert len(idx) == 32 and idx[0] == 0 and idx[-1] == 999 and idx == sorted(set(idx))
    with pytest.raises(ValueError, match="no frames"):
        sample_frames(0, 4)


def test_resize_and_fit_arithmetic_match_transformers_on_many_sizes():
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_transforms import get_resize_output_image_size

    from llavakit.processing.image import shortest_edge_size

    rng = np.random.default_rng(7)
    sizes = [tuple(int(x) for x in rng.integers(1, 5000, 2)) for _ in range(1500)] + [(3, 3), (1, 4000), (4000, 1)]
    for h, w in sizes:
        view = np.broadcast_to(np.zeros(1, np.uint8), (h, w, 3))  # no memory: only the shape is read
        for side in (56, 336, 384):
            ref = get_resize_output_image_size(view, side, default_to_square=False, input_data_format="channels_last")
            assert shortest_edge_size(h, w, side) == tuple(ref), (h, w, side)
        for target in ((336, 672), (672, 336), (1152, 768), (384, 2304)):
            assert fit_size(h, w, *target) == get_patch_output_size(view, target, "channels_last"), (h, w, target)


def test_pinpoints_that_are_not_whole_tiles_are_a_clear_error():
    """A pinpoint side that is not a multiple of the tile has no tile count transformers' processor and model agree
    on; the count divided by zero for pinpoints below one tile."""
    from llavakit.processing.anyres import ImageGeometry, num_image_tokens, num_tiles

    for pins in (((30, 56),), ((100, 112),)):
        geom = ImageGeometry("llava_next", 56, 14, pinpoints=pins)
        with pytest.raises(ValueError, match="multiples of the vision tile size 56"):
            num_tiles(40, 60, geom)
        with pytest.raises(ValueError, match="image_grid_pinpoints"):
            num_image_tokens(40, 60, geom)
    assert num_tiles(40, 60, ImageGeometry("llava_next", 56, 14, pinpoints=((56, 112),))) == 3
