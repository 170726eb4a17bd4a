"""A small multimodal batch for any tiny model (not a test module: no test functions)."""

from __future__ import annotations

import torch

from llavakit.processing.anyres import num_image_tokens, num_tiles


def image_batch(model, sizes=((56, 120), (90, 40))) -> dict:
    geom = model.geometry
    g = torch.Generator().manual_seed(0)
    ids, pv = [], []
    for i, (h, w) in enumerate(sizes):
        n = num_image_tokens(h, w, geom)
        ids.append([1, 4 + i, 5] + [120] * n + [6, 7])
        pv.append(torch.randn(num_tiles(h, w, geom), 3, geom.tile, geom.tile, generator=g))
    t = max(map(len, ids))
    input_ids = torch.tensor([[0] * (t - len(x)) + x for x in ids])
    mask = (torch.arange(t)[None] >= torch.tensor([t - len(x) for x in ids])[:, None]).long()
    batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}
    if geom.pinpoints is None:
        batch["pixel_values"] = torch.stack([p[0] for p in pv])
    else:
        m = max(len(p) for p in pv)
        batch["pixel_values"] = torch.stack([torch.cat([p, p.new_zeros(m - len(p), *p.shape[1:])]) for p in pv])
        batch["image_sizes"] = torch.tensor(sizes)
    return batch
