"""The recipe's grounding pass on its own (``llavakit.train.grounding``; ``train_default_model.py`` runs it).

    python scripts/ground_attention.py STAGE1_DIR DATA_DIR OUT [--steps 300]

From a stage-1 checkpoint, trains the projector and the first decoder layer's query / key projections so that the
word naming an object in "What color is the KIND?" / "What shape is the COLOUR object?" attends to that object's
image tokens; writes a checkpoint for stage 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from llavakit.train.grounding import ground


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("init")
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--template", default="vicuna_v1", help="the template questions are asked in (stage 2's)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    history = ground(
        a.init, a.data, a.out, examples_n=a.examples, steps=a.steps, batch=a.batch, lr=a.lr, template=a.template
    )
    print(f"wrote {a.out}")
    return history


if __name__ == "__main__":
    main()
    sys.exit(0)
