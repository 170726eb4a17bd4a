"""LoRA by module swapping: each targeted ``nn.Linear`` becomes a ``LoRALinear`` (same ``weight``/``bias``, plus
``lora_A``/``lora_B``); the model's forward is untouched.

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r), B starts at zero

Adapters are saved in PEFT's format so PEFT-based tools load them onto the transformers model::

    adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "target_modules": "<regex>", ...}
    adapter_model.safetensors  base_model.model.<module path>.lora_A.weight / .lora_B.weight
                               base_model.model.model.multi_modal_projector.linear_k.{weight,bias}  (modules_to_save)
    processor files            a training run's adapter/ also holds its processor (tokenizer, chat template):
                               ``llava merge-lora`` gives the merged model the template the adapter trained with

Module paths equal transformers' (``model.language_model.layers.0.self_attn.q_proj``), so the keys line up.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.keymaps import VISION
from .stages import LoraSpec

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DECODER = "model.language_model."
MODULES_TO_SAVE = ["multi_modal_projector"]


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank update; shares the base layer's ``weight`` and ``bias`` Parameters."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + scaling * B @ A`` (computed in float32, stored in W's dtype)."""
        w = self.weight.detach()
        delta = (self.lora_B.weight.detach().float() @ self.lora_A.weight.detach().float()) * self.scaling
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_((w.float() + delta).to(w.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias.detach())
        return out


def target_regex(targets: list[str]) -> str:
    """PEFT ``target_modules`` as a regex (full match on module names) limited to the decoder.

    >>> target_regex(["q_proj", "v_proj"])
    'model\\\\.language_model\\\\.layers\\\\.\\\\d+\\\\..*\\\\.(q_proj|v_proj)'
    """
    return re.escape(DECODER + "layers.") + r"\d+\..*\.(" + "|".join(re.escape(t) for t in targets) + ")"


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Swap every decoder Linear whose last name is in ``spec.target_modules`` for a LoRALinear; returns names."""
    pattern = re.compile(target_regex(spec.target_modules))
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and pattern.fullmatch(n)]
    if not names:
        raise ValueError(
            f"LoRA target_modules {spec.target_modules} match no Linear layer of the decoder; "
            f"decoder linears are named e.g. {', '.join(DEFAULT_EXAMPLES)}"
        )
    unmatched = [t for t in spec.target_modules if not any(n.rsplit(".", 1)[-1] == t for n in names)]
    if unmatched:
        raise ValueError(
            f"LoRA target_modules {unmatched} match no Linear layer of the decoder (a typo?); decoder linears are "
            f"named e.g. {', '.join(DEFAULT_EXAMPLES)}"
        )
    wrap_linears(model, names, spec)
    return names


DEFAULT_EXAMPLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def wrap_linears(model: nn.Module, names: list[str], spec: LoraSpec) -> None:
    """Swap the named ``nn.Linear`` layers for LoRALinear ones; names that are not a Linear of ``model`` are left
    (the adapter's tensors for them are then reported as ones the model lacks)."""
    for n in names:
        parent, _, attr = n.rpartition(".")
        try:
            owner = model.get_submodule(parent)
        except AttributeError:
            continue
        if type(getattr(owner, attr, None)) is nn.Linear:
            layer = LoRALinear(getattr(owner, attr), spec.rank, spec.alpha, spec.dropout)
            setattr(owner, attr, layer.train(owner.training))  # a model in eval mode keeps its dropout off


def merge_lora(model: nn.Module) -> int:
    """Replace each LoRALinear by its merged nn.Linear in place; returns how many were merged."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for n in names:
        parent, _, attr = n.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, getattr(owner, attr).merged())
    return len(names)


def lora_spec_of(model: nn.Module) -> LoraSpec:
    mods = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not mods:
        raise ValueError("the model has no LoRA layers")
    first = next(iter(mods.values()))
    targets = sorted({n.rsplit(".", 1)[-1] for n in mods})
    drop = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return LoraSpec(rank=first.rank, alpha=first.alpha, dropout=drop, target_modules=targets)


def adapter_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT-named adapter tensors (LoRA A/B and the projector) from a full model state dict."""
    out = {}
    for k, v in state_dict.items():
        if ".lora_A." in k or ".lora_B." in k or k.startswith("model.multi_modal_projector."):
            out[PEFT_PREFIX + k] = v
    return out


def save_adapter(
    model_or_state: nn.Module | dict[str, torch.Tensor],
    out_dir: str | Path,
    spec: LoraSpec | None = None,
    base_model: str | None = None,
) -> Path:
    """Write adapter_config.json + adapter_model.safetensors in PEFT's format."""
    from safetensors.torch import save_file

    from ..checkpoint.save import write_text_atomic

    if isinstance(model_or_state, nn.Module):
        spec = spec or lora_spec_of(model_or_state)
        state = model_or_state.state_dict()
    else:
        state = model_or_state
    if spec is None:
        raise ValueError("save_adapter needs the LoRA spec when given a state dict")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(state).items()}
    tmp = out / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / ADAPTER_WEIGHTS)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "revision": None,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": target_regex(spec.target_modules),
        "modules_to_save": list(MODULES_TO_SAVE),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    write_text_atomic(out / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def adapter_config(d: Path) -> dict:
    """The adapter directory's adapter_config.json (refused when missing or not a JSON object)."""
    if not d.exists():
        raise FileNotFoundError(
            f"adapter directory {d} does not exist; pass the adapter a LoRA run wrote (OUT/adapter)"
        )
    if not (d / ADAPTER_CONFIG).exists():
        raise FileNotFoundError(f"{d} has no {ADAPTER_CONFIG}: not a LoRA adapter directory")
    try:
        cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{d}/{ADAPTER_CONFIG} is not valid JSON ({e}); rewrite it or save the adapter again") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{d}/{ADAPTER_CONFIG} must hold a JSON object (PEFT's LoraConfig), got {cfg!r}")
    return cfg


