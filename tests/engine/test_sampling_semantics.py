"""Repetition penalty as transformers applies it (float32 logits, left padding left out) and a chat session that
stays usable after a turn fails before its prefill."""

from __future__ import annotations

import pytest
import torch

from llavakit.engine.generate import generate, stream_tokens
from llavakit.engine.sampling import SamplingParams, apply_repetition_penalty, greedy_pick
from llavakit.engine.session import ChatSession
from tiny_models import hf_model, ours_from_hf


@pytest.fixture(scope="module")
def pair():
    hf = hf_model("llava", "llama", seed=3)
    return hf, ours_from_hf(hf)


def test_repetition_penalty_works_on_float32_logits_like_transformers():
    """bfloat16 logits are penalized in float32 (transformers' generate casts them first): 1.6796875 / 1.1 is
    1.52699 and still beats 1.5234375; rounded back to bfloat16 it tied and the first index won."""
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([[1.5234375, 1.6796875]], dtype=torch.bfloat16)
    seen = torch.tensor([[False, True]])
    ref = RepetitionPenaltyLogitsProcessor(1.1)(torch.tensor([[1]]), logits.float())
    ours = apply_repetition_penalty(logits, seen, 1.1)
    assert torch.equal(ours, ref)
    assert greedy_pick(ours).item() == ref.argmax(-1).item() == 1
    g = torch.Generator().manual_seed(0)
    rand = (torch.randn(16, 1000, generator=g) * 3).bfloat16()
    ids = torch.randint(0, 1000, (16, 300), generator=g)
    mask = torch.zeros(16, 1000, dtype=torch.bool).scatter(1, ids, True)
    for penalty in (1.1, 1.3, 0.8):
        ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, rand.float())
        assert torch.equal(greedy_pick(apply_repetition_penalty(rand, mask, penalty)), ref.argmax(-1))


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(map(len, rows))
    ids = torch.tensor([[pad] * (t - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (t - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _rows(model, ids, mask, params, n=12):
    out = [[] for _ in range(ids.shape[0])]
    for tok in stream_tokens(model, ids, attention_mask=mask, max_new_tokens=n, params=params, eos_token_id=[]):
        for r, v in enumerate(tok.tolist()):
            out[r].append(v)
    return out


def test_padding_ids_are_not_penalized_in_a_batch(pair):
    """A padded row of a batch answers as it does alone with a repetition penalty, and ``generate`` equals
    transformers' (whose penalty leaves left padding out): penalizing the padding id (often the EOS id) made
    batched answers run on."""
    hf, model = pair
    params = SamplingParams(repetition_penalty=3.0)
    short, long = [1, 17, 40, 5], [1, 60, 61, 62, 63, 64, 65, 66]
    alone = _rows(model, torch.tensor([short]), None, params)[0]
    pad = alone[0]  # pad with the token the short row picks first: penalizing it changes that row's answer
    ids, mask = _padded([short, long], pad)
    batch = _rows(model, ids, mask, params)
    assert batch[0] == alone
    assert batch[1] == _rows(model, torch.tensor([long]), None, params)[0]
    kw = dict(attention_mask=mask, max_new_tokens=12, repetition_penalty=3.0, eos_token_id=2, pad_token_id=0)
    ref = hf.generate(input_ids=ids, do_sample=False, **kw)
    ours = generate(model, ids, **kw)
    assert torch.equal(ours, ref)
    assert ours[0, ids.shape[1] :].tolist() == alone


def test_a_turn_that_fails_before_its_prefill_leaves_the_session_usable(pair):
    """A turn interrupted while its images are encoded (Ctrl-C) after the cache was cut back to the shared
    prefix: the session must not believe the cut slots are still there (the next turn raised "cannot truncate a
    cache of length 3 to 31") and later turns equal a fresh session's."""
    _, model = pair
    chat = ChatSession(model)
    first = [1] + list(range(10, 40))
    list(chat.generate(torch.tensor([first]), max_new_tokens=4))
    embed = model.embed

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    model.embed = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            list(chat.generate(torch.tensor([[1, 10, 11, 50, 51]]), max_new_tokens=4))
    finally:
        model.embed = embed
    follow_up = torch.tensor([first + [5, 6]])
    got = list(chat.generate(follow_up, max_new_tokens=4))
    assert chat.stats["reused_tokens"] <= 3
    assert got == list(ChatSession(model).generate(follow_up, max_new_tokens=4))


def test_batch_equals_reply_with_a_repetition_penalty_when_padding_is_the_eos_id(tmp_path):
    """A tokenizer without a pad token pads with its EOS id: the penalty on it made a padded row of ``batch`` run on
    to the token limit where ``reply`` stopped."""
    import json

    import llavakit
    from llavakit.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "tiny", "llava_onevision", seed=1)
    config = json.loads((path / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    pipe = llavakit.load(path)
    convs = [_msg("first?", (80, 50), (200, 40, 40)), _msg("second question is longer?", (40, 160), (10, 200, 10))]
    batch = pipe.batch(convs, max_new_tokens=20, repetition_penalty=2.0)
    replies = []
    for c in convs:
        pipe.reset()
        replies.append(pipe.reply(c, max_new_tokens=20, repetition_penalty=2.0))
    assert replies[0].finish_reason == "stop"  # it ends on the EOS id the padding uses
    assert [(a.text, a.finish_reason, a.completion_tokens) for a in batch] == [
        (a.text, a.finish_reason, a.completion_tokens) for a in replies
    ]


def _msg(text: str, size: tuple[int, int], colour: tuple[int, int, int]) -> list[dict]:
    from PIL import Image

    image = {"type": "image", "image": Image.new("RGB", size, colour)}
    return [{"role": "user", "content": [image, {"type": "text", "text": text}]}]


def test_eos_token_id_as_a_tensor_or_numpy_integer(pair):
    """transformers' generate takes eos_token_id as an int, a list, a tensor (0-d too) or a numpy integer; a 0-d
    tensor or numpy integer used to end in "iteration over a 0-d tensor" / "'numpy.int64' object is not iterable"."""
    import numpy as np

    hf, model = pair
    ids = torch.tensor([[1, 5, 6, 7]])
    plain = generate(model, ids, max_new_tokens=6)
    end = int(plain[0, 5])  # the second new token
    want = hf.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=end, pad_token_id=0)
    assert want.shape[1] == 6
    for eos in (np.int64(end), torch.tensor(end), torch.tensor([end, 3]), [np.int32(end)]):
        assert torch.equal(generate(model, ids, max_new_tokens=6, eos_token_id=eos), want)


def test_generate_samples_with_transformers_default_top_k(tmp_path):
    """``model.generate(do_sample=True)`` cuts to the 50 likeliest tokens, as transformers' GenerationConfig does;
    ``top_k=0`` turns the cut off. (It sampled from the whole 128-token vocabulary before.)"""
    from llavakit.model.llava import LlavaModel
    from llavakit.tiny import write_tiny_checkpoint

    model = LlavaModel.from_pretrained(write_tiny_checkpoint(tmp_path / "m", "llava", seed=3)).eval()
    ids = torch.tensor([[1, 5, 9, 13]])
    kw = dict(do_sample=True, temperature=3.0, max_new_tokens=12)  # a hot distribution: the cut shows
    for seed in range(4):
        assert torch.equal(model.generate(ids, seed=seed, **kw), model.generate(ids, seed=seed, top_k=50, **kw))
    assert any(
        not torch.equal(model.generate(ids, seed=seed, **kw), model.generate(ids, seed=seed, top_k=0, **kw))
        for seed in range(4)
    )
