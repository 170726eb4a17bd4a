"""``python -m llavakit.train.stage0 RECIPE.yaml [key=value ...]``: train the stage-0 parts."""

import sys

from . import load_stage0_recipe, run_stage0

if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python -m llavakit.train.stage0 RECIPE.yaml [key=value ...]")
        sys.exit(2)
    try:
        run_stage0(load_stage0_recipe(sys.argv[1], sys.argv[2:]))
    except (OSError, ValueError) as e:  # a missing recipe, an unknown or invalid key: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
