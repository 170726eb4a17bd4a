"""top-p keeps exactly the tokens transformers' ``TopPLogitsWarper`` keeps, also when logits tie at the cut-off."""

from __future__ import annotations

import pytest
import torch

from llavakit.engine.sampling import SamplingParams, sample, top_p_filter

TOP_PS = (1e-300, 0.05, 0.1, 0.25, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.999)


def _reference_kept(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    from transformers import TopPLogitsWarper

    return TopPLogitsWarper(top_p)(None, logits.clone()) > float("-inf")


@pytest.mark.parametrize(
    "row",
    [[2.0, 1, 1, 1, 0], [1.0, 1, 1, 1], [0.0, 0, 0, 1, 1, 1, 2], [3.0, 1, 1, 0, 0], [0.5, 2, 0.5, 2, 0.5, -1]],
)
def test_tied_logits_keep_the_same_set_as_transformers(row: list[float]) -> None:
    logits = torch.tensor([row])
    for top_p in TOP_PS:
        kept = top_p_filter(logits, top_p) > float("-inf")
        assert torch.equal(kept, _reference_kept(logits, top_p)), (row, top_p)


def test_many_ties_in_a_batch_keep_the_same_set_as_transformers() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 4, (64, 200), generator=g).float() / 2  # 13 distinct values: ties everywhere
    logits[::3] = torch.randn(22, 200, generator=g) * 2  # and rows without ties
    for top_p in TOP_PS:
        kept = top_p_filter(logits, top_p) > float("-inf")
        assert torch.equal(kept, _reference_kept(logits, top_p)), top_p


def test_sampling_draws_only_from_the_kept_tied_token() -> None:
    """Four equal logits, top_p 0.2: transformers keeps one of them (the last by index), and so does ``sample``."""
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0, top_p=0.2)
    draws = {sample(torch.zeros(1, 4), params, g).item() for _ in range(50)}
    assert draws == {int(_reference_kept(torch.zeros(1, 4), 0.2).nonzero()[0, 1])} == {3}
