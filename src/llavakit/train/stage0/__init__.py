"""Stage 0 of the tiny synthetic recipe: the parts a real LLaVA recipe downloads (a tokenizer, a CLIP vision tower,
a base decoder), trained here from synthetic scenes because nothing can be downloaded.

``STEPS`` names the parts in order; `run_stage0` trains them all from a `Stage0Recipe`
(YAML: recipes/tiny-synth-stage0.yaml).
"""

from .run import STEPS, Stage0Recipe, load_stage0_recipe, run_stage0

__all__ = ["STEPS", "Stage0Recipe", "load_stage0_recipe", "run_stage0"]
