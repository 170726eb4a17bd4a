"""Reading images: files, bytes, PIL images or arrays to upright 8-bit RGB, with errors that name the image.

``load_image`` follows transformers' ``load_image`` + ``convert_to_rgb`` except where those are silently
wrong (16-bit and float pixels, see ``to_8bit``); sizes are checked from the header before decoding.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .video_load import is_video_file

MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs)
ImageSource = str | Path | bytes | Image.Image | np.ndarray  # also a torch uint8 tensor (see from_array)
NAME_KEY = "llavakit.name"  # load_image records the image's name here, for preprocess's errors

FORMATS_HINT = "PNG, JPEG, WebP, GIF, BMP, TIFF or another format Pillow reads"


def load_image(src: ImageSource, *, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open a path, bytes, PIL image or uint8 array (numpy or torch, see ``from_array``) as RGB with the EXIF
    orientation applied.

    RGB conversion follows transformers, which treats the two kinds of input differently:

    - a file (path or bytes) is opened and converted with ``.convert("RGB")``, as transformers' ``load_image``
      (and the original LLaVA code) do: an alpha channel is dropped, the colour under it kept;
    - a PIL image is converted like the image processors' ``convert_to_rgb``: transparency (RGBA, LA, PA, P with
      a transparent index) is composited onto white, every other mode (L, P, CMYK, 1, ...) converted.

    Deliberately unlike transformers (whose ``convert("RGB")`` clips 16-bit values at 255 and truncates floats),
    16-bit and 32-bit integer greyscale (``I;16*``, ``I``) is scaled to 8 bits and float images (``F``) are
    refused: see ``to_8bit``.

    The EXIF orientation is applied to both (transformers applies it to files only). Errors are ValueErrors
    that name the image (``name``, else the path, else "the given image bytes" / "the given PIL image") and
    the problem: missing file or a directory, undecodable / truncated bytes, zero size, or more than
    ``max_pixels`` pixels (checked from the header, before decoding). A missing file is a FileNotFoundError.
    """
    array = _is_array(src)
    if name is not None:
        what = f"image {name}"
    elif isinstance(src, (str, Path)):
        what = f"image {src}"
    elif array:
        what = f"the given {'tensor' if type(src).__module__.startswith('torch') else 'array'}"
    else:
        what = "the given PIL image" if isinstance(src, Image.Image) else "the given image bytes"
    if array:
        src = from_array(src, what)
    if isinstance(src, Image.Image):
        check_size(src, what, max_pixels)
        out = to_rgb(_upright(src), what=what, from_file=src.format is not None)  # (upright copies drop .format)
        return _named(out.copy() if out is src else out, what)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            where = what if str(path) in what else f"{what} ({path})"
            if path.is_dir():
                raise ValueError(f"{where} is a directory, not an image file; pass the path of an image file")
            if path.exists():
                raise ValueError(f"{where} is not a regular file; pass the path of an image file")
            raise FileNotFoundError(f"image file not found: {path}")
        if path.stat().st_size == 0:
            raise ValueError(f"{what}: cannot decode image: empty file (no bytes)")
        # opened, not read whole: PIL reads the header first, so a multi-GB file (a video) costs no memory
        opener: Callable[[], BinaryIO] = lambda: path.open("rb")  # noqa: E731
        video = is_video_file(path)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if not src:
            raise ValueError(f"{what}: cannot decode image: empty file (no bytes)")
        data = bytes(src)
        opener, video = (lambda: io.BytesIO(data)), False
    else:
        raise TypeError(
            f"image must be a path, bytes, PIL.Image or a uint8 array (numpy or torch), got {type(src).__name__}"
        )
    try:
        with warnings.catch_warnings(), opener() as f:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked right below
            img = Image.open(f)
            check_size(img, what, max_pixels)  # from the header: nothing decoded yet
            img.load()
        img = _upright(img)
    except Image.DecompressionBombError as e:  # PIL's own guard (2x its MAX_IMAGE_PIXELS), before ours
        raise ValueError(bomb_message(what, str(e), max_pixels)) from None
    except UnidentifiedImageError:
        hint = (
            "; it is a video file: pass it as a video (--video or a video part; in training records a 'video' folder "
            "of its frames)"
            if video
            else ""
        )
        raise ValueError(
            f"{what}: cannot decode image: not an image file, or a format that cannot be read "
            f"(accepted: {FORMATS_HINT}){hint}"
        ) from None
    except PermissionError:  # (opening a path, now inside the try)
        raise ValueError(f"{what}: cannot read the file: permission denied; check its permissions") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(
            f"{what}: cannot decode image: {_no_object_ids(str(e))} (truncated or unsupported format? "
            f"accepted: {FORMATS_HINT})"
        ) from None
    img = to_8bit(img, what, keep_alpha=False, from_file=True)
    return _named(img if img.mode == "RGB" else img.convert("RGB"), what)


