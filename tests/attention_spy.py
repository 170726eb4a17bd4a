"""What each decoder layer's attention was given and the softmax SDPA applied, for tests of the recomputed
attention of llavakit.train.place."""

import torch
import torch.nn.functional as F


def spy_attention(model, monkeypatch) -> tuple[list[tuple], list[torch.Tensor]]:  # noqa: ANN001
    """(captured, probs), filled by the model's next forward: per layer (attention module, normed input, cos, sin,
    mask) as the place passes capture it, and the attention probabilities (B, H, T, T) SDPA computed."""
    captured: list[tuple] = []
    probs: list[torch.Tensor] = []
    for layer in model.model.language_model.layers:
        layer.self_attn.register_forward_pre_hook(lambda m, a: captured.append((m, a[0], a[1], a[2], a[3])))
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):  # noqa: ANN001, ANN202
        k2 = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        s = (q @ k2.transpose(-1, -2)) / q.shape[-1] ** 0.5
        probs.append(s.masked_fill(~attn_mask, float("-inf")).softmax(-1))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return captured, probs
