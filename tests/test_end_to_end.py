"""Processor + model end to end against transformers' processor + model on one checkpoint directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit import LlavaModel, LlavaProcessor
from tiny_models import hf_model


def _checkpoint(tmp_path, family):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "processing"))
    from hf_processors import hf_processor

    hf_proc = hf_processor(family, tmp_path)
    hf = hf_model(family, "qwen2" if family == "llava_onevision" else "llama", seed=5)
    hf.save_pretrained(tmp_path / family)
    return hf_proc, hf, tmp_path / family


def _img(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_processor_and_model_generate_like_transformers(tmp_path, family):
    hf_proc, hf, path = _checkpoint(tmp_path, family)
    model = LlavaModel.from_pretrained(path)
    proc = LlavaProcessor.from_pretrained(path)
    images = [_img(90, 200, 1), _img(300, 120, 2)]
    texts = ["USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nAnd this one, please? ASSISTANT:"]
    ours = proc(text=texts, images=images)
    ref = hf_proc(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref_ids = hf.generate(**ref, max_new_tokens=20, do_sample=False)
    out_ids = model.generate(**ours, max_new_tokens=20)
    assert out_ids.tolist() == ref_ids.tolist()
    with torch.no_grad():
        lo, lr = model(**ours).logits, hf(**ref).logits
    real = ours["attention_mask"].bool()
    torch.testing.assert_close(lo[real], lr[real], atol=1e-4, rtol=1e-4)
