"""``llava train RECIPE.yaml key=value ...`` and ``llava merge-lora``: thin wrappers over recipe/loop/lora."""

from __future__ import annotations

import os
from pathlib import Path


def train_command(recipe: str, overrides: list[str], resume: bool = False, threads: int | None = None) -> int:
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    from .loop import train
    from .recipe import load_recipe

    r = load_recipe(recipe, list(overrides) + (["train.resume=true"] if resume else []))
    if threads is not None:  # per process (torchrun starts several)
        torch.set_num_threads(threads)
    res = train(r)
    if os.environ.get("RANK", "0") != "0":  # torchrun: one report, from the main process
        return 0
    if not res.finished:
        ckpt = Path(res.output_dir or ".") / "checkpoints" / f"step-{res.final_step:08d}"
        print(f"stopped after step {res.final_step} (train.stop_after), saved {ckpt}; continue with --resume")
    else:
        last = f" (last loss {res.losses[-1]:.4f})" if res.losses else ""
        print(f"trained to step {res.final_step}{last}; wrote {res.output_dir}")
    if res.skipped:
        print(skipped_note(res.skipped))
    return 0


def skipped_note(skipped: dict[str, int]) -> str:
    """What ``TrainResult.skipped`` says, for people: {"too_long": 2} -> "left out 2 records (too_long 2); ..."."""
    n = sum(skipped.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    return (
        f"left out {n} record{'s' * (n != 1)} ({reasons}): each that failed while training was replaced by the next "
        "one in the data; `llava data check` lists them"
    )


def merge_lora_cli(base: str, adapter: str, out: str, dtype: str | None = None) -> int:
    """``llava merge-lora``: its paths checked first (an empty one, an --out holding files), as ``convert``'s are."""
    from ..commands import check_given, new_output_dir, output_error
    from .lora import merge_lora_command

    check_given(base, "--base", "the checkpoint directory the adapter was trained on")
    check_given(adapter, "--adapter", "the adapter directory")
    target = new_output_dir(out, "--out", "the merged checkpoint")
    try:
        path = merge_lora_command(base, adapter, out, dtype)
    except OSError as e:
        raise output_error(e, target, "the merged checkpoint", "--out") from None
    print(f"wrote {path}")
    return 0


def add_parsers(sub) -> None:  # noqa: ANN001
    """Register ``llava train`` and ``llava merge-lora`` on the CLI's subparsers."""
    t = sub.add_parser("train", help="train from a YAML recipe (stage 1, stage 2, LoRA); key=value overrides")
    t.add_argument("recipe", help="recipe YAML (see recipes/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100 stage.lr=1e-4")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output_dir")
    t.add_argument(
        "--threads", type=int, help="torch threads per process (default: torch's, one per core; 1 on a busy machine)"
    )
    t.set_defaults(func=lambda a: train_command(a.recipe, a.overrides, a.resume, a.threads))

    m = sub.add_parser("merge-lora", help="base checkpoint + LoRA adapter -> a plain HF checkpoint")
    m.add_argument("--base", required=True, help="the checkpoint the adapter was trained on")
    m.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json, PEFT format)")
    m.add_argument("--out", required=True, help="output directory")
    m.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="store the merged weights in this dtype")
    m.set_defaults(func=lambda a: merge_lora_cli(a.base, a.adapter, a.out, a.dtype))
