"""Training recipes: a YAML file of four sections (and an optional fifth), dotted ``key=value`` overrides, every
field type-checked.

    model:  where the weights come from (a full LLaVA checkpoint, or a base decoder + a vision tower + a fresh
            projector as in the original stage 1) and the processor's conversation template
    stage:  what trains at which learning rate (llavakit.train.stages.StageSpec)
    data:   datasets (the data helper's build_dataset spec), template, max_length
    train:  batch sizes, schedule, precision, checkpointing, output directory
    distill: (optional) a frozen teacher whose hidden states the model is pulled to (llavakit.train.distill)

    recipe = load_recipe("recipes/tiny-finetune.yaml", ["train.max_steps=5", "stage.lr=1e-4"])

An unknown key or a value of the wrong type raises ValueError naming the key (and the closest known key); a value
outside its range (``train.micro_batch_size=0``, ``stage.lr=-1``, ``train.warmup_ratio=5``) raises RecipeError (a
ValueError) naming the key and its range, when the dataclasses are built, so every entry point gets the checks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ranges
from .ranges import RecipeError
from .recipe_yaml import apply_overrides, build, read_recipe_file
from .stages import StageSpec


@dataclass
class ModelSpec:
    init: str | None = None  # a full LLaVA checkpoint (HF or original format), or "tiny:<family>" (random, tests)
    decoder: str | None = None  # or: a base decoder checkpoint (HF Llama / Qwen2 / Mistral directory) ...
    vision_tower: str | None = None  # ... plus a vision tower (HF CLIP / SigLIP directory), fresh projector
    family: str = "llava"  # for decoder + vision_tower: llava | llava_next | llava_onevision
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_grid_pinpoints: list[list[int]] | None = None  # (height, width) pairs; None = the family's default
    vision_aspect_ratio: str | None = None  # OneVision: anyres_max_9
    # conversation template for the processor (None: data.template, else the checkpoint's / family's)
    template: str | None = None
    seed: int = 0  # init of fresh parts (projector, tiny models)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        ranges.seed("model.seed", self.seed)
        # anything else built a "full" model (CLS token kept) silently, e.g. the original LLaVA's "patch"
        ranges.one_of("model.vision_feature_select_strategy", self.vision_feature_select_strategy, ("default", "full"))
        if self.init and not (self.decoder or self.vision_tower):  # both: build_model refuses that first
            built = [k for k in PARTS_ONLY if getattr(self, k) != PARTS_ONLY_DEFAULTS[k]]
            if built:
                raise RecipeError(
                    f"model.{', model.'.join(built)}: these apply only when building from decoder + vision_tower; "
                    "model.init brings its own, so remove them"
                )
        for i, pair in enumerate(self.image_grid_pinpoints or []):
            if len(pair) != 2:
                raise RecipeError(f"model.image_grid_pinpoints[{i}] must be a [height, width] pair, got {pair!r}")
            for v in pair:
                ranges.at_least(f"model.image_grid_pinpoints[{i}]", v, 1, " (pixels)")


# settings that shape a model built from decoder + vision_tower; an init checkpoint brings its own
PARTS_ONLY = (
    "family",
    "projector_type",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "image_grid_pinpoints",
    "vision_aspect_ratio",
)
PARTS_ONLY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelSpec) if f.name in PARTS_ONLY}


@dataclass
class DataSpec:
    datasets: list[dict[str, Any]] = field(default_factory=list)  # [{path, image_folder, weight}, ...]
    path: str | None = None  # or one dataset: a LLaVA .json / .jsonl ...
    image_folder: str | None = None  # ... and its image root
    num_frames: int = 32  # frames sampled from a video folder
    seed: int = 0  # picks the fractional part of mixture weights
    template: str | None = None  # None -> the processor's template; the saved processor gets the one trained with
    max_length: int = 2048
    on_error: str = "raise"  # raise | skip
    group_by_modality_length: bool = True
    # [start, end]: hide background image tokens from attention with a probability going linearly from start
    # (first step) to end (last step); for images on a plain background (llavakit.train.foreground)
    background_drop: list[float] | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        ranges.at_least("data.max_length", self.max_length, 1, " (tokens per sample, e.g. 2048)")
        ranges.at_least("data.num_frames", self.num_frames, 1)
        ranges.seed("data.seed", self.seed)
        ranges.one_of("data.on_error", self.on_error, ("raise", "skip"))
        if self.datasets and self.path:
            raise RecipeError("data: give either path (one dataset) or datasets (a mixture), not both")
        drop = self.background_drop
        if drop is not None and (len(drop) != 2 or not all(math.isfinite(x) and 0 <= x <= 1 for x in drop)):
            raise RecipeError(f"data.background_drop must be [start, end] probabilities in [0, 1], got {drop}")


@dataclass
class TrainSpec:
    output_dir: str = "runs/llava"
    epochs: float = 1.0
    max_steps: int | None = None  # None -> ceil(epochs * ceil(samples / global_batch_size)), as HF's Trainer
    global_batch_size: int = 128
    micro_batch_size: int = 4  # per process; accumulation = global / (micro * processes)
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | constant
    max_grad_norm: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    bf16: bool = False  # bfloat16 autocast (weights and optimizer stay float32)
    gradient_checkpointing: bool = False
    seed: int = 42
    log_every: int = 1
    save_every: int = 500  # steps between checkpoints (0: only the final output)
    keep_last: int = 2
    resume: bool = False  # continue from the newest checkpoint in output_dir/checkpoints
    allow_data_change: bool = False  # resume although the data files changed since the run started
    stop_after: int | None = None  # end after this many steps of this call, with a checkpoint to resume from
    distributed: str = "ddp"  # ddp | fsdp  (used when launched with torchrun on several processes)
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not str(self.output_dir).strip():
            raise RecipeError("train.output_dir must not be empty; give the run's output directory")
        ranges.above("train.epochs", self.epochs, 0)
        if self.max_steps == -1 and not isinstance(self.max_steps, bool):
            self.max_steps = None  # transformers' TrainingArguments spelling of "the epochs decide"
        if self.max_steps is not None:
            ranges.at_least("train.max_steps", self.max_steps, 1, " (or null / -1 to let train.epochs decide)")
        ranges.at_least("train.global_batch_size", self.global_batch_size, 1)
        ranges.at_least("train.micro_batch_size", self.micro_batch_size, 1)
        if self.global_batch_size % self.micro_batch_size:
            raise RecipeError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.micro_batch_size}); change one of them"
            )
        ranges.in_range("train.warmup_ratio", self.warmup_ratio, 0, 1, " (a fraction of the steps, e.g. 0.03)")
        ranges.one_of("train.schedule", self.schedule, ("cosine", "constant"))
        ranges.at_least("train.max_grad_norm", self.max_grad_norm, 0, " (0 turns clipping off)")
        if len(self.adam_betas) != 2:
            raise RecipeError(f"train.adam_betas must be two values [beta1, beta2], got {self.adam_betas}")
        for v in self.adam_betas:
            ranges.in_range("train.adam_betas", v, 0, 1)
        ranges.above("train.adam_eps", self.adam_eps, 0)
        ranges.seed("train.seed", self.seed)
        ranges.at_least("train.log_every", self.log_every, 1)
        ranges.at_least("train.save_every", self.save_every, 0, " (0: only the final output)")
        ranges.at_least("train.keep_last", self.keep_last, 1, " (checkpoints kept; train.save_every=0 saves none)")
        if self.stop_after is not None:
            ranges.at_least("train.stop_after", self.stop_after, 1, " (or null)")
        ranges.one_of("train.distributed", self.distributed, ("ddp", "fsdp"))
        ranges.one_of("train.device", self.device, ("auto", "cpu", "cuda"))


@dataclass
class DistillSpec:
    """Hidden-state distillation from a frozen teacher of the student's shape (llavakit.train.distill); off unless
    ``teacher`` is given."""

    teacher: str | None = None  # a LLaVA checkpoint (directory or hub id) with the student's layers and width
    weight: float = 1.0  # the term's weight against the CE sum
    turns_with: str | None = None  # only the turns whose prompt holds this token (e.g. " many"); None: every turn

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        ranges.above("distill.weight", self.weight, 0)
        if self.teacher is not None and not str(self.teacher).strip():
            raise RecipeError("distill.teacher must not be empty; give a checkpoint, or null for no distillation")
        if not self.teacher and (self.weight != 1.0 or self.turns_with is not None):
            raise RecipeError(
                "distill.weight and distill.turns_with apply only with distill.teacher: give the teacher, or "
                "remove them"
            )


@dataclass
class Recipe:
    model: ModelSpec = field(default_factory=ModelSpec)
    stage: StageSpec = field(default_factory=StageSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        self.check_templates()
        self.check_distill()

    def check(self) -> None:
        """Run every section's range checks again (a recipe changed after it was built); RecipeError if bad."""
        for section in (self.model, self.stage, self.data, self.train, self.distill):
            section.check()
        self.check_templates()
        self.check_distill()

    def check_distill(self) -> None:
        if self.distill.teacher and self.train.distributed == "fsdp":
            raise RecipeError(
                "distill.teacher with train.distributed=fsdp: the teacher would be a whole copy beside each shard, "
                "and this pairing is untested; use train.distributed=ddp (or no distillation)"
            )

    def check_templates(self) -> None:
        """The run trains with data.template and saves its processor with it; model.template may only agree. Each
        template named (also a mixture entry's) must exist: found before the model loads, not at the first step."""
        from ..processing.templates import check_template_name

        m, d = self.model.template, self.data.template
        entries = [(f"data.datasets[{k}].template", e) for k, e in enumerate(self.data.datasets or [])]
        named = [("model.template", m), ("data.template", d)]
        named += [(key, e.get("template")) for key, e in entries if isinstance(e, dict)]
        for key, name in named:
            if name is None:
                continue
            try:  # "chat_template": the checkpoint's Jinja template, which only the processor can tell is there
                check_template_name(name, has_chat_template=True)
            except ValueError as e:
                raise RecipeError(f"{key}: {e}") from None
        if m and d and m != d:
            raise RecipeError(
                f"model.template {m!r} and data.template {d!r} disagree; the run trains and saves one template: "
                "give one of them, or the same in both"
            )


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw = read_recipe_file(path, "recipe", "sections (model, stage, data, train, distill)") if path is not None else {}
    apply_overrides(raw, overrides, "section.key=value, e.g. train.max_steps=10")
    return build(Recipe, raw, "")
