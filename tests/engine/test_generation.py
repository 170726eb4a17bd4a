"""Engine invariants: batched == unbatched, multi-turn reuse == fresh prefill, sampling reproducible, errors."""

from __future__ import annotations

import pytest
import torch

from llavakit.engine.generate import stream_tokens
from llavakit.engine.sampling import SamplingParams
from llavakit.engine.session import ChatSession
from llavakit.processing.anyres import num_image_tokens, num_tiles
from tiny_models import IMAGE_TOKEN, hf_model, ours_from_hf


@pytest.fixture(scope="module")
def model():
    return ours_from_hf(hf_model("llava_next", "qwen2", seed=3))


def _request(model, size, seed, words=4):
    geom = model.geometry
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(3, 100, (words,), generator=g).tolist()
    ids += [IMAGE_TOKEN] * num_image_tokens(*size, geom) + torch.randint(3, 100, (3,), generator=g).tolist()
    px = torch.randn(1, num_tiles(*size, geom), 3, geom.tile, geom.tile, generator=g)
    return ids, px


def _run(model, ids, px, size, n=12, params=None):
    out = []
    for tok in stream_tokens(
        model, torch.tensor([ids]), max_new_tokens=n, params=params, pixel_values=px, image_sizes=torch.tensor([size])
    ):
        if tok[0] < 0:
            break
        out.append(int(tok[0]))
    return out


def test_batched_equals_unbatched(model):
    sizes = [(56, 56), (30, 150), (170, 60)]
    reqs = [_request(model, s, i, words=2 + 3 * i) for i, s in enumerate(sizes)]
    single = [_run(model, ids, px, s) for (ids, px), s in zip(reqs, sizes)]
    t = max(len(ids) for ids, _ in reqs)
    ids = torch.tensor([[0] * (t - len(x)) + x for x, _ in reqs])
    mask = (ids != 0).long()
    tiles = max(px.shape[1] for _, px in reqs)
    pv = torch.cat([torch.cat([px, px.new_zeros(1, tiles - px.shape[1], *px.shape[2:])], 1) for _, px in reqs])
    rows = [[] for _ in reqs]
    for tok in stream_tokens(
        model, ids, attention_mask=mask, max_new_tokens=12, pixel_values=pv, image_sizes=torch.tensor(sizes)
    ):
        for r, v in enumerate(tok.tolist()):
            if v >= 0:
                rows[r].append(v)
    assert rows == single
    assert len({len(r) for r in rows}) >= 1 and all(rows)


def test_multi_turn_reuses_cache_and_equals_fresh_prefill(model):
    size = (40, 160)
    ids, px = _request(model, size, 7)
    chat = ChatSession(model)
    answer = list(
        chat.generate(torch.tensor([ids]), max_new_tokens=6, pixel_values=px, image_sizes=torch.tensor([size]))
    )
    assert chat.stats["encoded_images"] == 1
    turn2 = ids + answer + [11, 12, 13, 14]
    follow = list(
        chat.generate(torch.tensor([turn2]), max_new_tokens=8, pixel_values=px, image_sizes=torch.tensor([size]))
    )
    assert chat.stats["encoded_images"] == 0  # the image was not encoded again
    assert chat.stats["reused_tokens"] == len(ids) + len(answer) - 1  # only the new question was prefilled
    assert follow == _run(model, turn2, px, size, n=8)


def test_new_pixels_with_same_size_are_not_reused(model):
    size = (56, 56)
    ids, px = _request(model, size, 1)
    chat = ChatSession(model)
    list(chat.generate(torch.tensor([ids]), max_new_tokens=3, pixel_values=px, image_sizes=torch.tensor([size])))
    other = torch.randn_like(px)
    again = list(
        chat.generate(torch.tensor([ids]), max_new_tokens=5, pixel_values=other, image_sizes=torch.tensor([size]))
    )
    assert chat.stats["encoded_images"] == 1
    assert again == _run(model, ids, other, size, n=5)


