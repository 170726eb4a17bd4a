"""Synthetic text for stage 0: captions and rendered conversations of training scenes (no pixels needed).

Scenes come from `llavakit.data.synth` with training seeds (below ``EVAL_SEED_BASE``), so the tokenizer and the
decoder never see a held-out scene's text.
"""

from __future__ import annotations

from collections.abc import Iterator

from ...data.synth import EVAL_SEED_BASE, Scene, caption, conversation, generate_scene, scene_seed
from ...data.synth_scene import sub_rng
from ...processing.templates import render


def training_scenes(n: int, seed: int, *, min_side: int, max_side: int) -> Iterator[Scene]:
    """``n`` scenes of the training dataset seeded ``seed`` (the same scenes `write_dataset` renders)."""
    if seed >= EVAL_SEED_BASE:
        raise ValueError(f"stage 0 must use training seeds (< {EVAL_SEED_BASE}), got {seed}")
    for i in range(n):
        yield generate_scene(scene_seed(seed, i), min_side=min_side, max_side=max_side)


def conversation_text(scene: Scene, template: str, max_turns: int = 4) -> str:
    """One conversation about ``scene`` rendered with ``template``, the ``<image>`` placeholder kept as text."""
    turns = conversation(scene, sub_rng(scene.seed, "instruct"), max_turns)
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in turns]
    return render(messages, template, add_generation_prompt=False)


def texts(scenes: list[Scene], template: str) -> list[str]:
    """Captions and conversations of ``scenes``: two texts per scene, the LM and tokenizer corpus."""
    out = []
    for s in scenes:
        out.append(caption(s))
        out.append(conversation_text(s, template))
    return out
