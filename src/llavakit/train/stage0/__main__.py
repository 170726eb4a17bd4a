"""``python -m llavakit.train.stage0 RECIPE.yaml [key=value ...]``: train the stage-0 parts."""

import sys

from . import load_stage0_recipe, run_stage0

if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python -m llavakit.train.stage0 RECIPE.yaml [key=value ...]")
        sys.exit(2)
    run_stage0(load_stage0_recipe(sys.argv[1], sys.argv[2:]))