def test_a_larger_later_image_keeps_the_first_one_reused(model):
    """Turn 2 adds an image with more tiles: the batch pads the first image's views with zeros, which must not
    make it look like new pixels (it was encoded again and the whole prompt prefilled)."""
    small, large = (56, 56), (40, 160)
    ids, px = _request(model, small, 2)
    chat = ChatSession(model)
    answer = list(
        chat.generate(torch.tensor([ids]), max_new_tokens=4, pixel_values=px, image_sizes=torch.tensor([small]))
    )
    ids2, px2 = _request(model, large, 5)
    turn2 = ids + answer + ids2[1:]
    tiles = px2.shape[1]
    both = torch.cat([torch.cat([px, px.new_zeros(1, tiles - px.shape[1], *px.shape[2:])], 1), px2])
    sizes = torch.tensor([small, large])
    follow = list(chat.generate(torch.tensor([turn2]), max_new_tokens=6, pixel_values=both, image_sizes=sizes))
    assert chat.stats["encoded_images"] == 1
    assert chat.stats["reused_tokens"] == len(ids) + len(answer) - 1
    fresh = ChatSession(model)
    assert follow == list(fresh.generate(torch.tensor([turn2]), max_new_tokens=6, pixel_values=both, image_sizes=sizes))


def test_a_second_answer_while_one_is_open_is_refused(model):
    """Two generators on one session share its cache: the second is refused until the first is done."""
    size = (56, 56)
    ids, px = _request(model, size, 1)
    chat = ChatSession(model)
    first = chat.generate(torch.tensor([ids]), max_new_tokens=5, pixel_values=px, image_sizes=torch.tensor([size]))
    next(first)
    with pytest.raises(RuntimeError, match="still generating an earlier answer"):
        next(chat.generate(torch.tensor([ids]), max_new_tokens=3, pixel_values=px, image_sizes=torch.tensor([size])))
    first.close()
    again = list(
        chat.generate(torch.tensor([ids]), max_new_tokens=5, pixel_values=px, image_sizes=torch.tensor([size]))
    )
    assert again == _run(model, ids, px, size, n=5)


def test_sampling_is_reproducible_with_a_seed(model):
    ids, px = _request(model, (56, 56), 2)
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=123)
    a = _run(model, ids, px, (56, 56), n=10, params=p)
    b = _run(model, ids, px, (56, 56), n=10, params=p)
    c = _run(model, ids, px, (56, 56), n=10, params=SamplingParams(temperature=1.0, seed=124))
    assert a == b and a != c


def test_prompt_longer_than_context_is_refused(model):
    ids = torch.ones(1, model.config.text.max_position_embeddings, dtype=torch.long)
    with pytest.raises(ValueError, match=r"prompt of 4096 tokens \+ max_new_tokens 1 exceeds .* 4096"):
        next(stream_tokens(model, ids, max_new_tokens=1))


@pytest.mark.parametrize("bad", [0, -3])
def test_max_new_tokens_must_be_positive(model, bad):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        next(stream_tokens(model, torch.ones(1, 4, dtype=torch.long), max_new_tokens=bad))


def test_sampling_survives_extreme_values():
    """Values at the edge of float32 pick a token instead of NaN probabilities: a temperature below 1e-5 is greedy,
    a top_p below float32's resolution keeps the top token, an extreme repetition penalty stays finite."""
    from llavakit.engine.sampling import apply_repetition_penalty, sample

    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, -1.0, 5.0, 0.5]])
    assert sample(logits, SamplingParams(temperature=1e-300), g).item() == 2
    assert sample(logits, SamplingParams(temperature=1.0, top_p=1e-300), g).item() == 2
    seen = torch.tensor([[True, True, False, False]])
    for penalty in (1e-300, 1e300):
        out = apply_repetition_penalty(logits, seen, penalty)
        assert torch.isfinite(out).all(), out
        assert 0 <= sample(out, SamplingParams(temperature=1.0), g).item() < 4
    assert apply_repetition_penalty(logits, seen, 1e-300)[0].argmax().item() == 0  # seen, and now the largest


@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
def test_sampling_params_must_be_finite(field):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        SamplingParams(**{field: float("nan")})


def test_context_length_follows_rope_scaling():
    from llavakit.config import TextConfig

    assert TextConfig(max_position_embeddings=4096).context_length == 4096
    linear = TextConfig(max_position_embeddings=4096, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert linear.context_length == 8192
    llama31 = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}
    assert TextConfig(max_position_embeddings=131072, rope_scaling=llama31).context_length == 131072


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_pick_is_argmax_ties_included(dtype):
    from llavakit.engine.sampling import greedy_pick

    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 4, (64, 1000), generator=g).to(dtype)  # many ties for the maximum in every row
    logits[5, 17] = float("nan")  # NaN counts as the maximum for both
    assert torch.equal(greedy_pick(logits), logits.argmax(-1))
    big = torch.randn(3, 151936, generator=g).to(dtype)
    assert torch.equal(greedy_pick(big), big.argmax(-1))
