"""Stage 0b: a small CLIP ViT, trained with the CLIP loss against a small text encoder and/or with patch labels.

The views it trains on (whole scenes, AnyRes tiles, text crops) are built in `views`. Every view also carries
patch labels (`patch_labels`): the kind and colour of the shape each patch shows and the word (or digit) written on
it. The loss is ``contrastive_weight`` x CLIP +
``patch_weight`` x patch labels; the tiny recipe uses the patch labels only (the CLIP loss never taught shape).
Only the vision tower is kept; it is written as an HF ``CLIPVisionModel`` directory (loads in our VisionTower and
in transformers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...config import VisionConfig
from ...model.vision import VisionTower
from ...processing.image import CLIP_MEAN, CLIP_STD
from ...processing.tokenizer import Tokenizer
from .patch_labels import IGNORE, NO_COLOUR, NO_KIND, NO_TEXT
from .steps import run_steps
from .views import check_reading_args


class TextEncoder(nn.Module):
    """Token ids (B, T) -> one embedding per text (B, D): a small pre-LN transformer, mean-pooled over tokens."""

    def __init__(self, vocab: int, dim: int = 128, layers: int = 2, heads: int = 4, max_len: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.max_len = max_len

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, T, D)
        x = self.encoder(x, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.norm((x * m).sum(1) / m.sum(1).clamp(min=1))  # (B, D)


class CLIP(nn.Module):
    """The vision tower and the text encoder, projected to a shared space (the contrastive loss), and a linear head
    that names the shape each layer -2 patch feature shows (the patch loss; see ``patch_labels``)."""

    def __init__(
        self,
        vision: VisionConfig,
        vocab: int,
        text_dim: int = 128,
        embed_dim: int = 128,
        pool: str = "cls",
        contrastive_weight: float = 1.0,
        patch_weight: float = 0.0,
        text_labels: bool = True,
        centre_labels: bool = False,
        position_labels: bool = False,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "patch_mean"):
            raise ValueError(f"clip.pool must be 'cls' or 'patch_mean', got {pool!r}")
        check_weights(contrastive_weight, patch_weight)
        self.pool = pool
        self.contrastive_weight, self.patch_weight = contrastive_weight, patch_weight
        # which rows of the patch labels are learned (`patch_labels`): kind and colour, the text unless text_labels
        # is off, a shape's centre if centre_labels is on, its side of the scene if position_labels is on
        rows = [0, 1] + ([2] if text_labels else []) + ([3] if centre_labels else [])
        self.label_rows = rows + ([4, 5] if position_labels else [])
        self.label_sizes = [[NO_KIND + 1, NO_COLOUR + 1, NO_TEXT + 1, 2, 2, 2][r] for r in self.label_rows]
        self.tower = VisionTower(vision)
        self.text = TextEncoder(vocab, text_dim)
        self.visual_projection = nn.Linear(vision.hidden_size, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.patch_head = nn.Linear(vision.hidden_size, sum(self.label_sizes))  # kind, colour (, text) logits

    def states(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass of the tower: the layer -2 states (B, 1 + g*g, Dv) and, for CLS pooling, the last layer's."""
        if self.pool == "patch_mean":
            return self.tower(pixels, [-2]), None
        h2, last = self.tower(pixels, [-2, -1]).chunk(2, dim=-1)  # each (B, 1 + g*g, Dv)
        return h2, last

    def embed(self, h2: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
        """(B, E) image embedding from `states`."""
        if self.pool == "patch_mean":  # the mean of the patch features LLaVA reads (CLS dropped)
            return self.visual_projection(self.tower.vision_model.post_layernorm(h2[:, 1:].mean(1)))
        assert last is not None
        return self.visual_projection(self.tower.vision_model.post_layernorm(last[:, 0]))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(*self.states(pixels))

    def loss(
        self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """contrastive_weight x symmetric InfoNCE over the batch (image i belongs with text i) + patch_weight x
        cross-entropy of each patch's kind, colour, (with ``text_labels``) text, (with ``centre_labels``) shape
        centre and (with ``position_labels``) side of the scene against ``labels`` (B, 6, g*g)."""
        h2, last = self.states(pixels)  # (B, 1 + g*g, Dv)
        total = h2.new_zeros(())
        if self.contrastive_weight > 0:
            img = F.normalize(self.embed(h2, last), dim=-1)  # (B, E)
            txt = F.normalize(self.text_projection(self.text(ids, mask)), dim=-1)  # (B, E)
            logits = self.logit_scale.clamp(max=math.log(100)).exp() * img @ txt.T  # (B, B)
            target = torch.arange(len(img))
            info_nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            total = total + self.contrastive_weight * info_nce
        if self.patch_weight > 0:
            if labels is None:
                raise ValueError("clip.patch_weight > 0 needs patch labels (build_pairs returns them)")
            heads = self.patch_head(h2[:, 1:]).split(self.label_sizes, dim=-1)  # each (B, g*g, classes + 1)
            ce = [
                (_mean_ce if r >= 4 else F.cross_entropy)(h.flatten(0, 1), labels[:, r].flatten())
                for r, h in zip(self.label_rows, heads)
            ]  # rows 4-5 (sides) are mostly IGNORE: a batch may have none
            total = total + self.patch_weight * sum(ce)
        return total


def _mean_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the targets that are not ``IGNORE``; 0 (not NaN) when a batch has none."""
    total = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp(min=1)


@dataclass
class ClipTrainConfig:
    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.05
    text_dim: int = 128
    pool: str = "cls"  # image embedding: the CLS token of the last layer, or "patch_mean" of layer -2's patches
    contrastive_weight: float = 1.0  # the CLIP loss
    patch_weight: float = 0.0  # the patch loss: each layer -2 patch feature names the shape it shows
    text_labels: bool = True  # ... and the word or digit written on it
    centre_labels: bool = False  # ... and whether a shape's centre lies in it (one mark per shape, for counting)
    position_labels: bool = False  # ... and, in the full view, which side of the scene that shape is on
    text_scenes: int = 0  # extra scenes that all carry text, seen as their full view and text crops (`reading_pairs`)
    text_crops: int = 2  # text crops per extra scene
    text_seed: int = 5  # their scenes' seed (training seeds: below EVAL_SEED_BASE)
    max_seconds: float | None = None  # stop early (and say so) when the time budget is spent
    seed: int = 0


def check_weights(contrastive_weight: float, patch_weight: float) -> None:
    if contrastive_weight <= 0 and patch_weight <= 0:
        raise ValueError("clip.contrastive_weight and clip.patch_weight are both 0: nothing would be trained")


def check_clip_config(cfg: ClipTrainConfig) -> None:
    """The errors `CLIP` and `reading_pairs` would raise, raised before any view is rendered."""
    check_weights(cfg.contrastive_weight, cfg.patch_weight)
    if cfg.text_scenes:
        check_reading_args(cfg.text_scenes, cfg.text_crops, cfg.text_seed)


def _encode(tokenizer: Tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer.encode(t)[:max_len] for t in texts]
    t = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask  # (N, T)


def train_clip(
    views: torch.Tensor,
    texts: list[str],
    vision: VisionConfig,
    tokenizer: Tokenizer,
    cfg: ClipTrainConfig,
    log: Callable[[str], None] = print,
    labels: torch.Tensor | None = None,
) -> tuple[CLIP, list[float]]:
    """Train on (view, text) pairs (and their patch labels (N, 3, G*G) when ``cfg.patch_weight`` > 0); returns
    the model and the loss of every step."""
    torch.manual_seed(cfg.seed)
    model = CLIP(
        vision,
        tokenizer.vocab_size,
        cfg.text_dim,
        pool=cfg.pool,
        contrastive_weight=cfg.contrastive_weight,
        patch_weight=cfg.patch_weight,
        text_labels=cfg.text_labels,
        centre_labels=cfg.centre_labels,
        position_labels=cfg.position_labels,
    )
    ids, mask = _encode(tokenizer, texts, model.text.max_len)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "pos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}], lr=cfg.lr
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    n, bs = len(views), min(cfg.batch_size, len(views))

    def step_loss() -> torch.Tensor:
        idx = torch.randperm(n, generator=gen)[:bs]
        ids_b, mask_b = ids[idx], mask[idx]
        keep = mask_b.any(0)
        return model.loss(views[idx], ids_b[:, keep], mask_b[:, keep], None if labels is None else labels[idx])

    return model, run_steps(model, opt, cfg, step_loss, "clip", log)


def save_vision_tower(tower: VisionTower, out: str | Path) -> Path:
    """An HF ``CLIPVisionModel`` directory: config.json + model.safetensors (keys ``vision_model.*``)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["CLIPVisionModel"], **tower.config.to_hf(), "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in tower.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tile = tower.config.image_size
    pre = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": tile},
        "do_center_crop": True,
        "crop_size": {"height": tile, "width": tile},
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "resample": 3,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return out


def load_vision_tower(path: str | Path) -> VisionTower:
    """Read a directory written by `save_vision_tower` (or any HF CLIPVisionModel with safetensors weights)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = VisionConfig.from_hf(json.loads((path / "config.json").read_text()))
    tower = VisionTower(config)
    tower.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return tower.eval()
