"""Filling a meta-device module with a checkpoint's tensors, one at a time (:func:`load_into`), and what did not
match: missing, unexpected, wrongly shaped tensors (:class:`LoadResult`, :class:`CheckpointMismatchError`).

Nothing here holds two copies of the weights: each tensor is cast to the target dtype / device and assigned to
its parameter before the next one is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A strict load found missing, unexpected or wrongly shaped tensors."""


@dataclass
class LoadResult:
    """What :func:`load_into` did not match (all empty after a successful strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint (a, b) vs model (c, d)" (or dtypes)
    skipped_tied: list[str] = field(default_factory=list)  # e.g. lm_head.weight when embeddings are tied
    untied: list[str] = field(default_factory=list)  # tied in the model, stored with other values: given their own


def _with_held_aliases(
    tensors: Iterable[tuple[str, torch.Tensor]], aliases: dict[str, str], held: dict[str, torch.Tensor]
) -> Iterable[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors, with those stored under a tied alias kept in ``held`` (compared after loading)
    and given to the shared parameter only when its first name is not in the checkpoint."""
    seen: set[str] = set()
    for name, tensor in tensors:
        if name in aliases:
            held[name] = tensor
            continue
        seen.add(name)
        yield name, tensor
    for alias, tensor in list(held.items()):
        if aliases[alias] not in seen:  # the checkpoint has only this name: it fills the shared tensor
            del held[alias]
            yield aliases[alias], tensor