def read_adapter(adapter_dir: str | Path) -> tuple[LoraSpec, dict[str, torch.Tensor]]:
    """The LoRA spec and current-layout tensors (``base_model.model.`` stripped) of a PEFT adapter directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg = adapter_config(d)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{d}/{ADAPTER_CONFIG}: peft_type {cfg.get('peft_type')!r}, only LORA is supported")
    if cfg.get("use_dora") or cfg.get("use_rslora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{d}: DoRA / rsLoRA / per-layer ranks are not supported by llavakit's LoRA")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        m = re.search(r"\(([^()]*)\)$", targets)
        targets = [t.replace("\\", "") for t in m.group(1).split("|")] if m else []
    if not targets:
        raise ValueError(f"{d}/{ADAPTER_CONFIG}: cannot read target_modules {cfg.get('target_modules')!r}")
    try:
        spec = LoraSpec(
            rank=int(cfg["r"]),
            alpha=float(cfg["lora_alpha"]),
            dropout=float(cfg.get("lora_dropout") or 0),
            target_modules=list(targets),
        )
    except KeyError as e:
        raise ValueError(f"{d}/{ADAPTER_CONFIG} lacks {e.args[0]!r} (PEFT's LoraConfig writes r and lora_alpha)") from e
    except (TypeError, ValueError) as e:
        raise ValueError(f"{d}/{ADAPTER_CONFIG}: bad r / lora_alpha / lora_dropout ({e})") from e
    path = d / ADAPTER_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{d} has no {ADAPTER_WEIGHTS}")
    try:
        loaded = load_file(str(path))
    except SafetensorError as e:  # not a ValueError: merge-lora / a resume would end in a traceback
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it is corrupt or cut short") from None
    tensors = {}
    for k, v in loaded.items():
        k = k.removeprefix(PEFT_PREFIX)
        k = k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        k = k.replace(".modules_to_save.default.", ".")
        if k.startswith("model.vision_tower.") and not k.startswith(VISION):  # transformers 5's in-memory tower
            k = VISION + k.removeprefix("model.vision_tower.")  # names (PEFT's keys) -> the file layout's
        tensors[k] = v
    return spec, tensors


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> LoraSpec:
    """Insert LoRA layers as the adapter describes and load its weights (and projector) into ``model``."""
    from ..checkpoint.adapter_base import check_adapter_base
    from ..config import LlavaConfig

    spec, tensors = read_adapter(adapter_dir)
    if isinstance(getattr(model, "config", None), LlavaConfig):  # an adapter of another model is refused by name
        check_adapter_base(Path(adapter_dir), adapter_config(Path(adapter_dir)), model.config, "the model")
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        apply_lora(model, spec)
        outside = sorted({k.split(".lora_A.")[0] for k in tensors if ".lora_A." in k and not k.startswith(DECODER)})
        wrap_linears(model, outside, spec)  # e.g. the vision tower's, which PEFT's target_modules may match too
    else:  # layers already there: their rank, scaling and targets must be the adapter's, or its weights mean else
        have = lora_spec_of(model)
        mine = (have.rank, have.alpha, sorted(have.target_modules))
        theirs = (spec.rank, spec.alpha, sorted(spec.target_modules))
        if mine != theirs:
            raise ValueError(
                f"adapter {adapter_dir} has rank {spec.rank}, alpha {spec.alpha}, targets {theirs[2]}; the model's "
                f"LoRA layers have rank {have.rank}, alpha {have.alpha}, targets {mine[2]}: load it onto the base "
                "model (no LoRA layers yet: load_adapter inserts them as the adapter describes)"
            )
    own = model.state_dict()
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise ValueError(f"adapter {adapter_dir} holds tensors this model lacks: {', '.join(unknown[:5])}")
    missing = [k for k in own if (".lora_A." in k or ".lora_B." in k) and k not in tensors]
    if missing:
        raise ValueError(f"adapter {adapter_dir} lacks LoRA tensors for: {', '.join(missing[:5])}")
    with torch.no_grad():
        for k, v in tensors.items():
            if own[k].shape != v.shape:
                raise ValueError(f"adapter tensor {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
            own[k].copy_(v)
    return spec


def merge_lora_command(base: str, adapter: str, out: str, dtype: str | None = None) -> Path:
    """``llava merge-lora``: base checkpoint + PEFT adapter -> a plain HF checkpoint (weights, config, processor).

    The processor (and so the prompt template) is the adapter directory's when the run saved one there, else the
    base checkpoint's (adapters from older llavakit versions or other tools); so is ``generation_config.json``
    (extra end-of-sequence ids). The merge is computed in float32 and
    stored in ``dtype``, else in the dtype the base checkpoint is stored in (as ``llava convert`` keeps it)."""
    from ..checkpoint.adapter_base import check_adapter_base
    from ..checkpoint.api import load_config, load_model, parse_dtype
    from ..checkpoint.convert import source_processor, stored_dtype, write_processor
    from ..checkpoint.hub import resolve_model_path
    from ..checkpoint.save import read_generation_config, write_generation_config
    from ..checkpoint.staging import staged_dir

    base_path = resolve_model_path(base)
    out_path = Path(out)
    if out_path.resolve() == base_path.resolve():
        raise ValueError("merge-lora writes a new directory; --out must differ from --base")
    # an adapter trained on another model (family, shapes) is refused before the weights are read
    check_adapter_base(Path(adapter), adapter_config(Path(adapter)), load_config(base_path)[0], f"--base {base}")
    processor, note = None, None
    if has_processor(Path(adapter)):  # the run's processor: the template the adapter was trained with
        from ..processing.processor import LlavaProcessor

        processor = LlavaProcessor.from_pretrained(adapter)
    else:  # an adapter without one (older llavakit, PEFT): the base checkpoint's
        processor, note = source_processor(base_path, None, "hf")
    target = parse_dtype(dtype) if dtype else stored_dtype(base_path)
    model = load_model(base_path, dtype=torch.float32)
    load_adapter(model, adapter)
    merge_lora(model)
    model.to(target)
    with staged_dir(out_path) as tmp:  # out appears only when complete: a failed merge can simply be run again
        model.save_pretrained(tmp)
        write_processor(processor, base_path, tmp)
        generation = read_generation_config(adapter) or read_generation_config(base_path)  # extra end-of-sequence ids
        write_generation_config(generation, tmp)
    if note:
        print(f"note: {note}")
    return out_path


def has_processor(adapter_dir: Path) -> bool:
    """True when the adapter directory holds a processor (a llavakit run's adapter/ or checkpoint)."""
    return (adapter_dir / "preprocessor_config.json").exists() or (adapter_dir / "processor_config.json").exists()
