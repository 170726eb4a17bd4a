"""Where does a question look? Attention from a question's words to the image tokens of the object it names.

    python scripts/probe_attention.py MODEL DATA [--at word|last] [--limit 120]

For the colour and shape questions of a synthetic eval set (``llava data synth --kind eval``, with its
``scenes.jsonl``) about scenes of several objects, where exactly one object has the named kind ("What color is
the triangle?") or colour ("What shape is the red object?"), runs transformers' LLaVA-NeXT (eager attention, the
reference implementation) on MODEL and prints, per question type and layer, the attention (mean over heads) from
the naming word (``--at word``) or the last prompt position (``--at last``) to: the named object's image tokens,
the other objects' tokens, background tokens and text; and the selectivity, the named object's share of the
attention given to objects over its share of the objects' tokens (1.0 = no preference, uniform over objects).
Which image token shows which object comes from the scene (``train.foreground.scene_token_owners``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from PIL import Image

from llavakit.data.synth_scene import Scene
from llavakit.processing.processor import LlavaProcessor
from llavakit.train.grounding import TEXT, question_inputs

PATTERNS = {"color": r"What color is the (\w+)\?", "shape": r"What shape is the (\w+) object\?"}


def named_object(scene: Scene, qtype: str, question: str) -> tuple[str, int] | None:
    """(naming word, index of the only object it names) or None (not such a question, or ambiguous)."""
    m = re.search(PATTERNS.get(qtype, r"$^"), question)
    if m is None:
        return None
    word = m.group(1)
    hits = [i for i, s in enumerate(scene.shapes) if (s.kind if qtype == "color" else s.color) == word]
    return (word, hits[0]) if len(hits) == 1 else None


def shares(weights: torch.Tensor, owner: torch.Tensor, target: int) -> dict[str, float]:
    """Attention ``weights`` (T,) split by ``owner`` (T,): >= 0 object index, -1 background, -2 / -3 other image
    tokens (two objects, newlines), ``TEXT`` (-4) text; with the selectivity defined in the module docstring."""
    objects = owner >= 0
    tgt = float(weights[owner == target].sum())
    obj = float(weights[objects].sum())
    token_share = float((owner == target).sum()) / max(int(objects.sum()), 1)
    return {
        "target": tgt,
        "others": obj - tgt,
        "background": float(weights[owner == -1].sum()),
        "text": float(weights[owner == TEXT].sum()),
        "selectivity": (tgt / obj) / token_share if obj > 0 and token_share > 0 else float("nan"),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data", type=Path)
    ap.add_argument("--at", choices=("word", "last"), default="word")
    ap.add_argument("--limit", type=int, default=120, help="questions to look at")
    a = ap.parse_args(argv)
    from transformers import LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration.from_pretrained(a.model, attn_implementation="eager").eval()
    proc = LlavaProcessor.from_pretrained(a.model)
    scenes = {}
    for line in (a.data / "scenes.jsonl").read_text().splitlines():
        r = json.loads(line)
        scenes[r["image"]] = Scene.from_dict(r["scene"])
    sums: dict[tuple[str, int], dict[str, float]] = {}
    counts: dict[tuple[str, int], int] = {}
    seen = 0
    for line in (a.data / "eval.jsonl").read_text().splitlines():
        r = json.loads(line)
        scene = scenes.get(r["image"])
        named = named_object(scene, r["qtype"], r["question"]) if scene and len(scene.shapes) > 1 else None
        if named is None:
            continue
        word, target = named
        q = question_inputs(proc, scene, Image.open(a.data / r["image"]).convert("RGB"), r["question"], word)
        owner = q["owner"]
        if not (owner == target).any():  # every patch of the named object also shows another one
            continue
        at = q["pos"] if a.at == "word" else q["ids"].shape[1] - 1
        with torch.no_grad():
            out = hf(input_ids=q["ids"], pixel_values=q["pv"], image_sizes=q["sizes"], output_attentions=True)
        for layer, att in enumerate(out.attentions):
            key = (r["qtype"], layer)
            s = shares(att[0, :, at].mean(0), owner, target)
            acc = sums.setdefault(key, dict.fromkeys(s, 0.0))
            for k, v in s.items():
                acc[k] += v
            counts[key] = counts.get(key, 0) + 1
        seen += 1
        if seen >= a.limit:
            break
    result = {f"{q}/layer{layer}": {k: v / counts[(q, layer)] for k, v in s.items()} for (q, layer), s in sums.items()}
    print(f"attention from the {'naming word' if a.at == 'word' else 'last prompt position'}, {seen} questions")
    print("| question, layer | n | named object | other objects | background | text | selectivity |")
    print("|---|---|---|---|---|---|---|")
    for (q, layer), s in sorted(sums.items()):
        n = counts[(q, layer)]
        print(
            f"| {q}, {layer} | {n} | {s['target'] / n:.3f} | {s['others'] / n:.3f} | {s['background'] / n:.3f} | "
            f"{s['text'] / n:.3f} | {s['selectivity'] / n:.2f}x |"
        )
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
