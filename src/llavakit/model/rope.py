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
    """Computes (cos, sin) for position ids, caching the frequencies per device (no registered buffers)."""

    def __init__(self, config: TextConfig) -> None:
        self.config = config
        self.dynamic = (config.rope_scaling or {}).get("rope_type") == "dynamic"
        self._freq: dict[torch.device, torch.Tensor] = {}

    def __call__(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin (B, 1, T, head_dim) in ``dtype``."""
        dev = position_ids.device
        if self.dynamic:
            freq = inv_freq(self.config, int(position_ids.max()) + 1, dev)
        else:
            freq = self._freq.get(dev)
            if freq is None:
                freq = self._freq[dev] = inv_freq(self.config, 0, dev)
        angles = position_ids[..., None].float() * freq  # (B, T, d/2)
        emb = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, d)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, d): rotate pairs (i, i + d/2) by the position angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