def _is_array(src: object) -> bool:
    return isinstance(src, np.ndarray) or (type(src).__module__.startswith("torch") and hasattr(src, "numpy"))


_FLOAT_FIX = (
    "whose range (0-1 or 0-255) cannot be told; pass 8-bit pixels, e.g. (a * 255).round().clip(0, 255)"
    ".astype(np.uint8) for values in [0, 1]"
)


def from_array(arr: object, what: str = "the given array") -> Image.Image:
    """A numpy array or torch tensor of pixels as a PIL image: (H, W), (H, W, C) or (C, H, W) with C 1, 3 or 4
    (grey, RGB, RGBA); the channel axis is the first when both ends could be (as transformers infers it).
    uint8 is taken as it is, uint16 as 16-bit (``round(v / 257)``, as ``to_8bit`` scales a 16-bit PIL image;
    transformers would take 0..65535 as 0..255), other integers when their values are within 0..255. Floats are
    refused (0..1 or 0..255 cannot be told apart), as are other dtypes, shapes and ranges, each with the fix.

    Example: ``torch.zeros(3, 40, 60, dtype=torch.uint8)`` (torchvision's ``read_image`` layout) -> a 60x40 RGB
    image; ``np.zeros((40, 60, 3), np.uint8)`` -> the same.
    """
    if hasattr(arr, "detach"):  # torch: its float types (bfloat16 has no numpy twin) refused before .numpy()
        if arr.is_floating_point() or arr.is_complex():
            raise ValueError(f"{what} holds {str(arr.dtype).removeprefix('torch.')} pixels, {_FLOAT_FIX}")
        if arr.device.type == "meta":
            raise ValueError(f"{what} is a meta tensor (no data); pass a tensor with pixels")
        arr = arr.detach().cpu().numpy()
    a = np.asarray(arr)
    shape = tuple(a.shape)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    elif a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"{what} has shape {shape}; an image array is (H, W), (H, W, C) or (C, H, W) with 1, 3 or 4 channels"
        )
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype.kind in "fc":
        raise ValueError(f"{what} holds {a.dtype} pixels, {_FLOAT_FIX}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what} holds {a.dtype} values, not pixels; pass 8-bit pixels (uint8, 0-255)")
    if a.dtype == np.uint16:  # 16-bit pixels, scaled as a 16-bit PIL image is (to_8bit)
        a = _from_16_bit(a)
    elif a.dtype != np.uint8:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(f"{what} holds {a.dtype} pixels in {lo}..{hi}; pass 8-bit pixels (uint8, 0-255)")
        a = a.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))  # L, RGB or RGBA from the shape


def _named(img: Image.Image, what: str) -> Image.Image:
    """``img`` (a fresh image, never the caller's) carrying its name for the errors of ``preprocess``."""
    img.info[NAME_KEY] = what
    return img


def _no_object_ids(msg: str) -> str:
    """PIL's messages quote the file object (``<_io.BytesIO object at 0x7f...>``): say "the image" instead."""
    return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the image", msg)


def bomb_message(what: str, pil_message: str, max_pixels: int) -> str:
    """One message for PIL's DecompressionBombError: the image's pixel count and our limit (not PIL's)."""
    m = re.search(r"\((\d+) pixels\)", pil_message)
    if m is None:  # an unknown wording: at least no second, contradictory limit
        return f"{what}: too many pixels (over {max_pixels}, a decompression bomb?); downscale it first"
    n = int(m.group(1))
    if n > max_pixels:
        return f"{what}: {n} pixels is over the limit of {max_pixels} pixels; downscale it first"
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # max_pixels was raised above what PIL decodes
    return (
        f"{what}: {n} pixels is over Pillow's decompression-bomb limit of {limit} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); downscale it first"
    )


