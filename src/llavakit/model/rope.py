"""Rotary position embeddings with the scaling types found in released configs (linear, dynamic NTK, llama3)."""

from __future__ import annotations

import math

import torch

from ..config import TextConfig


def inv_freq(config: TextConfig, seq_len: int, device: torch.device) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) float32 for a call whose largest position is ``seq_len - 1``.

    - default:  theta^(-2i/d)
    - linear:   default / factor (positions are stretched)
    - dynamic:  NTK: beyond the trained length L the base grows to
                theta * (factor * n / L - (factor - 1))^(d / (d - 2)) for n = seq_len; unchanged up to L
    - llama3:   wavelengths longer than L / low_freq_factor are divided by factor, shorter than
                L / high_freq_factor kept, and the band between interpolated smoothly (L: original context)
    """
    d = config.head_dim
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    base = config.rope_theta
    if kind == "dynamic":
        limit = config.max_position_embeddings
        n = max(seq_len, limit)
        factor = float(scaling["factor"])
        base = base * ((factor * n / limit) - (factor - 1)) ** (d / (d - 2))
    exponents = torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d
    freq = 1.0 / (base**exponents)
    if kind == "linear":
        freq = freq / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > old / low, freq / factor, freq)
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        freq = torch.where(medium, blended, scaled)
    elif kind not in ("default", "dynamic"):
        raise ValueError(f"unsupported rope_type {kind!r}; llavakit supports default, linear, dynamic, llama3")
    return freq


class Rotary:
    """(cos, sin) for position ids, looked up in a table computed once per device and dtype (no registered buffers).

    The table holds positions [0, n) with n a power of two (at least 1024), grown when a call needs more; a decode
    step then costs two row lookups instead of recomputing angles, cos and sin. The values equal a direct
    computation bit for bit (same float32 angle, same cos/sin). Dynamic NTK scaling, whose frequencies depend on
    the call's length, computes directly. ``sin`` comes with the sign of ``apply_rotary``'s rotation folded in:
    [-sin, +sin] over the two halves of head_dim.

    Example: head_dim 4, default scaling, theta 10000 -> frequencies [1, 0.01]; position 3 -> angles [3, 0.03, 3, 0.03],
    cos [cos 3, cos 0.03, cos 3, cos 0.03], sin [-sin 3, -sin 0.03, sin 3, sin 0.03].
    """

    MIN_TABLE = 1024

    def __init__(self, config: TextConfig) -> None:
        self.config = config
        self.dynamic = (config.rope_scaling or {}).get("rope_type") == "dynamic"
        self._freq: dict[torch.device, torch.Tensor] = {}
        self._table: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def freq(self, device: torch.device) -> torch.Tensor:
        freq = self._freq.get(device)
        if freq is None:
            freq = self._freq[device] = inv_freq(self.config, 0, device)
        return freq

    def table(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin (N, head_dim) in ``dtype`` for positions [0, N), N >= n."""
        key = (device, dtype)
        cached = self._table.get(key)
        if cached is None or cached[0].shape[0] < n:
            size = max(self.MIN_TABLE, 1 << max(n - 1, 1).bit_length())
            positions = torch.arange(size, device=device)
            cached = self._table[key] = _cos_sin(positions, self.freq(device), dtype)
        return cached

    def __call__(
        self, position_ids: torch.Tensor, dtype: torch.dtype, limit: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, signed sin (B, 1, T, head_dim) in ``dtype``.

        ``limit``: a bound every position is below (e.g. the KV cache's slot count), so the positions need not be
        read (no host sync, the same table for every decode step); None reads their maximum.
        """
        dev = position_ids.device
        if self.dynamic:
            freq = inv_freq(self.config, int(position_ids.max()) + 1, dev)
            cos, sin = _cos_sin(position_ids, freq, dtype)
            return cos[:, None], sin[:, None]
        n = limit if limit is not None else int(position_ids.max()) + 1
        cos, sin = self.table(n, dev, dtype)
        return cos[position_ids][:, None], sin[position_ids][:, None]


def _cos_sin(positions: torch.Tensor, freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (...) -> cos, signed sin (..., head_dim) in ``dtype`` (computed in float32)."""
    angles = positions[..., None].float() * freq  # (..., d/2)
    emb = torch.cat([angles, angles], dim=-1)  # (..., d)
    sin = emb.sin()
    half = freq.shape[0]
    sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return emb.cos().to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, d): rotate pairs (i, i + d/2) by the position angle; ``sin`` signed as ``Rotary`` returns it.

    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin): the halves swapped (a roll by d/2) times [-sin, +sin].
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
