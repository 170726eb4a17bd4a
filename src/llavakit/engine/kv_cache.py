"""A preallocated key/value cache: one (B, kv_heads, max_len, head_dim) buffer per layer, filled left to right."""

from __future__ import annotations

import torch

from ..config import TextConfig


class KVCache:
    """Keys (after RoPE) and values of every layer for slots [0, length).

    The model writes a call's T new slots with ``update`` in each layer, then calls ``advance(T)`` once.
    Slots are shared by the rows of a batch; left padding is expressed by the attention mask over slots.
    """

    def __init__(
        self,
        config: TextConfig,
        batch_size: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.batch_size = batch_size
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, kv_heads, T, d) at slots [length, length + T); return views over [0, length + T)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"{end} tokens do not fit the KV cache of {self.max_len} slots (prompt + generated so far); "
                "start a new conversation or allow more tokens when creating the cache"
            )
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self.length += t

    def truncate(self, n: int) -> None:
        """Forget every slot from ``n`` on (keep a conversation's shared prefix)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length = n

    def reset(self) -> None:
        self.length = 0

    def row(self, i: int) -> KVCache:
        """A cache of batch size 1 over row ``i``'s buffers (views: what a step writes lands in this cache's row i),
        at this cache's length; its ``advance`` does not move this one."""
        one = object.__new__(KVCache)
        one.k, one.v = [k[i : i + 1] for k in self.k], [v[i : i + 1] for v in self.v]
        one.max_len, one.batch_size, one.length = self.max_len, 1, self.length
        return one