def _upright(img: Image.Image) -> Image.Image:
    """The image as displayed: EXIF orientation applied (a broken EXIF block leaves it as it is)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - unreadable EXIF must not make the pixels unusable
        return img


def check_size(img: Image.Image, what: str, max_pixels: int) -> None:
    """Refuse an image of zero size or over ``max_pixels`` pixels (from its header: nothing decoded)."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"{what}: zero-size image ({w}x{h} w x h)")
    if w * h > max_pixels:
        raise ValueError(
            f"{what}: {w}x{h} (w x h) = {w * h} pixels is over the limit of {max_pixels}; downscale it first"
        )


def to_8bit(
    img: Image.Image, what: str = "the given PIL image", *, keep_alpha: bool = True, from_file: bool | None = None
) -> Image.Image:
    """16-bit / 32-bit integer greyscale scaled to 8-bit ``L``; float (``F``) refused; other modes unchanged.

    PIL's own ``convert("RGB")`` (which transformers uses) clips these at 255: a 16-bit photo comes out almost
    all white, a float image in [0, 1] black. Here:

    - ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` (16-bit PNG / TIFF / PGM): ``round(v / 257)``, 65535 -> 255;
    - ``I`` (32-bit integers: 16-bit PGM and some TIFFs open so, and so do ``Image.fromarray`` of an int32 array
      and ``convert("I")`` of an 8-bit image): an image made in memory (no file format) with values all within
      0..255 is taken as it is (8-bit data, as transformers takes it); otherwise, when every value is in 0..65535,
      the 16-bit scaling above (a file's bit depth is not recorded; a dark 16-bit PGM stays dark); else refused;
    - ``F`` (32-bit float): refused, its range (0..1? 0..255? HDR?) is unknown.

    A 16-bit transparent colour (``info["transparency"]``) becomes an alpha channel (mode ``LA``) when
    ``keep_alpha``, so that ``to_rgb`` composites it onto white.
    """
    mode = img.mode
    if mode == "F":
        raise ValueError(
            f"{what}: 32-bit float pixels (PIL mode 'F') have no known value range; convert the image to 8 bits "
            "per channel first (e.g. a PNG or JPEG with values 0-255)"
        )
    if mode != "I" and not mode.startswith("I;16"):
        return img
    arr = np.asarray(img)  # (H, W) uint16 (">u2" for I;16B) or int32
    if mode == "I":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"{what}: 32-bit integer pixels (PIL mode 'I') with values {lo}..{hi}, outside the 16-bit range "
                "0..65535, so their scale is unknown; convert the image to 8 bits per channel first"
            )
    if from_file is None:
        from_file = img.format is not None
    if mode == "I" and hi <= 255 and not from_file:  # 8-bit values held in 32-bit integers (made in memory)
        grey = Image.fromarray(arr.astype(np.uint8), "L")
    else:
        grey = Image.fromarray(_from_16_bit(arr), "L")
    t = img.info.get("transparency")
    if keep_alpha and isinstance(t, int) and not isinstance(t, bool):
        alpha = Image.fromarray(np.where(arr == t, 0, 255).astype(np.uint8), "L")
        grey = Image.merge("LA", (grey, alpha))
    return grey


def _from_16_bit(arr: np.ndarray) -> np.ndarray:
    """uint8 ``round(v / 257)`` of 16-bit values (0..65535 -> 0..255), in one uint32 temporary."""
    x = arr.astype(np.uint32)
    x += 128
    x //= 257
    return x.astype(np.uint8)


def to_rgb(img: Image.Image, *, what: str = "the given PIL image", from_file: bool | None = None) -> Image.Image:
    """RGB; any transparency composited onto a white background (transformers' ``convert_to_rgb``).

    High-bit-depth greyscale is scaled to 8 bits first and float images refused (``to_8bit``; ``from_file``: the
    image was opened from a file, None: as its ``format`` says).
    """
    img = to_8bit(img, what, from_file=from_file)
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")
