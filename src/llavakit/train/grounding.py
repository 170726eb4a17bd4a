"""The grounding pass of the tiny synthetic recipe: the first decoder layer learns to find the object a question
names, before stage 2 (attention supervision; needs synthetic scenes, ``scenes.jsonl`` beside the images).

Why: ``scripts/probe_attention.py`` showed that models trained by stages 1-2 alone find an object named by its
colour (the colour word's layer-0 attention falls on that object's image tokens, 4.3x uniform) but never one
named by its kind (1.0x), though the kind is readable from the tokens; "What color is the triangle?" was then
answered by a blind pick among the scene's colours. This pass trains the projector and layer 0's query / key
projections, from a stage-1 checkpoint, on that match alone: for "What color is the KIND?" and "What shape is the
COLOUR object?" about scenes of several objects (exactly one object named), minus the log of the attention mass
the naming word's best layer-0 head puts on the named object's image tokens (which tokens show which object:
``foreground.scene_token_owners``). Stage 2 then starts from its output.

Worked example: a scene with a red star and a blue circle, "What color is the star?": the word "star" is at
position p; layer 0 gives, per head, softmax(q_p . k_j / sqrt(d)) over j <= p; the star's image tokens (say 6 of
the 80) get mass m_h in head h; the loss is -max_h log m_h (0 when one head looks only at the star).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from ..data.synth import read_scenes
from ..data.synth_scene import Scene
from ..model.llava import LlavaModel
from ..model.rope import apply_rotary
from ..processing.processor import LlavaProcessor
from .build import drops_questions
from .foreground import scene_token_owners

TEXT = -4  # the owner of the prompt's text tokens in ``question_inputs`` (image tokens: ``scene_token_owners``)


def question_inputs(proc: LlavaProcessor, scene: Scene, image: Image.Image, question: str, word: str) -> dict:
    """A one-turn question about ``image`` as the model sees it: ``ids`` (1, T), ``pv`` / ``sizes`` (the processor's
    pixel_values and image_sizes, None for llava), ``owner`` (T,) what each token shows (``TEXT`` for text, else
    ``scene_token_owners``: shape index, -1 background, -2 two shapes, -3 newline) and ``pos``, the index of the
    last token of ``word`` in the question (after the image)."""
    msgs = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    enc = proc(text=proc.apply_chat_template(msgs), images=[image])
    ids = enc["input_ids"]
    slots = (ids[0] == proc.image_token_id).nonzero()[:, 0]
    owner = torch.full((ids.shape[1],), TEXT)
    owner[slots] = scene_token_owners(scene, proc)
    toks = ids[0].tolist()
    start = int(slots[-1]) + 1
    ends = (e for e in range(start, len(toks)) if proc.tokenizer.decode(toks[start : e + 1]).rstrip().endswith(word))
    pos = next(ends, None)
    if pos is None:
        raise ValueError(f"{word!r} not found in the question {question!r}")
    return {"ids": ids, "pv": enc["pixel_values"], "sizes": enc.get("image_sizes"), "owner": owner, "pos": pos}


def examples(proc: LlavaProcessor, data: Path, n: int, seed: int = 0) -> list[dict]:
    """Up to ``n`` (ids, pixels, naming-word position, target token mask) from the scenes of several objects."""
    rng = random.Random(seed)
    out = []
    for image, scene in read_scenes(data).items():
        if len(out) >= n:
            break
        if len(scene.shapes) < 2:
            continue
        kinds = [s.kind for s in scene.shapes]
        colors = [s.color for s in scene.shapes]
        options = [("color", k) for k in set(kinds) if kinds.count(k) == 1]
        options += [("shape", c) for c in set(colors) if colors.count(c) == 1]
        if not options:
            continue
        qtype, word = rng.choice(sorted(options))
        target = kinds.index(word) if qtype == "color" else colors.index(word)
        question = f"What color is the {word}?" if qtype == "color" else f"What shape is the {word} object?"
        q = question_inputs(proc, scene, Image.open(data / image).convert("RGB"), question, word)
        if not (q["owner"] == target).any():
            continue
        out.append({**q, "target": q["owner"] == target, "qtype": qtype})
    return out


def layer0_log_mass(model: LlavaModel, ex: dict) -> torch.Tensor:
    """(H,) log of the attention mass each layer-0 head puts on the target tokens from the naming word."""
    lm = model.model.language_model
    att = lm.layers[0].self_attn
    x = lm.layers[0].input_layernorm(model.embed(ex["ids"], ex["pv"], ex["sizes"]))  # (1, T, D)
    t = x.shape[1]
    pos = torch.arange(t)[None]
    cos, sin = lm.rotary(pos, x.dtype, None)
    q = att.q_proj(x).view(1, t, att.heads, att.head_dim).transpose(1, 2)  # (1, H, T, d)
    k = att.k_proj(x).view(1, t, att.kv_heads, att.head_dim).transpose(1, 2)  # (1, KV, T, d)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k = k.repeat_interleave(att.heads // att.kv_heads, dim=1)  # (1, H, T, d)
    p = ex["pos"]
    logits = (q[0, :, p, None] @ k[0, :, : p + 1].transpose(-1, -2))[:, 0] / att.head_dim**0.5  # (H, p+1)
    logp = logits.log_softmax(-1)
    return logp[:, ex["target"][: p + 1]].logsumexp(-1)  # (H,)


def ground(
    init: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    examples_n: int = 3000,
    steps: int = 300,
    batch: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    template: str | None = None,
    log: Callable[[str], None] = print,
) -> list[float]:
    """The grounding pass from checkpoint ``init`` on the scenes of ``data``; writes a checkpoint to ``out`` and
    returns the loss of every step. ``template``: the one questions are asked in (stage 2's, saved with ``out``);
    None: the checkpoint's."""
    if not (Path(data) / "scenes.jsonl").is_file():
        raise FileNotFoundError(
            f"{Path(data) / 'scenes.jsonl'} not found: grounding needs the scenes of synthetic data "
            "(llava data synth and write_dataset write them beside the images)"
        )
    torch.manual_seed(seed)
    model = LlavaModel.from_pretrained(init)
    proc = LlavaProcessor.from_pretrained(init, template=template)
    if drops_questions(proc):
        raise ValueError(
            f"{init} carries the {proc.template!r} template (stage 1 captions), which drops the question; "
            "give grounding the stage-2 template (template='vicuna_v1')"
        )
    t0 = time.perf_counter()
    exs = examples(proc, Path(data), examples_n, seed)
    if not exs:
        raise ValueError(f"{data}: no scene of several objects with one named object; grounding needs such scenes")
    log(f"grounding: {len(exs)} questions prepared in {time.perf_counter() - t0:.0f}s")
    for p in model.parameters():
        p.requires_grad_(False)
    att = model.model.language_model.layers[0].self_attn
    params = [*model.model.multi_modal_projector.parameters(), *att.q_proj.parameters(), *att.k_proj.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps):
        idx = torch.randint(len(exs), (batch,), generator=g).tolist()
        masses = torch.stack([layer0_log_mass(model, exs[i]).max() for i in idx])  # (batch,)
        loss = -masses.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"grounding step {step + 1}/{steps}: loss {loss.item():.3f}, mass on the named object "
                f"{masses.exp().mean().item():.3f}")  # fmt: skip
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return history
