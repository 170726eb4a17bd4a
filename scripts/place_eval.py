"""Position accuracy with only the objects' base-view tokens visible (scratch tool for issue 5's position target).

``scripts/place_pass.py --drop 1 1 --tile-drop 1 1`` trains with every image token hidden from the text but the
base-view tokens of the objects; this scores a checkpoint the same way on synthetic position questions, split by
the number of shapes in the scene and by axis (left/right, top/bottom), and, on scenes of several shapes, by
whether another shape lies on the other side of the named one (where the places of all shapes together do not
give the answer: "another shape across") or none does. A question counts as right when every
token of the answer word is the model's top choice after the tokens before it (teacher forcing, one pass per
batch; with the default model's tokenizer the word is one token).

``--flip-rows`` also reverses the order of the base view's rows in the position ids (row r gets the ids of row
g - 1 - r; the features stay where they are). A model that reads the row from the token order answers top/bottom
backwards then; one that reads it from the features does not notice. ``--flip-cols`` does the same to the
columns within each row, for left/right. Worked example, a 2 x 2 base view at ids 10-13: positions [10, 11, 12, 13]
-> [12, 13, 10, 11] with the rows flipped, [11, 10, 13, 12] with the columns.

``--all-tokens`` hides nothing (the model as it is used).

    python scripts/place_eval.py MODEL DATA [--flip-rows] [--flip-cols] [--all-tokens] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from place_pass import first_answer_only, tile_flags  # noqa: E402

ANSWERS = ("left", "right", "top", "bottom")


def answer_right(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether the model's top choice, fed the right tokens before it, is each token of the first answer but its
    last (the end of the turn): logits (T, V), labels (T,) with -100 outside the answers. Worked example: labels
    [-100, -100, 7, 8, 2, -100] -> the argmax of logits[1] must be 7 and that of logits[2] 8."""
    answer = (first_answer_only(labels[None].clone())[0] != -100).nonzero()[:, 0]
    span = answer[:-1] if len(answer) > 1 else answer
    return all(int(logits[p - 1].argmax()) == int(labels[p]) for p in span.tolist())


def flip_view(pos: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, grid: int, axis: int) -> torch.Tensor:
    """(B, T) position ids with the rows (``axis`` 0) or the columns (1) of each row's first ``grid * grid`` image
    tokens (its base view) in reverse order."""
    pos = pos.clone()
    perm = torch.arange(grid * grid).view(grid, grid).flip(axis).reshape(-1)
    for j in range(pos.shape[0]):
        idx = (input_ids[j] == image_token_id).nonzero()[: grid * grid, 0]
        pos[j, idx] = pos[j, idx[perm]]
    return pos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("data", help="a synthetic instruct directory of position questions (instruct.json, scenes.jsonl)")
    ap.add_argument("--flip-rows", action="store_true")
    ap.add_argument("--flip-cols", action="store_true")
    ap.add_argument("--all-tokens", action="store_true", help="hide nothing: every image token visible, as in use")
    ap.add_argument("--limit", type=int, help="score the first N records only")
    ap.add_argument("--max-length", type=int, default=1024, help="tokens per sample (longer ones are refused)")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    for name in ("instruct.json", "scenes.jsonl"):
        if not (data / name).is_file():
            ap.error(f"{data / name} not found: give a directory written by llava data synth (instruct)")

    from llavakit.data.synth import read_scenes
    from llavakit.data.synth_questions import side
    from llavakit.model.llava import LlavaModel, positions_from_mask
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.train.collate import collate
    from llavakit.train.data import DataExhausted
    from llavakit.train.foreground import hide_background
    from llavakit.train.mixture import build_dataset
    from llavakit.train.named import named_shape

    model = LlavaModel.from_pretrained(args.model).eval()
    proc = LlavaProcessor.from_pretrained(args.model)
    ds = build_dataset({"path": str(data / "instruct.json"), "image_folder": str(data)}, proc, proc.template,
                       args.max_length, foreground=True)  # fmt: skip
    recs = json.loads((data / "instruct.json").read_text())
    scenes = read_scenes(data)
    grid = model.config.vision.image_size // model.config.vision.patch_size
    image_id = model.config.image_token_id
    pad = partial(collate, pad_id=ds.pad_id, family=proc.family)
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    right: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with torch.no_grad():
        for s in range(0, n, 16):
            idx = list(range(s, min(n, s + 16)))
            try:
                items = [ds[i] for i in idx]
            except DataExhausted as e:  # every sample failing says why
                raise SystemExit(f"{data / 'instruct.json'}: {e} (here: --max-length)") from None
            for i, item in zip(idx, items):
                if item["id"] != recs[i].get("id", item["id"]):  # a failing sample is replaced by the next one
                    raise SystemExit(
                        f"{data / 'instruct.json'}: samples skipped ({dict(ds.skipped)}), so scores would go to the "
                        f"wrong records: raise --max-length (now {args.max_length}) or fix the data"
                    )
                if item["length"] >= args.max_length:  # cut to fit: its answer may be cut too
                    raise SystemExit(
                        f"{data / 'instruct.json'}: record {item['id']} was cut at --max-length {args.max_length}; "
                        "raise --max-length"
                    )
            batch = pad(items)
            mask = batch["attention_mask"]
            b, t = mask.shape
            pos = positions_from_mask(mask, b, t, 0, mask.device)
            if args.flip_rows:
                pos = flip_view(pos, batch["input_ids"], image_id, grid, 0)
            if args.flip_cols:
                pos = flip_view(pos, batch["input_ids"], image_id, grid, 1)
            if not args.all_tokens:
                mask = hide_background(mask, batch["foreground"], 1.0, torch.Generator())
                tiles = tile_flags(batch["input_ids"], image_id, grid * grid)
                mask = hide_background(mask, ~tiles, 1.0, torch.Generator())
            out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                        image_sizes=batch["image_sizes"], attention_mask=mask, position_ids=pos)  # fmt: skip
            for j, i in enumerate(idx):
                labels = batch["labels"][j]
                answer = recs[i]["conversations"][1]["value"]
                if answer not in ANSWERS:
                    raise SystemExit(f"{data / 'instruct.json'}: record {i} answers {answer!r}, not a position "
                                     f"({', '.join(ANSWERS)}): give position questions only")  # fmt: skip
                ok = int(answer_right(out.logits[j], labels))
                axis = "left/right" if answer in ("left", "right") else "top/bottom"
                scene = scenes[recs[i]["image"]]
                shapes = len(scene.shapes)
                keys = ["all", axis, f"{shapes} shapes {axis}"]
                k = named_shape(scene, recs[i]["conversations"][0]["value"])
                if shapes > 1 and k is not None:
                    ax = "x" if axis == "left/right" else "y"
                    across = any(side(scene, sh, ax) not in (None, answer) for sh in scene.shapes)
                    keys.append(f"{axis} {'another shape across' if across else 'none across'}")
                for key in keys:
                    right[key][0] += ok
                    right[key][1] += 1
    scores = {k: round(a / c, 4) for k, (a, c) in sorted(right.items())}
    counts = {k: c for k, (_, c) in sorted(right.items())}
    print(json.dumps({"accuracy": scores, "questions": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
