"""Stage 0b: a small CLIP ViT, trained with the CLIP loss against a small text encoder and/or with patch labels.

Image views are what the LLaVA model will later see: the whole scene padded to a square tile (its caption as the
text); each AnyRes tile of the scene, captioned with what lies in it ("a small red star and a large blue circle"),
so that the tower's patch features describe local content; and, for scenes with a word or number, a tile-sized
crop around the text at the scale AnyRes would give it ("the word 'apple'"), so the tower learns to read at the
resolution of an AnyRes tile. Every view also carries patch labels (`patch_labels`): the kind and colour of the
shape each patch shows and the word (or digit) written on it. The loss is ``contrastive_weight`` x CLIP +
``patch_weight`` x patch labels; the tiny recipe uses the patch labels only (the CLIP loss never taught shape).
Only the vision tower is kept; it is written as an HF ``CLIPVisionModel`` directory (loads in our VisionTower and
in transformers).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...config import VisionConfig
from ...data.synth import EVAL_SEED_BASE, Scene, caption, render_scene
from ...data.synth_questions import listing
from ...data.synth_scene import generate_scene, scene_seed
from ...model.vision import VisionTower
from ...processing.anyres import select_best_resolution
from ...processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    ImageConfig,
    anyres_views,
    expand_to_square,
    fit_size,
    normalize,
    rescale,
)
from ...processing.tokenizer import Tokenizer
from .patch_labels import IGNORE, NO_COLOUR, NO_KIND, NO_TEXT, patch_labels
from .steps import run_steps


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
        if contrastive_weight <= 0 and patch_weight <= 0:
            raise ValueError("clip.contrastive_weight and clip.patch_weight are both 0: nothing would be trained")
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


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(normalize(rescale(img), CLIP_MEAN, CLIP_STD))  # (3, S, S)


@dataclass
class View:
    """One training image of the tower and its text. A scene point (x, y) lies at (x * sx + ox, y * sy + oy) in
    ``pixels`` (``scale`` = (sx, sy), ``offset`` = (ox, oy)), which is what `patch_labels` needs."""

    pixels: torch.Tensor  # (3, S, S) normalised
    text: str
    scale: tuple[float, float]
    offset: tuple[float, float]


def full_view(img: Image.Image, scene: Scene, tile: int) -> View:
    """The whole image, padded to a square with the mean colour (LLaVA-1.5 ``pad``) and resized to the tile."""
    square = expand_to_square(img, ImageConfig(tile=tile).pad_colour)
    side = max(scene.width, scene.height)
    s = tile / side
    offset = ((side - scene.width) // 2 * s, (side - scene.height) // 2 * s)
    return View(_tensor(square.resize((tile, tile), Image.Resampling.BICUBIC)), caption(scene), (s, s), offset)


def text_view(img: Image.Image, scene: Scene, tile: int, pinpoints: list[list[int]], rng: random.Random) -> View:
    """A tile-sized crop around the scene's text, the image first scaled as AnyRes scales it to its pinpoint.

    Example: a 256x256 scene with pinpoints up to 192x192 is scaled by 0.75; a word whose ink box is
    (40, 100, 90, 112) lands at (30, 75, 67, 84) and the 96x96 crop is placed at random so that it contains it."""
    assert scene.text is not None
    h, w = scene.height, scene.width
    ph, pw = select_best_resolution(h, w, tuple((int(a), int(b)) for a, b in pinpoints))
    s = min(ph / h, pw / w)
    big = img.resize((max(tile, round(w * s)), max(tile, round(h * s))), Image.Resampling.BICUBIC)
    x0, y0, x1, y1 = (round(v * s) for v in scene.text.box)
    lo_x, hi_x = max(0, x1 - tile), min(x0, big.width - tile)
    lo_y, hi_y = max(0, y1 - tile), min(y0, big.height - tile)
    cx = rng.randint(lo_x, hi_x) if lo_x <= hi_x else max(0, min(x0, big.width - tile))
    cy = rng.randint(lo_y, hi_y) if lo_y <= hi_y else max(0, min(y0, big.height - tile))
    scale = (big.width / w, big.height / h)
    return View(_tensor(big.crop((cx, cy, cx + tile, cy + tile))), text_caption(scene), scale, (-cx, -cy))


EMPTY_TILE = "an empty background"


def tile_views(img: Image.Image, scene: Scene, tile: int, pinpoints: list[list[int]]) -> list[View]:
    """The AnyRes tiles of the scene, each with a caption of the shapes whose centre lies in it (and of the text
    when its whole box does); a tile with nothing gets `EMPTY_TILE`.

    Example: a 200x100 (w x h) scene on pinpoints with 160x80 (w x h) is scaled by 0.8 to 160x80 and cut into
    two 80 px tiles; a circle centred at x = 120 lands at x = 96, in the right tile."""
    pins = tuple((int(a), int(b)) for a, b in pinpoints)
    ph, pw = select_best_resolution(scene.height, scene.width, pins)
    nh, nw = fit_size(scene.height, scene.width, ph, pw)  # where anyres_views pastes the scene on its canvas
    sx, sy = nw / scene.width, nh / scene.height
    ox, oy = (pw - nw) // 2, (ph - nh) // 2
    crops = anyres_views(img, tile, pins)[1:]  # the model's tiles, row-major (the base view dropped)
    corners = [(x, y) for y in range(0, ph, tile) for x in range(0, pw, tile)]
    views = []
    for crop, (x, y) in zip(crops, corners, strict=True):
        inside = [s for s in scene.shapes if x <= s.cx * sx + ox < x + tile and y <= s.cy * sy + oy < y + tile]
        text = scene.text
        if text is not None:
            x0, y0, x1, y1 = text.box
            box = (x0 * sx + ox, y0 * sy + oy, x1 * sx + ox, y1 * sy + oy)
            if not (x <= box[0] and box[2] <= x + tile and y <= box[1] and box[3] <= y + tile):
                text = None
        views.append(View(_tensor(crop), listing(inside, text) or EMPTY_TILE, (sx, sy), (ox - x, oy - y)))
    return views


def text_caption(scene: Scene) -> str:
    assert scene.text is not None
    return f"the {'number' if scene.text.is_number else 'word'} '{scene.text.value}'"


def build_pairs(
    scenes: list[Scene], tile: int, patch: int, pinpoints: list[list[int]], seed: int = 0, tiles: bool = True
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(N, 3, S, S) views, their texts and their patch labels (N, 6, G*G) (`patch_labels`, G = tile // patch):
    one full view per scene, its AnyRes tiles (``tiles``), one text crop per scene with text. Only the full view
    shows where in the scene a shape is: the other views' side labels (rows 4-5) are ``IGNORE``."""
    rng = random.Random(seed)
    views: list[View] = []
    labels = []
    for scene in scenes:
        img = render_scene(scene)
        mine = [full_view(img, scene, tile)]
        if tiles:
            mine += tile_views(img, scene, tile, pinpoints)
        if scene.text is not None:
            mine.append(text_view(img, scene, tile, pinpoints, rng))
        views += mine
        mine_labels = [patch_labels(scene, v.scale, v.offset, tile, patch) for v in mine]
        for crop in mine_labels[1:]:
            crop[4:] = IGNORE
        labels += mine_labels
    return torch.stack([v.pixels for v in views]), [v.text for v in views], torch.stack(labels)


