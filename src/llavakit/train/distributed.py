"""One process or many (``torchrun --nproc-per-node N -m llavakit.cli train ...``): the loop code is the same.

``setup()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts a process group: NCCL on
GPUs, gloo on CPUs. ``wrap()`` puts the model under DDP, or FSDP2 (``fully_shard`` on every decoder block and
vision encoder layer, then the root). State dicts go through ``torch.distributed.checkpoint.state_dict`` with
``full_state_dict=True``: checkpoints hold the whole (gathered) model and optimizer keyed by parameter name, so
a run saved with N processes resumes with any other number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # none | ddp | fsdp
    owns_group: bool = False  # setup started the process group (teardown ends only that one)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str = "auto", strategy: str = "ddp") -> Dist:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"train.distributed must be ddp or fsdp, got {strategy!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; use train.device=cpu")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    mode = strategy if world > 1 else "none"
    return Dist(rank=rank, world=world, local_rank=local, device=dev, strategy=mode, owns_group=owns)


def teardown(d: Dist) -> None:
    """End the process group ``setup`` started; one the caller started stays for the caller's own collectives."""
    if d.active and d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """DDP or FSDP2 around ``model`` (unchanged on one process)."""
    if d.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.device.index] if d.device.type == "cuda" else None
        # some micro-batches have no image (text-only samples): the projector then gets no gradient
        return DDP(model, device_ids=ids, find_unused_parameters=True)
    if d.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.language_model.layers:
            fully_shard(layer)
        for layer in model.model.vision_tower.vision_model.encoder.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def all_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of ``x`` over processes (a copy; ``x`` itself untouched)."""
    x = x.detach().clone()
    if d.active:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_objects(obj: object, d: Dist) -> list:
    if not d.active:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state dict on the CPU, names as in the unwrapped model (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict, optim_sd: dict | None):
    """Load gathered state dicts (every process passes the full dicts) into a (possibly sharded) model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, model_sd, options=opts)
    if optimizer is not None and optim_sd is not None:
        # a trained parameter that never got a gradient (the vision tower's last layer, unused with features of
        # layer -2; the projector after text-only steps) has no AdamW state yet: not strict about those, and they
        # stay without state (AdamW starts it at their first gradient, as in the run that was not interrupted)
        names = {p: n for n, p in unwrap(model).named_parameters()}
        trained = [names[p] for g in optimizer.param_groups for p in g["params"]]
        stray = set(optim_sd.get("state", {})) - set(trained)
        if stray:
            raise ValueError(f"optimizer state for parameters this run does not train: {', '.join(sorted(stray)[:3])}")
        set_optimizer_state_dict(
            model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True, strict=False)
        )
        for p in [p for g in optimizer.param_groups for p in g["params"]]:
            if names[p] not in optim_sd.get("state", {}):
                optimizer.state.pop(p, None)
