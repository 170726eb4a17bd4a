"""``llava <command>``: each subcommand is a plain typed function; argparse only wires flags to arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit code 2, no traceback."""


def cmd_convert(src: str, dst: str, vision_tower: str | None = None, dtype: str | None = None) -> int:
    """Convert an original-format (liuhaotian / lmms-lab) or old-layout HF checkpoint to the current HF layout."""
    from .checkpoint.convert import convert

    out = convert(src, dst, vision_tower=vision_tower, dtype=dtype)
    print(f"wrote {out}")
    return 0


def cmd_demo(model: str | None = None, seed: int = 0) -> int:
    """Run the main job on the default model (until it ships: on a tiny random-weight model, said plainly)."""
    from .demo import run_demo

    return run_demo(model=model, seed=seed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llava", description="LLaVA models: run, convert, train, serve, evaluate."
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="original / old-layout checkpoint -> current HF layout")
    c.add_argument("src", help="checkpoint directory (or hub id)")
    c.add_argument("dst", help="output directory")
    c.add_argument(
        "--vision-tower", help="local CLIP/SigLIP directory for original checkpoints (mm_vision_tower)"
    )
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="store weights in this dtype")
    c.set_defaults(func=lambda a: cmd_convert(a.src, a.dst, a.vision_tower, a.dtype))

    d = sub.add_parser("demo", help="answer questions about a few fresh images")
    d.add_argument("--model", help="model directory or hub id (default: the bundled model)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=lambda a: cmd_demo(a.model, a.seed))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, ValueError, FileNotFoundError, OSError) as e:
        print(f"llava {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
