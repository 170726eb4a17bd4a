"""The decoder: Llama / Vicuna / Yi, Mistral (sliding window) and Qwen2 (qkv bias) from one set of modules.

Keys equal HF's LlamaModel / MistralModel / Qwen2Model: embed_tokens, layers.{i}.self_attn.{q,k,v,o}_proj,
layers.{i}.mlp.{gate,up,down}_proj, layers.{i}.input_layernorm, layers.{i}.post_attention_layernorm, norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from ..engine.kv_cache import KVCache
from .rope import Rotary, apply_rotary

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # transformers' NewGELU: the same tanh formula
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=c.o_bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> q (B, T, H*d), k and v (B, T, KV*d)."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        cos: torch.Tensor,
        sin: torch.Tensor,  # (B, 1, T, d), sin signed as Rotary returns it
        mask: torch.Tensor | None,  # (B, 1, T, S) bool, True = may attend; None = plain causal
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, d)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, KV, S, d)
        gqa = self.heads != self.kv_heads
        if t == 1 and gqa:
            # one new token: fold each KV group's query heads into the query-length axis, so attention runs as
            # plain (non-GQA) SDPA over (B, KV, heads/KV, d) queries without repeating K/V (~10x faster on CPU)
            out = F.scaled_dot_product_attention(q.view(b, self.kv_heads, -1, self.head_dim), k, v, attn_mask=mask)
            return self.o_proj(out.reshape(b, 1, -1))
        if mask is None:
            causal = t > 1  # a single new token sees every cached slot
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = ACTIVATIONS[c.hidden_act]

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> gate, up (B, T, I)."""
        return self.gate_proj(x), self.up_proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)
        return self.down_proj(self.act(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, layer) -> torch.Tensor:  # noqa: ANN001
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask_for(
    attention_mask: torch.Tensor | None, t: int, past: int, window: int | None, device: torch.device
) -> torch.Tensor | None:
    """The (B or 1, 1, T, S) boolean mask over cache slots, or None when plain causal attention is exact.

    Query i sits at slot past + i; it may attend key slot j when j <= past + i (causal), the key is a real token
    (attention_mask), and past + i - j < window (sliding window). A query always sees its own slot, so a padding
    row gets finite (unused) outputs instead of NaN.
    """
    s = past + t
    if t == 1 and attention_mask is not None and (window is None or s <= window):
        # one new token (decode) sees every real slot and its own: the mask as given, without reading it on the
        # host (SDPA with an all-True mask gives the same bits as without one)
        own = torch.ones_like(attention_mask[:, :1], dtype=torch.bool)
        return torch.cat([attention_mask[:, : s - 1].bool(), own], dim=1)[:, None, None]
    plain = attention_mask is None or bool(attention_mask.all())
    if plain and (window is None or s <= window) and (past == 0 or t == 1):
        return None
    qpos = torch.arange(past, s, device=device)[:, None]  # (T, 1)
    kpos = torch.arange(s, device=device)[None]  # (1, S)
    allowed = kpos <= qpos
    if window is not None:
        allowed &= qpos - kpos < window
    allowed = allowed[None, None]  # (1, 1, T, S)
    if not plain:
        allowed = allowed & attention_mask[:, None, None, :s].bool()
    return allowed | (kpos == qpos)[None, None]


class TextModel(nn.Module):
    """The decoder stack. forward: embeddings (B, T, D) + positions (B, T) -> final-normed hidden (B, T, D)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """attention_mask (B, S) marks real tokens (1) vs padding (0) over all S = past + T slots."""
        b, t, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if attention_mask is not None and attention_mask.shape[-1] < past + t:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} slots, expected {past + t}")
        windows = [self.config.layer_window(i) for i in range(len(self.layers))]
        masks = {w: attention_mask_for(attention_mask, t, past, w, inputs_embeds.device) for w in set(windows)}
        # every position is below the cache's slot count (left padding only lowers positions): no need to read them
        cos, sin = self.rotary(position_ids, inputs_embeds.dtype, cache.max_len if cache is not None else None)
        x = inputs_embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, masks[windows[i]], cache, i)
        if cache is not None:
            cache.advance(t)
        return self.norm(x)


class CausalLM(nn.Module):
    """A standalone decoder with its LM head (keys ``model.*`` and ``lm_head.weight`` as LlamaForCausalLM)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.model = TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits."""
        b, t = input_ids.shape
        if position_ids is None:
            past = cache.length if cache is not None else 0
            position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        return self.lm_head(self.model(self.model.embed_tokens(input_ids), position_ids, attention_mask, cache))
