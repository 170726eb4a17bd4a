"""Small in-memory training data for the loop tests: items in the training contract's format, made with the
tiny model's processor (placeholders expanded), the answer's tokens as the only labels."""

from __future__ import annotations

import torch
from PIL import Image

from llavakit.model.llava import IGNORE_INDEX
from llavakit.train.collate import collate
from llavakit.train.recipe import Recipe, load_recipe

COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 200)]
NAMES = ["red", "green", "blue", "yellow", "purple"]


class ColorDataset:
    """``n`` samples: "<image>\\nColor?" -> the color's name; image sizes vary (so AnyRes views vary)."""

    def __init__(self, processor, n: int = 10, text_every: int = 0) -> None:
        self.items = []
        for i in range(n):
            k = i % len(COLORS)
            answer = NAMES[k] + "</s>"
            if text_every and i % text_every == text_every - 1:
                enc = processor(text="Say hi. " + "hi</s>")
                enc["pixel_values"] = None
                answer = "hi</s>"
            else:
                img = Image.new("RGB", (40 + 13 * i, 60 + 7 * (i % 3)), COLORS[k])
                enc = processor(text="<image>\nColor? " + answer, images=[img])
            ids = enc["input_ids"][0]
            n_ans = len(processor.tokenizer.encode(answer, add_special_tokens=False))
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[-n_ans:] = ids[-n_ans:]
            pv = enc.get("pixel_values")
            self.items.append(
                {
                    "input_ids": ids,
                    "labels": labels,
                    "pixel_values": pv,
                    "image_sizes": enc.get("image_sizes"),
                    "id": str(i),
                    "length": int(ids.shape[0]),
                    "modality": "image" if pv is not None else "text",
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate_fn(items):
    return collate(items, pad_id=0)


def tiny_recipe(tmp_path, family: str = "llava", *overrides: str) -> Recipe:
    base = [
        f"model.init=tiny:{family}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.max_steps=6",
        "train.warmup_ratio=0.1",
        "train.save_every=0",
        "train.progress=false",
        "stage.name=stage2",
        "stage.lr=3e-3",
    ]
    return load_recipe(None, base + list(overrides))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_worker(rank: int, world: int, port: int, overrides: list[str], out_file: str, n: int) -> None:
    """One process of a torch.multiprocessing.spawn'ed run (what torchrun would start); rank 0 writes the losses."""
    import json
    import os

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from llavakit.train.build import build_model
    from llavakit.train.loop import train

    recipe = load_recipe(None, overrides)
    model, processor = build_model(recipe.model)
    res = train(recipe, model=model, processor=processor, dataset=ColorDataset(processor, n), collate_fn=collate_fn)
    if rank == 0:
        with open(out_file, "w") as f:
            weight = model.model.language_model.layers[0].mlp.up_proj.weight
            json.dump({"losses": res.losses, "steps": res.steps, "param_type": type(weight).__name__}, f)


def plain_base(path, family: str = "llava"):
    """A tiny checkpoint in ``path`` whose processor carries the stage-1 ``plain`` template; returns the path."""
    from llavakit.train.build import build_model
    from llavakit.train.recipe import ModelSpec

    model, processor = build_model(ModelSpec(init=f"tiny:{family}", template="plain"))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
