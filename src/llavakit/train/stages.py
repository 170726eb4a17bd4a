"""Training stages: which parameters train, at which learning rate; everything else is frozen.

==========  ==========================================================  ==========================
stage       trains                                                      learning rates
==========  ==========================================================  ==========================
stage1      projector + image_newline (the connector)                   ``lr``
stage2      connector + decoder (+ the vision tower if ``vision_lr``)   ``lr`` / ``projector_lr`` /
                                                                        ``vision_lr``
lora        LoRA A/B on the decoder's ``target_modules`` + projector    ``lr`` (LoRA), ``projector_lr``
qlora       as lora, base weights in 4 bits (bitsandbytes, CUDA only)   as lora
==========  ==========================================================  ==========================

``apply_stage(model, spec)`` sets ``requires_grad`` and returns AdamW parameter groups, one per part, each with
its own ``lr`` and ``name``. Biases and norm weights get no weight decay (as in HF Trainer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from . import ranges
from .ranges import RecipeError

STAGES = ("stage1", "stage2", "lora", "qlora")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSpec:
    """LoRA hyperparameters (the llava-v1.5 LoRA recipe: rank 128, alpha 256, dropout 0.05, all decoder linears)."""

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        ranges.at_least("stage.lora.rank", self.rank, 1)
        ranges.above("stage.lora.alpha", self.alpha, 0)
        ranges.in_range("stage.lora.dropout", self.dropout, 0, 1)
        if not self.target_modules:
            raise RecipeError("stage.lora.target_modules must name at least one module, e.g. [q_proj, v_proj]")


@dataclass
class StageSpec:
    name: str = "stage2"
    lr: float = 2e-5  # decoder (stage2), LoRA weights (lora), projector (stage1)
    projector_lr: float | None = None  # None -> lr
    vision_lr: float | None = None  # stage2 only: train the vision tower at this rate (None -> frozen)
    weight_decay: float = 0.0
    lora: LoraSpec = field(default_factory=LoraSpec)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.name not in STAGES:
            raise ValueError(f"unknown stage {self.name!r}; choose one of {', '.join(STAGES)}")
        if self.name == "qlora":  # refused with the recipe, before the model and the data are loaded
            check_qlora_supported()
        if self.vision_lr is not None and self.name != "stage2":
            raise ValueError(f"vision_lr is only used by stage2 (this recipe's stage is {self.name}); remove it")
        hint = " (a learning rate such as 2e-5)"
        ranges.above("stage.lr", self.lr, 0, hint)
        for key, lr in (("stage.projector_lr", self.projector_lr), ("stage.vision_lr", self.vision_lr)):
            if lr is not None:
                ranges.above(key, lr, 0, hint + " or null")
        ranges.at_least("stage.weight_decay", self.weight_decay, 0)
        if not isinstance(self.lora, LoraSpec):
            raise RecipeError(f"stage.lora must be a mapping of LoRA settings, got {self.lora!r}")
        self.lora.check()
        if self.name not in ("lora", "qlora") and self.lora != LoraSpec():
            raise RecipeError(
                f"stage.lora settings are used only by stage lora (this recipe's stage is {self.name}); "
                "remove them, or set stage.name=lora"
            )


def connector_params(model: nn.Module, with_newline: bool = True) -> list[tuple[str, nn.Parameter]]:
    """The projector (and ``image_newline``) parameters, the part every stage trains."""
    out = [(n, p) for n, p in model.named_parameters() if n.startswith("model.multi_modal_projector.")]
    if with_newline:
        out += [(n, p) for n, p in model.named_parameters() if n == "model.image_newline"]
    return out


def check_qlora_supported() -> None:
    """QLoRA is not implemented: refuse it by name, pointing to LoRA (it said "needs a CUDA GPU" on a CPU, as if a
    GPU would run it)."""
    raise ValueError(
        "stage qlora is not implemented in llavakit yet (it would need bitsandbytes' 4-bit kernels on a CUDA GPU); "
        "use stage lora"
    )


def apply_stage(model: nn.Module, spec: StageSpec) -> list[dict]:
    """Freeze everything, unfreeze what ``spec`` names, return AdamW param groups (names in ``group["names"]``).

    For lora/qlora the LoRA modules are inserted here (``llavakit.train.lora.apply_lora``).
    """
    spec.check()  # a spec changed after it was built (qlora, say) is refused as one built so
    if spec.name == "lora":
        from .lora import apply_lora

        apply_lora(model, spec.lora)
    for p in model.parameters():
        p.requires_grad_(False)
    proj_lr = spec.projector_lr if spec.projector_lr is not None else spec.lr
    parts: list[tuple[str, float, list[tuple[str, nn.Parameter]]]] = []
    if spec.name == "stage1":
        parts.append(("projector", proj_lr, connector_params(model)))
    elif spec.name == "stage2":
        parts.append(("projector", proj_lr, connector_params(model)))
        parts.append(("decoder", spec.lr, _named(model, ("model.language_model.", "lm_head."))))
        if spec.vision_lr is not None:
            parts.append(("vision", spec.vision_lr, _named(model, ("model.vision_tower.",))))
    else:  # lora
        parts.append(("projector", proj_lr, connector_params(model, with_newline=False)))
        parts.append(("lora", spec.lr, [(n, p) for n, p in model.named_parameters() if ".lora_" in n]))
    groups: list[dict] = []
    for name, lr, named in parts:
        if not named:
            continue
        for _, p in named:
            p.requires_grad_(True)
        decay = [(n, p) for n, p in named if p.dim() >= 2]
        no_decay = [(n, p) for n, p in named if p.dim() < 2]
        for suffix, members, wd in (("", decay, spec.weight_decay), ("_no_decay", no_decay, 0.0)):
            if members:
                groups.append(
                    {
                        "name": name + suffix,
                        "params": [p for _, p in members],
                        "names": [n for n, _ in members],
                        "lr": lr,
                        "weight_decay": wd,
                    }
                )
    if not groups:
        raise ValueError(f"stage {spec.name} found no parameters to train in this model")
    return groups


def _named(model: nn.Module, prefixes: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes) and ".lora_" not in n]


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]
