"""The multimodal glue: vision tower -> projector -> image features written into the LM's input embeddings.

Module tree (and so state-dict keys) equals transformers' current layout for llava / llava_next / llava_onevision:

    model.vision_tower.vision_model.*        VisionTower (CLIP or SigLIP)
    model.multi_modal_projector.linear_k.*   Projector
    model.image_newline                      (llava_next, llava_onevision)
    model.language_model.*                   TextModel (Llama / Mistral / Qwen2)
    lm_head.weight                           (absent when the embeddings are tied)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LlavaConfig
from ..engine.kv_cache import KVCache
from ..processing.anyres import (
    ImageGeometry,
    downsampled_size,
    grid_shape,
    num_image_tokens,
    num_tiles,
    unpadded_size,
)
from .projector import build_projector
from .text import TextModel
from .vision import VisionTower

IGNORE_INDEX = -100


@dataclass
class LlavaOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None


class LlavaBackbone(nn.Module):
    """Everything but the LM head (HF's ``LlavaModel``); sits at ``model.`` in the state dict."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        self.vision_tower = VisionTower(config.vision)
        self.multi_modal_projector = build_projector(config)
        if config.model_type != "llava":
            self.image_newline = nn.Parameter(torch.empty(config.text.hidden_size))
            nn.init.normal_(self.image_newline, std=config.text.hidden_size**-0.5)
        self.language_model = TextModel(config.text)


class LlavaModel(nn.Module):
    """A LLaVA-1.5 / 1.6 (NeXT) / OneVision model. Build with ``LlavaModel(config)`` or ``from_pretrained``."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        self.config = config
        self.geometry = ImageGeometry.from_config(config)
        self.model = LlavaBackbone(config)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.tie_weights()

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.language_model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.model.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.embed_tokens.weight.dtype

    # -- vision ------------------------------------------------------------------------------------------------

    def tower_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) tiles -> (N, L, Dv * k) the projector's inputs (CLS dropped with strategy "default")."""
        feats = self.model.vision_tower(tiles, self.config.feature_layers)  # (N, L, Dv * k)
        if self.config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return feats

    def tile_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) tiles -> (N, L, D) projected features."""
        return self.model.multi_modal_projector(self.tower_features(tiles))  # (N, L', D)

    def image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        batch_num_images: torch.Tensor | list[int] | None = None,
        multi_image: list[bool] | None = None,
    ) -> list[torch.Tensor]:
        """Encode every image of a batch in one vision pass and pack each into its token sequence.

        pixel_values: llava (N, 3, S, S); next / onevision (N, max_tiles, 3, S, S) with zero-padded tile slots, or
                      (sum of tiles, 3, S, S): every image's views concatenated, as transformers also accepts.
        image_sizes:  (N, 2) original (height, width) (a tensor or a list of pairs), required for next / onevision.
        batch_num_images: images per prompt (OneVision: images of multi-image prompts get their base view only);
        ``multi_image`` gives that per-image flag directly (a chat turn encoding only its new images).
        Returns one (tokens_i, D) tensor per image, tokens_i == num_image_tokens(h_i, w_i, ...).
        """
        geom = self.geometry
        if geom.pinpoints is None:
            if pixel_values.dim() == 5:
                pixel_values = pixel_values[:, 0]
            return list(self.tile_features(pixel_values).unbind(0))
        if image_sizes is None:
            raise ValueError(f"{self.config.model_type} needs image_sizes (N, 2) = (height, width) of each image")
        if pixel_values.dim() not in (4, 5):
            raise ValueError(
                f"pixel_values must be (N, tiles, 3, H, W) or (total tiles, 3, H, W) for {self.config.model_type}, "
                f"got {tuple(pixel_values.shape)}"
            )
        rows = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else image_sizes
        sizes = [(int(h), int(w)) for h, w in rows]
        multi = multi_image or _multi_image_flags(batch_num_images, len(sizes), self.config.model_type)
        counts = [num_tiles(h, w, geom, multi_image=m) for (h, w), m in zip(sizes, multi)]
        if pixel_values.dim() == 4:  # the views of every image, concatenated
            if pixel_values.shape[0] != sum(counts):
                raise ValueError(
                    f"pixel_values holds {pixel_values.shape[0]} tiles but the {len(sizes)} image_sizes need "
                    f"{sum(counts)} ({', '.join(map(str, counts))}); were the images preprocessed with this model's "
                    "processor (same pinpoints)?"
                )
            tiles = pixel_values
        else:
            if len(sizes) != pixel_values.shape[0]:
                raise ValueError(f"got {pixel_values.shape[0]} images in pixel_values but {len(sizes)} image_sizes")
            if max(counts) > pixel_values.shape[1]:
                raise ValueError(
                    f"an image needs {max(counts)} tiles but pixel_values holds {pixel_values.shape[1]} per image; "
                    "were the images preprocessed with this model's processor (same pinpoints)?"
                )
            tiles = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])  # (sum tiles, 3, S, S)
        feats = self.tile_features(tiles).split(counts)
        newline = self.model.image_newline
        out = []
        for f, (h, w), m in zip(feats, sizes, multi):
            packed = self._pack(f, h, w, newline) if not m else torch.cat([f[0], newline[None].to(f)])
            expected = num_image_tokens(h, w, geom, multi_image=m)
            if packed.shape[0] != expected:  # an internal invariant: the single count function must agree
                raise RuntimeError(f"packed {packed.shape[0]} features for a {h}x{w} image, expected {expected}")
            out.append(packed)
        return out

    def _pack(self, f: torch.Tensor, h: int, w: int, newline: torch.Tensor) -> torch.Tensor:
        return pack_tiles(f, h, w, self.geometry, newline)

    def video_features(self, pixel_values_videos: torch.Tensor) -> list[torch.Tensor]:
        """OneVision video: (B, F, 3, S, S) -> per video (F * ceil(g/2)^2 + 1, D): frames pooled, one newline."""
        if self.config.model_type != "llava_onevision":
            raise ValueError(f"video input needs a llava_onevision model, this one is {self.config.model_type}")
        b, nf = pixel_values_videos.shape[:2]
        g = self.geometry.grid
        feats = self.tile_features(pixel_values_videos.flatten(0, 1))  # (B*F, g*g, D)
        d = feats.shape[-1]
        maps = feats.view(b * nf, g, g, d).permute(0, 3, 1, 2)
        pooled = F.interpolate(maps, size=[(g + 1) // 2, (g + 1) // 2], mode="bilinear")
        pooled = pooled.permute(0, 2, 3, 1).reshape(b, -1, d)  # (B, F * p * p, D)
        newline = self.model.image_newline.to(pooled)
        return [torch.cat([v, newline[None]]) for v in pooled]

    # -- embeddings and forward --------------------------------------------------------------------------------

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        batch_num_images: torch.Tensor | list[int] | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        multi_image: list[bool] | None = None,
    ) -> torch.Tensor:
        """(B, T) ids (image tokens already expanded) -> (B, T, D) embeddings with image features written in."""
        cfg = self.config
        embed_tokens = self.model.language_model.embed_tokens
        special = input_ids == cfg.image_token_id
        if cfg.video_token_id is not None:
            special |= input_ids == cfg.video_token_id
        ids = input_ids.masked_fill(special, 0) if cfg.image_token_id >= embed_tokens.num_embeddings else input_ids
        if (ids >= embed_tokens.num_embeddings).any() or (ids < 0).any():
            raise ValueError(f"input_ids hold ids outside the vocabulary [0, {embed_tokens.num_embeddings})")
        x = embed_tokens(ids)  # (B, T, D)
        images = input_ids == cfg.image_token_id  # (B, T)
        x = self._scatter(x, images, "image", "input_ids", pixel_values, image_sizes, batch_num_images, multi_image)
        if cfg.video_token_id is not None:
            x = self._scatter(x, input_ids == cfg.video_token_id, "video", "input_ids", pixel_values_videos)
        return x

    def embed_features(
        self,
        inputs_embeds: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        batch_num_images: torch.Tensor | list[int] | None = None,
        pixel_values_videos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) precomputed embeddings -> the same with image / video features written in.

        As transformers does when given ``inputs_embeds`` with pixels: the placeholders are the positions whose
        embedding equals the image (video) token's row of the embedding table, e.g. ``embed_tokens(input_ids)``.
        """
        cfg = self.config
        for kind, token_id, pixels in (
            ("image", cfg.image_token_id, pixel_values),
            ("video", cfg.video_token_id, pixel_values_videos),
        ):
            if pixels is None:
                continue
            table = self.model.language_model.embed_tokens.weight
            if token_id is None or token_id >= table.shape[0]:
                raise ValueError(
                    f"{kind} pixels with inputs_embeds: the {kind} token ({token_id}) has no row in the embedding "
                    f"table of {table.shape[0]} to find its placeholders by; pass input_ids instead"
                )
            mask = (inputs_embeds == table[token_id].to(inputs_embeds.dtype)).all(-1)  # (B, T)
            extra = (image_sizes, batch_num_images) if kind == "image" else ()
            inputs_embeds = self._scatter(inputs_embeds, mask, kind, "inputs_embeds", pixels, *extra)
        return inputs_embeds

    def _scatter(self, x, mask, kind, where, pixels, sizes=None, num_images=None, multi=None) -> torch.Tensor:
        """Write the features of ``pixels`` into x (B, T, D) where mask (B, T); ``where`` names the mask's source."""
        n_tokens = int(mask.sum())
        if pixels is None:
            if n_tokens:
                raise ValueError(f"{where} hold {n_tokens} {kind} tokens but no {kind} pixels were given")
            return x
        feats = (
            self.image_features(pixels, sizes, num_images, multi) if kind == "image" else self.video_features(pixels)
        )
        flat = torch.cat(feats).to(x.dtype)
        if flat.shape[0] != n_tokens:
            per = ", ".join(str(f.shape[0]) for f in feats)
            raise ValueError(
                f"{kind} features and {kind} tokens do not match: {where} hold {n_tokens} {kind} tokens but the "
                f"{len(feats)} {kind}(s) give {flat.shape[0]} features ({per}); build inputs with this model's "
                "processor so every placeholder is expanded to num_image_tokens()"
            )
        return x.masked_scatter(mask.unsqueeze(-1), flat)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        batch_num_images: torch.Tensor | list[int] | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        logits_mask: torch.Tensor | None = None,
    ) -> LlavaOutput:
        """Logits (B, T, V) for ids (with expanded image tokens) or precomputed embeddings.

        With ``inputs_embeds`` and pixels, the features go where the embeddings equal the image (video) token's
        (``embed_features``), as in transformers; without pixels the embeddings are used as they are.

        ``logits_to_keep=k`` computes logits for the last k positions only (generation needs 1).
        ``logits_mask`` (B, T) bool computes them only where it is True, as (N, V) rows in row-major order
        (training: the positions whose next token is supervised; the (B, T, V) tensor is never built).
        ``labels`` (B, T) with IGNORE_INDEX outside the supervised spans give ``loss`` (shifted by one).
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds)")
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes, batch_num_images, pixel_values_videos)
        elif pixel_values is not None or pixel_values_videos is not None:
            inputs_embeds = self.embed_features(
                inputs_embeds, pixel_values, image_sizes, batch_num_images, pixel_values_videos
            )
        b, t, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, b, t, past, inputs_embeds.device)
        h = self.model.language_model(inputs_embeds, position_ids, attention_mask, cache)  # (B, T, D)
        if logits_mask is not None:
            if labels is not None:
                raise ValueError("pass labels or logits_mask, not both (with logits_mask compute the loss yourself)")
            return LlavaOutput(logits=self.lm_head(h[logits_mask]))  # (N, V)
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
        return LlavaOutput(logits=logits, loss=loss)

    # -- conveniences (defined in other modules to keep this file about the model) ------------------------------

    @classmethod
    def from_pretrained(cls, path_or_id, **kwargs) -> LlavaModel:  # noqa: ANN001
        """Load an HF-format (current or pre-4.52 layout) or original-format checkpoint; see checkpoint.api."""
        from ..checkpoint.api import load_model

        return load_model(path_or_id, **kwargs)

    def save_pretrained(self, out_dir, **kwargs) -> None:  # noqa: ANN001
        """Write the current HF layout (config.json + sharded safetensors) that transformers and vLLM load."""
        from ..checkpoint.api import save_model

        save_model(self, out_dir, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, **kwargs) -> torch.Tensor:  # noqa: ANN003
        """Greedy (or sampled, with ``do_sample=True``) continuation; returns (B, T + new) ids like HF."""
        from ..engine.generate import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)


def positions_from_mask(
    attention_mask: torch.Tensor | None, b: int, t: int, past: int, device: torch.device
) -> torch.Tensor:
    """Position ids (B, T): count of real tokens before each slot; left padding does not shift positions.

    mask [[0, 0, 1, 1, 1]] -> positions [[1, 1, 0, 1, 2]] (pads get a harmless 1, as in HF generate).
    """
    if attention_mask is None:
        return torch.arange(past, past + t, device=device).expand(b, t)
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 1)
    return pos[:, -t:]


def pack_tiles(f: torch.Tensor, h: int, w: int, geometry: ImageGeometry, newline: torch.Tensor) -> torch.Tensor:
    """Base view + the tile grid of an AnyRes image re-assembled, unpadded, (downsampled), one newline per row.

    f: (1 + rows*cols, g*g, D) per-view features -> (g*g + rows' * (cols' + 1), D). Any D: the training loop's
    foreground mask packs per-patch flags (D = 1) through this same function.
    """
    g = geometry.grid
    rows, cols = grid_shape(h, w, geometry)
    if f.shape[1] != g * g:
        raise ValueError(
            f"AnyRes packing needs {g * g} features per tile (a {g}x{g} map) but the vision tower gives {f.shape[1]}: "
            "vision_feature_select_strategy must drop CLIP's CLS token ('default') and keep every SigLIP token "
            "('full'); transformers fails on this config too"
        )
    base, tiles = f[0], f[1:]
    d = f.shape[-1]
    grid = tiles.reshape(rows, cols, g, g, d).permute(4, 0, 2, 1, 3).reshape(d, rows * g, cols * g)
    fh, fw = unpadded_size(h, w, rows * g, cols * g)
    top, left = (rows * g - fh) // 2, (cols * g - fw) // 2
    grid = grid[:, top : top + fh, left : left + fw]  # (D, fh, fw)
    target = downsampled_size(fh, fw, geometry)
    if target is not None:
        grid = F.interpolate(grid[None], size=list(target), mode="bilinear")[0]
    nl = newline.to(grid).view(d, 1, 1).expand(d, grid.shape[1], 1)
    grid = torch.cat([grid, nl], dim=2)  # (D, rows', cols' + 1)
    return torch.cat([base, grid.flatten(1).transpose(0, 1)])


def _multi_image_flags(batch_num_images, n: int, family: str) -> list[bool]:  # noqa: ANN001
    """OneVision treats images of a multi-image prompt as base views only; which images are those."""
    if family != "llava_onevision" or batch_num_images is None:
        return [False] * n
    counts = [int(c) for c in batch_num_images]
    if sum(counts) != n:
        raise ValueError(f"batch_num_images {counts} sums to {sum(counts)} but {n} images were given")
    return [c > 1 for c in counts for _ in range(c)]
