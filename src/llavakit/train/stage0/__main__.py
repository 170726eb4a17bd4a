"""``python -m llavakit.train.stage0 RECIPE.yaml [key=value ...]``: train the stage-0 parts."""

import sys

from . import load_stage0_recipe, run_stage0

if __name__ == "__main__":
    usage = (
        "usage: python -m llavakit.train.stage0 RECIPE.yaml [key=value ...]\n"
        "trains the stage-0 parts a real recipe downloads (tokenizer, vision tower, decoder) into output_dir, e.g.\n"
        "  python -m llavakit.train.stage0 recipes/tiny-synth-stage0.yaml output_dir=runs/stage0 threads=2"
    )
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    try:
        run_stage0(load_stage0_recipe(sys.argv[1], sys.argv[2:]))
    except (OSError, ValueError) as e:  # a missing recipe, an unknown or invalid key: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
