"""Stage 0 as one recipe: tokenizer -> vision tower (CLIP) -> decoder (LM), each written as an HF directory.

    python -m llavakit.train.stage0 recipes/tiny-synth-stage0.yaml [key=value ...]

The YAML has the sections below (every key type-checked by the training recipes' own builder,
``llavakit.train.recipe_yaml.build``); outputs go to ``output_dir``/{tokenizer,vision_tower,decoder}. The stage 1
recipe then starts from ``decoder:`` + ``vision_tower:`` exactly as the published LLaVA stage 1 does.
``parts=[decoder]`` trains the decoder alone, reading the tokenizer (and keeping the tower) already in
``output_dir``: a new decoder for a tower that took minutes to train.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...config import TextConfig, VisionConfig
from ...processing.tokenizer import Tokenizer
from .clip import ClipTrainConfig, check_clip_config, save_vision_tower, train_clip
from .corpus import texts, training_scenes
from .lm import LMTrainConfig, pack, save_decoder, train_lm
from .tokenizer import save_tokenizer, train_tokenizer
from .views import build_pairs, reading_pairs

STEPS = ("tokenizer", "vision_tower", "decoder")


@dataclass
class ScenesSpec:
    n: int = 4000  # training scenes (text for the tokenizer/LM; images for CLIP)
    seed: int = 0  # a training seed (< EVAL_SEED_BASE); stage 1/2 data use the same seed
    min_side: int = 128
    max_side: int = 256


@dataclass
class VisionSpec:
    image_size: int = 96
    patch_size: int = 12
    hidden_size: int = 192
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 3
    # AnyRes pinpoints (height, width) of the LLaVA model: text crops are taken at the scale AnyRes will use
    image_grid_pinpoints: list[list[int]] = field(default_factory=lambda: [[96, 192], [192, 96], [192, 192]])


@dataclass
class DecoderSpec:
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False


@dataclass
class Stage0Recipe:
    output_dir: str = "runs/tiny-synth/stage0"
    template: str = "vicuna_v1"  # how conversations are rendered for the LM corpus (the stage 2 template)
    vocab_size: int = 2048
    threads: int | None = None  # torch threads (None: torch's default)
    parts: list[str] = field(default_factory=lambda: list(STEPS))  # the rest is read from output_dir
    scenes: ScenesSpec = field(default_factory=ScenesSpec)
    vision: VisionSpec = field(default_factory=VisionSpec)
    clip: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    decoder: DecoderSpec = field(default_factory=DecoderSpec)
    lm: LMTrainConfig = field(default_factory=LMTrainConfig)


def load_stage0_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Stage0Recipe:
    """Read the YAML (or defaults when ``path`` is None) and apply dotted ``key=value`` overrides."""
    from ..recipe_yaml import apply_overrides, build, read_recipe_file

    sections = "keys (output_dir, template, vocab_size, threads, parts, scenes, vision, clip, decoder, lm)"
    raw = read_recipe_file(path, "stage 0 recipe", sections) if path is not None else {}
    apply_overrides(raw, overrides, "key=value, e.g. clip.steps=10")
    return build(Stage0Recipe, raw, "")


def vision_config(v: VisionSpec) -> VisionConfig:
    return VisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
    )


def text_config(d: DecoderSpec, vocab: int, bos: int | None, eos: int | None, pad: int | None) -> TextConfig:
    return TextConfig(
        vocab_size=vocab,
        hidden_size=d.hidden_size,
        intermediate_size=d.intermediate_size,
        num_hidden_layers=d.num_hidden_layers,
        num_attention_heads=d.num_attention_heads,
        num_key_value_heads=d.num_key_value_heads,
        max_position_embeddings=d.max_position_embeddings,
        tie_word_embeddings=d.tie_word_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def _losses(losses: list[float]) -> dict:
    return {"first": losses[0], "last": losses[-1], "steps": len(losses)}


def run_stage0(recipe: Stage0Recipe, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train ``recipe.parts`` (all three by default); returns the directories. ``stage0.json`` records losses, time."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    unknown = [p for p in recipe.parts if p not in STEPS]
    if unknown or not recipe.parts:
        raise ValueError(f"stage 0 parts must be some of {list(STEPS)}, got {recipe.parts}")
    if "vision_tower" in recipe.parts:
        check_clip_config(recipe.clip)
    out = Path(recipe.output_dir)
    for part in STEPS:
        if part not in recipe.parts and not (out / part).is_dir():
            raise ValueError(f"{out / part} does not exist and parts={recipe.parts} does not train it; add {part!r}")
    out.mkdir(parents=True, exist_ok=True)
    before = json.loads((out / "stage0.json").read_text()) if (out / "stage0.json").exists() else {}
    s = recipe.scenes
    t0 = time.perf_counter()
    scenes = list(training_scenes(s.n, s.seed, min_side=s.min_side, max_side=s.max_side))
    corpus = texts(scenes, recipe.template)
    paths = {part: out / part for part in STEPS}
    if "tokenizer" in recipe.parts:
        tok = train_tokenizer(corpus, recipe.vocab_size)
        save_tokenizer(tok, out / "tokenizer")
        log(f"stage 0: tokenizer of {tok.vocab_size} tokens from {len(corpus)} texts ({time.perf_counter() - t0:.0f}s)")
    else:
        tok = Tokenizer.from_dir(out / "tokenizer")

    # a part not trained here keeps the figures of the run that trained it
    done = {k: before.get(k) for k in ("clip_views", "clip_loss", "lm_rows", "lm_loss")}
    t1 = time.perf_counter()
    if "vision_tower" in recipe.parts:
        v = recipe.vision
        views, view_texts, labels = build_pairs(scenes, v.image_size, v.patch_size, v.image_grid_pinpoints, s.seed)
        c = recipe.clip
        if c.text_scenes:
            more, more_texts, more_labels = reading_pairs(
                c.text_scenes, c.text_seed, c.text_crops, v.image_size, v.patch_size, v.image_grid_pinpoints,
                s.min_side, s.max_side,
            )  # fmt: skip
            views, view_texts, labels = (
                torch.cat([views, more]),
                view_texts + more_texts,
                torch.cat([labels, more_labels]),
            )
        log(f"stage 0: {len(views)} CLIP views rendered ({time.perf_counter() - t1:.0f}s)")
        clip, clip_losses = train_clip(views, view_texts, vision_config(v), tok, recipe.clip, log, labels)
        save_vision_tower(clip.tower, out / "vision_tower")
        done.update(clip_views=len(views), clip_loss=_losses(clip_losses))
    t_clip = time.perf_counter() - t1

    t2 = time.perf_counter()
    if "decoder" in recipe.parts:
        rows = pack(tok, corpus, recipe.lm.seq_len)
        config = text_config(recipe.decoder, tok.vocab_size, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        lm, lm_losses = train_lm(rows, config, recipe.lm, log)
        save_decoder(lm, tok, out / "decoder")
        done.update(lm_rows=len(rows), lm_loss=_losses(lm_losses))
    t_lm = time.perf_counter() - t2

    summary = {
        "seconds": {"total": time.perf_counter() - t0, "clip": t_clip, "lm": t_lm},
        "vocab_size": tok.vocab_size,
        "parts": list(recipe.parts),
        **done,
        "recipe": asdict(recipe),
    }
    (out / "stage0.json").write_text(json.dumps(summary, indent=2) + "\n")
    losses = json.dumps({k: summary[k] for k in ("clip_loss", "lm_loss")})
    log(f"stage 0 done in {summary['seconds']['total']:.0f}s: {losses}")
    return paths
