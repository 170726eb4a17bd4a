"""``llava demo``: answer a few questions about fresh images, end to end (processor -> model -> text)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

QUESTIONS = ["What color is the shape?", "What shape is in the image?", "Is the shape on the left or the right?"]


def _scene(path: Path, seed: int) -> Path:
    colours = [("red", (220, 30, 30)), ("blue", (30, 60, 220)), ("green", (30, 160, 60))]
    name, rgb = colours[seed % 3]
    w, h = (420, 280) if seed % 2 else (280, 420)
    img = Image.new("RGB", (w, h), (245, 245, 240))
    x = w // 4 if seed % 2 else 3 * w // 4
    ImageDraw.Draw(img).ellipse((x - 40, h // 2 - 40, x + 40, h // 2 + 40), fill=rgb)
    out = path / f"scene_{seed}.png"
    img.save(out)
    return out


def run_demo(model: str | None = None, seed: int = 0) -> int:
    from .commands import default_model
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
                "NOTE: the bundled default model is not available yet, so this demo runs the whole pipeline on a "
                "TINY RANDOM-WEIGHT model: its answers are noise. Pass --model DIR to use a real checkpoint.\n"
            )
    t0 = time.perf_counter()
    pipe = load(model)
    print(
        f"loaded {model} ({sum(p.numel() for p in pipe.model.parameters()) / 1e6:.2f}M parameters) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    work = Path(tempfile.mkdtemp(prefix="llava-demo-"))
    for i in range(2):
        image = _scene(work, seed + i)
        print(f"\nimage: {image}")
        for q in QUESTIONS:
            t1 = time.perf_counter()
            msg = [{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": q}]}]
            ans = pipe.reply(msg, max_new_tokens=12)
            print(f"  Q: {q}\n  A: {ans.text!r}  ({ans.completion_tokens} tokens, {time.perf_counter() - t1:.2f}s)")
            pipe.reset()
    if random_model:
        print("\n(random weights: the answers above only show that every stage runs)")
    return 0
