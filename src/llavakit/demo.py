"""``llava demo``: render a few fresh synthetic scenes, ask the model about them, print answers beside the truth.

The scenes come from held-out seeds (never used in training: see `llavakit.data.synth.EVAL_SEED_BASE`) at the
size the bundled model was trained on; the questions are the benchmark's (colour, shape, count, position,
existence yes/no, reading, multiple choice) and are scored the benchmark's way (`llavakit.eval.tasks.synth`).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DEMO_SEED_BASE = 2_000_000  # above EVAL_SEED_BASE (held out) and away from the benchmark's own seeds
DEFAULT_SIDES = (128, 256)  # long side of the scenes when the model does not say what it was trained on


def run_demo(
    model: str | None = None,
    seed: int = 0,
    n_scenes: int = 3,
    out: str | None = None,
    sides: tuple[int, int] | None = None,
) -> int:
    from .commands import default_model
    from .data.synth import eval_questions, generate_scene, render_scene, scene_seed
    from .data.synth_scene import sub_rng
    from .eval.tasks.base import Sample
    from .eval.tasks.synth import is_right
    from .pipeline import load

    random_model = False
    if model is None:
        try:
            model = default_model()
        except FileNotFoundError:
            from .tiny import write_tiny_checkpoint

            model = str(write_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny-random", seed=seed))
            random_model = True
            print(
                "NOTE: the bundled default model is not installed, so this demo runs the whole pipeline on a "
                "TINY RANDOM-WEIGHT model: its answers are noise. Pass --model DIR to use a real checkpoint.\n"
            )
    lo, hi = sides or scene_sides(model, note=not random_model)  # before the model loads: a bad training.json fails
    t0 = time.perf_counter()
    pipe = load(model)
    n_params = sum(p.numel() for p in pipe.model.parameters())
    print(f"model: {model} ({n_params / 1e6:.2f}M parameters, loaded in {time.perf_counter() - t0:.1f}s)")
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="llava-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    right: dict[str, list[bool]] = defaultdict(list)
    t_answers = time.perf_counter()
    for i in range(n_scenes):
        scene = generate_scene(scene_seed(DEMO_SEED_BASE + seed, i), min_side=lo, max_side=hi)
        path = work / f"scene_{seed}_{i}.png"
        render_scene(scene).save(path)
        qas = eval_questions(scene, sub_rng(scene.seed, "demo"))
        random.Random(scene.seed).shuffle(qas)
        qas = sorted(qas[:6], key=lambda q: QTYPE_ORDER.index(q.qtype))
        convs = [
            [{"role": "user", "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": q.question}]}]
            for q in qas
        ]
        answers = pipe.batch(convs, max_new_tokens=8)
        print(f"\nimage {i + 1}: {path} ({scene.width}x{scene.height})")
        for qa, ans in zip(qas, answers):
            sample = Sample(f"{i}", qa.question, str(path), {"answer": qa.answer, "qtype": qa.qtype})
            ok = is_right(sample, ans.text)
            right[qa.qtype].append(ok)
            question = qa.question.split("\n")[0] if qa.qtype != "mc" else " ".join(qa.question.split("\n")[:-1])
            print(f"  [{'ok' if ok else '--'}] Q: {question}")
            print(f"       A: {ans.text.strip()!r:<14} truth: {qa.answer!r}")
    n = sum(len(v) for v in right.values())
    hits = sum(sum(v) for v in right.values())
    per = ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(right.items(), key=lambda kv: QTYPE_ORDER.index(kv[0])))
    print(f"\naccuracy: {hits}/{n} ({per}) in {time.perf_counter() - t_answers:.1f}s; images in {work}")
    if random_model:
        print("(random weights: the answers above only show that every stage runs)")
    return 0


def scene_sides(model: str, note: bool = True) -> tuple[int, int]:
    """The long-side bounds of the demo's scenes: the model's training.json ``scene_long_side``, else
    ``DEFAULT_SIDES`` with a note saying so (a model trained on other sizes would be asked about scenes it never
    saw); a training.json that cannot say is one clear error naming the file (``trained_sides``)."""
    from .data.synth import trained_sides, untold_sides_note

    sides = trained_sides(model)
    if sides is None and note:
        print(untold_sides_note(model, *DEFAULT_SIDES) + "\n")
    return sides or DEFAULT_SIDES


QTYPE_ORDER = ("color", "shape", "count", "position", "existence", "reading", "mc")