def load_into(
    module: nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    strict: bool = True,
) -> LoadResult:
    """Assign checkpoint tensors to ``module`` (typically built under ``torch.device("meta")``), one by one.

    Each floating tensor is cast to ``dtype`` (when given; norms stored in float32 included, like HF's
    ``torch_dtype``) and moved to ``device`` (default: CPU) as it is read, then put in place of the module's
    parameter or buffer, so peak memory is the model plus one tensor. Integer tensors keep their dtype.

    Tied parameters (the same Parameter reachable under two names, e.g. ``lm_head.weight`` and
    ``model.language_model.embed_tokens.weight``) are filled once and re-tied; a checkpoint copy under the other
    name fills them when the first name is absent, is skipped when equal, and when it holds other values (a config
    that says tied over weights that are not) gets its own parameter and is listed in ``untied``, as transformers
    keeps both: the caller unties its config.

    With ``strict`` any missing, unexpected or wrongly shaped tensor raises one CheckpointMismatchError
    listing them and the likely cause; otherwise they are returned (unfilled tensors stay on meta).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    slots: dict[str, tuple[nn.Module, str, bool]] = {}  # name -> (owner, attribute, is_parameter)
    primary: dict[int, str] = {}  # id(tensor) -> first name
    aliases: dict[str, str] = {}  # secondary name -> primary name
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, t in [*mod._parameters.items(), *mod._buffers.items()]:
            if t is None or (attr in mod._buffers and attr in mod._non_persistent_buffers_set):
                continue
            name = prefix + attr
            if id(t) in primary and primary[id(t)] != name:
                aliases[name] = primary[id(t)]
            else:
                primary.setdefault(id(t), name)
                slots[name] = (mod, attr, attr in mod._parameters)
    result = LoadResult()
    loaded: set[str] = set()
    held: dict[str, torch.Tensor] = {}  # alias name -> its checkpoint tensor, settled once every tensor is read
    for name, tensor in _with_held_aliases(tensors, aliases, held):
        if name not in slots:
            result.unexpected.append(name)
            continue
        owner, attr, is_param = slots[name]
        current = getattr(owner, attr)
        if tuple(tensor.shape) != tuple(current.shape):
            result.mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(current.shape)}")
            loaded.add(name)  # reported as mismatched, not again as missing
            continue
        if current.is_floating_point() and not tensor.is_floating_point():
            result.mismatched.append(f"{name}: checkpoint {tensor.dtype} vs model floating point")
            loaded.add(name)
            continue
        cast = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
        value = tensor.to(device=device, dtype=cast)
        if is_param:
            grad = current.requires_grad and value.is_floating_point()
            owner._parameters[attr] = nn.Parameter(value, requires_grad=grad)
        else:
            owner._buffers[attr] = value
        loaded.add(name)
    for alias, name in aliases.items():  # re-tie: point every alias at the freshly loaded tensor
        owner, attr, is_param = slots[name]
        alias_owner, _, alias_attr = alias.rpartition(".")
        target = module.get_submodule(alias_owner) if alias_owner else module
        store = target._parameters if is_param else target._buffers
        shared = (owner._parameters if is_param else owner._buffers)[attr]
        store[alias_attr] = shared
        stored = held.pop(alias, None)
        if stored is None or name not in loaded:
            continue
        if tuple(stored.shape) != tuple(shared.shape):
            result.mismatched.append(f"{alias}: checkpoint {tuple(stored.shape)} vs model {tuple(shared.shape)}")
            continue
        if shared.is_floating_point() and not stored.is_floating_point():
            result.mismatched.append(f"{alias}: checkpoint {stored.dtype} vs model floating point")
            continue
        value = stored.to(device=shared.device, dtype=shared.dtype)
        if torch.equal(value, shared):
            result.skipped_tied.append(alias)
        else:  # tied in the model, different in the checkpoint: the stored weights win, untied
            store[alias_attr] = nn.Parameter(value, requires_grad=shared.requires_grad) if is_param else value
            result.untied.append(alias)
    result.missing = [n for n in slots if n not in loaded]  # still on their original (meta) device
    if strict and (result.missing or result.unexpected or result.mismatched):
        raise CheckpointMismatchError(_mismatch_message(result))
    return result


def _mismatch_message(r: LoadResult, show: int = 20) -> str:
    parts = ["checkpoint does not match the model:"]
    found = (("missing", r.missing), ("unexpected", r.unexpected), ("wrong shape or dtype", r.mismatched))
    for label, names in found:
        if names:
            more = f" ... (+{len(names) - show} more)" if len(names) > show else ""
            parts.append(f"  {len(names)} {label}: " + ", ".join(names[:show]) + more)
    parts.append("likely cause: " + _likely_cause(r))
    return "\n".join(parts)


def _likely_cause(r: LoadResult) -> str:
    unexpected = r.unexpected
    if any(k.startswith(("language_model.", "vision_tower.", "multi_modal_projector.")) for k in unexpected):
        return "the checkpoint is in the pre-4.52 HF layout; rename with keymaps.rename_tensors(..., 'hf_old')"
    if any(
        k.startswith(("model.layers.", "model.mm_projector", "model.vision_tower.vision_tower.")) for k in unexpected
    ):
        return "the checkpoint is in the original LLaVA layout; convert it first (`llava convert SRC DST`)"
    if r.mismatched and all(" vs model floating point" in m for m in r.mismatched):
        return "integer tensors where weights belong: a quantized or corrupted export; save the float weights"
    if r.mismatched:
        return "the config does not describe this checkpoint (model_type, vocab size or hidden sizes differ)"
    if r.missing and all(k.startswith("model.vision_tower.") for k in r.missing):
        return (
            "the vision tower weights are absent: original checkpoints often keep them in the separate "
            "model named by mm_vision_tower; pass that directory when converting"
        )
    if r.missing == ["lm_head.weight"] and not unexpected:
        return (
            "only the LM head is absent: the checkpoint ties it to the input embeddings (saved once, as "
            'model.language_model.embed_tokens.weight) but config.json does not; set "tie_word_embeddings": true '
            "in config.json"
        )
    if r.missing and not unexpected:
        return "a truncated download or a missing shard (or a config with more layers than the checkpoint)"
    if unexpected and not r.missing:
        return "the config describes a smaller model than the checkpoint (layers / model_type / tied embeddings)"
    return "wrong model_type or key layout for this checkpoint"
