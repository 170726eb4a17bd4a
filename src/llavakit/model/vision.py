"""Vision towers: CLIP ViT (CLS token, pre-LN, quick_gelu) and SigLIP ViT (no CLS, gelu tanh).

Keys equal HF's CLIPVisionModel / SiglipVisionModel files: vision_model.embeddings.*, vision_model.pre_layrnorm (CLIP,
HF's spelling), vision_model.encoder.layers.{i}.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2,
layer_norm2}, vision_model.post_layernorm (stored in checkpoints; LLaVA reads hidden states before it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class Embeddings(nn.Module):
    def __init__(self, c: VisionConfig) -> None:
        super().__init__()
        self.has_cls = c.has_cls
        n = c.grid * c.grid + (1 if c.has_cls else 0)
        self.patch_embedding = nn.Conv2d(
            c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size, bias=not c.has_cls
        )
        if c.has_cls:
            self.class_embedding = nn.Parameter(torch.zeros(c.hidden_size))
        self.position_embedding = nn.Embedding(n, c.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (N, g*g, D)
        if self.has_cls:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)  # (N, 1 + g*g, D)
        return x + self.position_embedding.weight.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: VisionConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        d = c.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (p(x).view(n, t, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, d/H)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    def __init__(self, c: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, c: VisionConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MLP(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_hidden_layers))


class VisionTransformer(nn.Module):
    def __init__(self, c: VisionConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(c)
        if c.has_cls:
            self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.encoder = Encoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class VisionTower(nn.Module):
    """pixel_values (N, C, S, S) -> hidden states of the requested layers, concatenated: (N, L, D * len(layers)).

    Layer indices follow HF's ``hidden_states`` list: 0 is the embedding output (after CLIP's pre-LN), i the
    output of encoder layer i, negatives count from the end of that list of num_layers + 1 entries. Only the
    layers up to the deepest one asked for are run: LLaVA reads -2, so the last layer is skipped.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config)

    def forward(self, pixel_values: torch.Tensor, layers: list[int]) -> torch.Tensor:
        c = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != c.num_channels:
            raise ValueError(f"pixel_values must be (N, {c.num_channels}, H, W), got {tuple(pixel_values.shape)}")
        if pixel_values.shape[-2:] != (c.image_size, c.image_size):
            raise ValueError(
                f"vision tower takes {c.image_size}x{c.image_size} tiles, got {tuple(pixel_values.shape[-2:])}; "
                "preprocess images with this model's processor"
            )
        n_states = c.num_hidden_layers + 1
        idx = [i + n_states if i < 0 else i for i in layers]
        if not layers or any(not 0 <= i < n_states for i in idx):
            raise ValueError(f"vision feature layers {layers} out of range for {c.num_hidden_layers} layers")
        vm = self.vision_model
        x = vm.embeddings(pixel_values.to(vm.embeddings.patch_embedding.weight.dtype))
        if c.has_cls:
            x = vm.pre_layrnorm(x)
        states = {0: x}
        for i in range(max(idx)):
            x = vm.encoder.layers[i](x)
            states[i + 1] = x
        return torch.cat([states[i] for i in idx], dim=-1) if len(idx) > 1 else states[idx[0]]
