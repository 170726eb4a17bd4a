"""Engine edge cases: ids past the vocabulary in the repetition penalty, and bad arguments refused with a
ValueError that names them (not a torch traceback, not a silent misreading)."""

from __future__ import annotations

import pytest
import torch

from llavakit.engine.generate import generate
from tiny_models import VOCAB, hf_model, ours_from_hf


@pytest.fixture(scope="module")
def model():
    return ours_from_hf(hf_model("llava", "llama", seed=3))


def test_an_image_token_past_the_vocabulary_is_not_penalized_as_the_last_token(model):
    """A checkpoint whose image token id is not a row of the vocabulary (the embedding lookup allows it): the
    repetition penalty clamped that id to V - 1 and penalized the last vocabulary token, which the prompt never
    held (transformers penalizes exactly the ids of the prompt)."""
    image_token = model.config.image_token_id
    lm_head = model.lm_head.weight.detach().clone()
    try:
        model.config.image_token_id = VOCAB
        ids = torch.tensor([[1, 17, 40] + [VOCAB] * model.geometry.tokens_per_tile + [5, 6]])
        px = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
        first = generate(model, ids, max_new_tokens=1, pixel_values=px, eos_token_id=[])[0, -1].item()
        with torch.no_grad():  # the last vocabulary token now wins by a margin a penalty of 2 would undo
            model.lm_head.weight[VOCAB - 1] = model.lm_head.weight[first] * 1.5
        kw = dict(max_new_tokens=1, pixel_values=px, eos_token_id=[])
        assert generate(model, ids, **kw)[0, -1].item() == VOCAB - 1
        assert generate(model, ids, repetition_penalty=2.0, **kw)[0, -1].item() == VOCAB - 1
    finally:
        model.config.image_token_id = image_token
        with torch.no_grad():
            model.lm_head.weight.copy_(lm_head)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"eos_token_id": "23"}, "eos_token_id must be a token id"),  # was read as [2, 3]
        ({"eos_token_id": 2.5}, "eos_token_id must be a token id"),
        ({"eos_token_id": [2, None]}, "eos_token_id must be a token id"),
        ({"eos_token_id": -5}, "eos_token_id must be a token id"),
        ({"pad_token_id": "x"}, "pad_token_id must be a token id"),
        ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, "the prompt is empty"),
        ({"input_ids": torch.tensor([1, 17, 40])}, "input_ids must be integer ids of shape"),
        ({"input_ids": torch.tensor([[1.0, 17.0]])}, "input_ids must be integer ids of shape"),
        ({"attention_mask": torch.tensor([[1, 1, 1]])}, "attention_mask must have input_ids' shape"),  # was ignored
        ({"attention_mask": torch.tensor([[0, 1, 1]])}, "attention_mask must have input_ids' shape"),
    ],
)
def test_bad_generate_arguments_are_value_errors_naming_them(model, kw, message):
    kw = {"input_ids": torch.tensor([[1, 17, 40, 5]]), **kw}
    with pytest.raises(ValueError, match=message):
        generate(model, kw.pop("input_ids"), max_new_tokens=3, **kw)


def test_eos_ids_still_take_ints_lists_tensors_and_numpy_integers(model):
    import numpy as np

    from llavakit.engine.generate import eos_ids

    assert eos_ids(model, 2) == [2] == eos_ids(model, np.int64(2)) == eos_ids(model, torch.tensor(2))
    assert eos_ids(model, [2, np.int32(5)]) == [2, 5] == eos_ids(model, torch.tensor([2, 5])) == eos_ids(model, (2, 5))
    assert eos_ids(model, []) == []


@pytest.mark.parametrize("kw", [{"max_length": 5}, {"num_beams": 2}, {"pixel_value": None}])
def test_unsupported_generate_keywords_are_named(model, kw):
    """HF keywords this generate does not implement fell into the vision inputs and failed deep inside as
    "LlavaModel.embed() got an unexpected keyword argument"."""
    (name,) = kw
    with pytest.raises(TypeError, match=rf"generate\(\) got unsupported argument\(s\) {name}; it takes max_new_tokens"):
        model.generate(torch.tensor([[1, 17, 40, 5]]), max_new_tokens=2, **kw)


def test_nan_weights_are_an_error_not_an_empty_answer(model):
    """A NaN in the weights made greedy decoding pick the NaN's index and answer as if nothing were wrong."""
    w = model.lm_head.weight.detach().clone()
    try:
        with torch.no_grad():
            model.lm_head.weight[7, 0] = float("nan")
        with pytest.raises(ValueError, match=r"logits hold NaN or inf \(row\(s\) \[0\] of the batch\)"):
            generate(model, torch.tensor([[1, 17, 40, 5]]), max_new_tokens=2)
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(w)
