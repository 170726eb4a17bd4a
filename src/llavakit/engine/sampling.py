"""Next-token selection: greedy, temperature, top-k, top-p, repetition penalty. Works on (B, V) logits."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

MIN_TEMPERATURE = 1e-5
SEEDS = (-(2**63), 2**64)  # the range torch.Generator.manual_seed takes


def is_whole(value: object) -> bool:
    """An integer (numpy integers included), not a bool: what token ids, counts and seeds must be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """How to pick each next token. ``temperature == 0`` (or ``do_sample=False``) means greedy, and so does any
    temperature below ``MIN_TEMPERATURE`` (dividing logits by it would overflow float32; vLLM does the same)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not is_whole(self.top_k):
            raise ValueError(f"top_k must be a whole number, got {self.top_k!r}")
        seed = self.seed
        if seed is not None and (not is_whole(seed) or not SEEDS[0] <= seed < SEEDS[1]):
            raise ValueError(f"seed must be a whole number from -2**63 to 2**64 - 1 (or None), got {self.seed!r}")
        self.top_k, self.seed = int(self.top_k), None if seed is None else int(seed)  # numpy integers -> int
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF/CTRL rule: logits of already-seen tokens divided by ``penalty`` if positive, multiplied if negative.

    logits (B, V); seen (B, V) bool. Returns float32 logits, as transformers' ``generate`` penalizes them: in
    bfloat16 the divided logit would be rounded, and a seen token could tie with or fall below one it beats.
    """
    if penalty == 1.0:
        return logits
    logits = logits.float()
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    big = torch.finfo(logits.dtype).max  # an extreme penalty must not turn a logit into +-inf (NaN probabilities)
    return torch.where(seen, scaled.clamp(-big, big), logits)


def greedy_pick(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) -> (B,) the index of each row's maximum, the first one on ties: ``argmax(-1)`` exactly.

    ``max(-1).indices`` gives the same indices (torch documents both as returning the first maximal index) and runs
    2.4x faster than ``argmax`` on a CPU in float32 and 4.6x in bfloat16 (2 threads, AVX-512: 151936 logits in
    78 vs 187 us and 103 vs 473 us), time that every greedy token pays.
    """
    return logits.max(-1).indices


def top_p_filter(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """(B, V) logits with the tokens outside the nucleus set to -inf, the same set as transformers'
    ``TopPLogitsWarper`` keeps, ties included.

    Tokens are sorted by ascending logit (the same ``sort`` call, so equal logits come out in the same order) and a
    token is dropped while the probability mass up to and including it is <= 1 - top_p; the ``min_tokens_to_keep``
    largest always stay (also when top_p is below float32's resolution).

    Worked example: logits [2, 1, 1, 1, 0], top_p 0.5 -> probabilities [.447, .164, .164, .164, .060]. Ascending
    (ties in index order): ids 4, 1, 2, 3, 0 with cumulative mass .060, .225, .389, .553, 1.0; the first three are
    <= 0.5 and go. Kept: ids 0 and 3, i.e. of the three tied tokens only the last one by index stays (counting
    the mass from the top instead, ids 0 and 1 were kept).
    """
    sorted_logits, order = logits.sort(dim=-1)  # (B, V) ascending
    drop_sorted = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    drop_sorted[:, -min_tokens_to_keep:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids."""
    if params.greedy:
        return greedy_pick(logits)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        logits = top_p_filter(logits, params.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
