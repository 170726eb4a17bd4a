"""Images as one list per prompt (transformers' nesting): each list must match its prompt's placeholders; flattened
without a check, [[a], [b, c]] for prompts of 2 and 1 placeholders gave prompt 0 the images a and b, silently."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module", params=["llava_next", "llava_onevision"])
def processor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LlavaProcessor:
    return LlavaProcessor.from_pretrained(write_tiny_checkpoint(tmp_path_factory.mktemp("nest") / "m", request.param))


def _img(c: int) -> Image.Image:
    return Image.new("RGB", (40 + c, 30), (c, 100, 200))


def test_lists_that_do_not_match_their_prompts_are_refused(processor: LlavaProcessor) -> None:
    a, b, c = _img(10), _img(20), _img(30)
    texts = ["<image><image> two", "<image> one"]
    with pytest.raises(ValueError, match="prompt 0 holds 2 <image> placeholder"):
        processor(text=texts, images=[[a], [b, c]])
    with pytest.raises(ValueError, match="3 lists for 2 prompt"):
        processor(text=texts, images=[[a, b], [c], []])
    with pytest.raises(ValueError, match="prompt 3 holds 1 <image> placeholder"):  # transformers' pairing:
        processor(text=[*texts, "no image", "<image> three"], images=[[a, b], [c], [a, b]])  # prompts with images
    nested = processor(text=texts, images=[[a, b], [c]])  # matching lists: the same as the flat order
    flat = processor(text=texts, images=[a, b, c])
    for key in ("input_ids", "pixel_values"):
        assert torch.equal(nested[key], flat[key])
    assert processor(text=["hi", "<image> one"], images=[[], [c]])["input_ids"].shape[0] == 2