def reading_pairs(
    n: int, seed: int, crops: int, tile: int, patch: int, pinpoints: list[list[int]], min_side: int, max_side: int
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Extra views for reading: ``n`` scenes that all carry a word or number (`generate_scene` with ``text_prob``
    1, seeds ``scene_seed(seed, i)``), each as its full view and ``crops`` text crops (`text_view`, placed at random
    around the text), with their texts and patch labels as `build_pairs` gives them. The recipe's own scenes put
    text on 60% of scenes and show each once per view, too few for the tower to learn the glyphs (the per-patch
    text probe held out: docs/default-model.md, "Reading").

    Example: n = 2, crops = 2 gives 6 views: scene 0's full view, its two crops, then scene 1's three."""
    if n < 0 or crops < 0:
        raise ValueError(f"clip.text_scenes and clip.text_crops must be >= 0, got {n} and {crops}")
    if not 0 <= seed < EVAL_SEED_BASE:
        raise ValueError(f"clip.text_seed must be a training seed (0 <= seed < {EVAL_SEED_BASE}), got {seed}")
    rng = random.Random(seed)
    views: list[View] = []
    labels = []
    for i in range(n):
        scene = generate_scene(scene_seed(seed, i), text_prob=1.0, min_side=min_side, max_side=max_side)
        if scene.text is None:  # dropped by `generate_scene` when no shape fits beside it
            continue
        img = render_scene(scene)
        mine = [full_view(img, scene, tile)] + [text_view(img, scene, tile, pinpoints, rng) for _ in range(crops)]
        mine_labels = [patch_labels(scene, v.scale, v.offset, tile, patch) for v in mine]
        for crop in mine_labels[1:]:
            crop[4:] = IGNORE
        views += mine
        labels += mine_labels
    if not views:
        return torch.zeros(0, 3, tile, tile), [], torch.zeros(0, 6, (tile // patch) ** 2, dtype=torch.long)
    return torch.stack([v.pixels for v in views]), [v.text for v in views], torch.stack(labels)


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


def check_clip_config(cfg: ClipTrainConfig) -> None:
    """The errors `train_clip` and `reading_pairs` would raise, raised before any view is rendered."""
    if cfg.contrastive_weight <= 0 and cfg.patch_weight <= 0:
        raise ValueError("clip.contrastive_weight and clip.patch_weight are both 0: nothing would be trained")
    if cfg.text_scenes:
        reading_pairs(0, cfg.text_seed, cfg.text_crops, 1, 1, [], 0, 0)  # checks the arguments, renders nothing


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
