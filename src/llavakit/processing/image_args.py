"""The ``images=`` / ``videos=`` arguments of ``LlavaProcessor``: one image, a flat list, one list per prompt, or
4-D arrays, checked against the prompts' placeholders and flattened in placeholder order; how errors name an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .templates import IMAGE


def image_name(i: int, n: int, src: Any) -> str:
    """How errors name an image: "2 of 3", with its path when it has one."""
    return f"{i + 1} of {n}" + (f" ({src})" if isinstance(src, (str, Path)) else "")


def check_nesting(images: Any, per_text: list[int]) -> None:
    """Images given as nested lists (as transformers accepts) must match the prompts' placeholders: one list per
    prompt, or (transformers' own pairing) one per prompt that holds images, in order. Flattened unchecked,
    ``[[a], [b, c]]`` for prompts of 2 and 1 placeholders silently gave prompt 0 the images a and b.

    Example: prompts with 2, 1, 0 and 1 placeholders take [[a, b], [c], [], [d]] or [[a, b], [c], [d]]."""
    if not isinstance(images, (list, tuple)) or not any(is_group(im) for im in images):
        return
    counts = [len(im) if is_group(im) else 1 for im in images]
    with_images = [n for n in per_text if n]
    if len(counts) == len(per_text):
        pairs = list(enumerate(per_text))
    elif len(counts) == len(with_images):
        pairs = [(i, n) for i, n in enumerate(per_text) if n]
    else:
        raise ValueError(
            f"images are given as {len(counts)} lists for {len(per_text)} prompt(s), {len(with_images)} of them with "
            "images; pass one list per prompt (or per prompt with images), or a flat list in placeholder order"
        )
    for (i, n), got in zip(pairs, counts, strict=True):
        if got != n:
            raise ValueError(f"prompt {i} holds {n} {IMAGE} placeholder(s) but its list has {got} image(s)")


def flatten_images(images: Any) -> list[Any]:
    """None, one image, a flat list or a list of lists (one per prompt, as HF accepts) -> flat list; a 4-D array or
    tensor (N, H, W, C) / (N, C, H, W) is N images, also as an item of the list (as transformers flattens it)."""
    if images is None:
        return []
    if is_array4(images):
        return list(images)
    if not isinstance(images, (list, tuple)):
        return [images]
    return [im for group in images for im in (group if is_group(group) else [group])]


def is_array4(x: Any) -> bool:
    """A 4-D array or tensor: (N, H, W, C) / (N, C, H, W) images, or a video's frames."""
    return not isinstance(x, (list, tuple)) and getattr(x, "ndim", None) == 4


def is_group(images: Any) -> bool:
    """A list or tuple of images, or a 4-D array / tensor: several images."""
    return isinstance(images, (list, tuple)) or is_array4(images)
