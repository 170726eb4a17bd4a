"""Training checkpoints: ``OUT/checkpoints/step-00000050/`` written atomically (a temporary directory renamed
into place), the newest ``keep_last`` kept.

A checkpoint directory holds
    config.json, model.safetensors, processor files    the model in HF format (LoRA runs: the PEFT adapter
                                                         adapter_config.json + adapter_model.safetensors instead)
    trainer_state.pt      gathered optimizer state (keyed by parameter name), scheduler, RNG states per process,
                          step / epoch / data position, the run's step count (``train.batching``) and the data's
                          fingerprint (``train.fingerprint``)
    trainer_state.json    the same counters, readable
Because model and optimizer states are gathered (full), a run resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import random
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint.save import fsync_path, fsync_tree, save_config, save_state_dict, write_generation_config
from .distributed import Dist, barrier, full_model_state, full_optimizer_state, gather_objects, load_full_state
from .fingerprint import same_setting

_STEP = re.compile(r"step-(\d{8})")


def rng_state() -> dict[str, Any]:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP.fullmatch(p.name) and (p / "trainer_state.pt").exists()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    processor: Any,
    counters: dict[str, Any],
    d: Dist,
    keep_last: int,
    lora: Any = None,
    generation: str | None = None,
) -> Path:
    """Every process calls this (the state gathering is collective); the main process writes. ``generation``: the
    source's ``generation_config.json`` text, written beside the model (``write_model``)."""
    model_sd = full_model_state(model)
    optim_sd = full_optimizer_state(model, optimizer)
    rngs = gather_objects(rng_state(), d)
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    if d.main:
        tmp = root / f".tmp-step-{step:08d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write_model(tmp, model_sd, _config(model), processor, lora, generation=generation)
        state = {
            "optimizer": optim_sd,
            "scheduler": scheduler.state_dict(),
            "rng": rngs,
            "world": d.world,
            "trainable": _trainable(optimizer),
            **counters,
        }
        torch.save(state, tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "world": d.world, **counters}, indent=2))
        fsync_tree(tmp)  # on disk before the rename: a machine crash must not leave a renamed, empty checkpoint
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_path(root)
        for old in checkpoint_dirs(out_dir)[: -keep_last if keep_last > 0 else None]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def _trainable(optimizer: torch.optim.Optimizer) -> list[str]:
    """``group name: parameter count`` per optimizer group: what a checkpoint's optimizer state belongs to."""
    return [f"{g.get('name', i)}: {len(g['params'])}" for i, g in enumerate(optimizer.param_groups)]


def _config(model: nn.Module):  # noqa: ANN202
    from .distributed import unwrap

    return unwrap(model).config


def write_model(
    out: Path,
    state: dict[str, torch.Tensor],
    config: Any,
    processor: Any,
    lora: Any = None,
    base: str | None = None,
    generation: str | None = None,
) -> None:
    """HF-format model files (or, for LoRA, the PEFT adapter naming ``base`` as its base model) + processor files
    into ``out``, and ``generation`` (the source's ``generation_config.json`` text: its end-of-sequence ids, which
    the tokenizer read back from ``out`` stops on) when not None."""
    if lora is not None:
        from .lora import save_adapter

        save_adapter(state, out, lora, base_model=base)
    else:
        save_state_dict(state, out, tied=config.tie_word_embeddings)
        stored = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        save_config(config, out, dtype=stored)
    if processor is not None:
        processor.save_pretrained(out)
    write_generation_config(generation, out)


# recipe keys a resumed run may change: how it is watched and saved, not what it computes (the micro batch may
# change with the global batch kept: the same samples per step, the same sums)
# recipe sections added after runs were recorded without them, whose defaults compute what those runs did
ADDED_SECTIONS = ("distill.",)
RESUME_MAY_CHANGE = frozenset(
    {"train.resume", "train.progress", "train.stop_after", "train.log_every", "train.save_every", "train.keep_last",
     "train.micro_batch_size", "train.output_dir", "train.device", "train.distributed", "train.allow_data_change"}
)  # fmt: skip


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _flat(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def recipe_record(recipe: Any) -> dict[str, Any]:
    """The recipe as recipe.json and each checkpoint's trainer_state record it (JSON values only)."""
    return json.loads(json.dumps(recipe.to_dict(), default=str))


def check_same_recipe(
    saved_path: Path,
    recipe: Any,
    checkpoint_recipe: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    was_cwd: str | None = None,
) -> None:
    """Refuse to resume under a recipe that computes something else than the one that wrote the checkpoint (the
    recipe its trainer_state records; for checkpoints from before that, the run's ``recipe.json``): the
    optimizer and scheduler states carry the old learning rates and the data order the old batch size, so new
    values would be ignored or skip data while the record claimed them. A path naming the same file as before
    (``fingerprint.PATH_KEYS``; a relative one relative to ``was_cwd``, where that run ran, when recorded) is the
    same value: the data's contents are checked by their fingerprint."""
    if checkpoint_recipe is not None:
        saved, source = _flat(checkpoint_recipe), f"the one that wrote {checkpoint}"
    elif not saved_path.is_file():
        return  # a run from before recipe.json was written: nothing to compare
    else:
        try:
            saved, source = _flat(json.loads(saved_path.read_text())), f"the one that started the run ({saved_path})"
        except (ValueError, AttributeError) as e:  # cut short (a power loss), or not our file
            raise ValueError(
                f"train.resume: {saved_path} is unreadable ({type(e).__name__}); restore it from a copy, or delete it "
                "to resume without comparing the recipe against the one that started the run"
            ) from None
    now = _flat(recipe_record(recipe))
    if dataclasses.is_dataclass(recipe):  # a section added since that run was recorded: its defaults there
        added = _flat(recipe_record(type(recipe)()))
        saved = {**{k: v for k, v in added.items() if k.startswith(ADDED_SECTIONS)}, **saved}
    # a distilled run's term is normalised per micro-batch (llavakit.train.distill): its split may not change
    may_change = RESUME_MAY_CHANGE - ({"train.micro_batch_size"} if now.get("distill.teacher") else set())
    keys = saved.keys() | now.keys()
    diff = sorted(k for k in keys if k not in may_change and not same_setting(k, saved.get(k), now.get(k), was_cwd))
    if diff:
        said = "; ".join(f"{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in diff[:5])
        raise ValueError(
            f"train.resume: this recipe differs from {source}: {said}; resume with the same recipe, or start a new "
            "train.output_dir from the last checkpoint's weights (model.init)"
        )


def _delete_fix(path: Path) -> str:
    """What to do about the unreadable checkpoint ``path`` (``OUT/checkpoints/step-N``): delete it, and what the
    resume does then: continue from the complete checkpoint before it, or, when there is none, start over."""
    if not _STEP.fullmatch(path.name):
        return "delete that directory to resume from the checkpoint before it"
    before = [p for p in checkpoint_dirs(path.parent.parent) if int(p.name[5:]) < int(path.name[5:])]
    if before:
        return f"delete that directory to resume from {before[-1].name}, the checkpoint before it"
    return (
        "it is the run's only checkpoint: delete that directory and run again without --resume (train.resume) to "
        "start over"
    )


def saved_counters(path: Path) -> dict[str, Any]:
    """The counters of checkpoint ``path`` (its ``trainer_state.json``: step, epoch, steps, data fingerprint), read
    before the run builds its schedule from them."""
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"checkpoint {path} is unreadable: its trainer_state.json is missing or cut short ({type(e).__name__}); "
            f"{_delete_fix(path)}"
        ) from e


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, d: Dist, lora: bool
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and (same process count) RNG states; returns the counters."""
    try:
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(
            f"checkpoint {path} is unreadable: its trainer_state.pt is corrupt or cut short ({str(e).split('.')[0]}); "
            f"{_delete_fix(path)}"
        ) from e
    saved, now = state.get("trainable"), _trainable(optimizer)
    if saved is not None and saved != now:
        diff = sorted(set(saved) ^ set(now)) or ["(the same groups, other parameters)"]
        raise ValueError(
            f"checkpoint {path} does not fit this run's model or stage: it trained {', '.join(saved)}, this run "
            f"trains {', '.join(now)} (differs in {', '.join(diff[:4])}); resume with the recipe that wrote it, "
            "or start a new output_dir"
        )
    _check_weight_files(path)
    if lora:
        from .lora import read_adapter

        _, model_sd = read_adapter(path)
    else:
        from ..checkpoint.api import hf_tensors

        model_sd = dict(hf_tensors(path))
    try:
        load_full_state(model, optimizer, model_sd, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"checkpoint {path} does not fit this run's model or stage ({type(e).__name__}: {e}); resume with the "
            "recipe that wrote it, or start a new output_dir"
        ) from e
    rngs = state["rng"]
    if len(rngs) == d.world:
        set_rng_state(rngs[d.rank])
    else:  # a different process count: per-process RNG streams cannot be mapped; reseed deterministically
        seed_everything(int(state.get("seed", 0)) + 1000 * int(state["step"]) + d.rank)
    return {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "rng")}


def _check_weight_files(path: Path) -> None:
    """Refuse a checkpoint whose safetensors files were cut short (their headers say how long they must be) with
    the fix for a checkpoint (the loader's own message says to download the model again)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(file, framework="pt", device="cpu"):
                pass
        except SafetensorError as e:
            raise ValueError(
                f"checkpoint {path} is unreadable: {file.name} is corrupt or cut short ({e}); {_delete_fix(path)}"
            ) from None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped ``llava train``; ``checkpoint`` holds the last completed step (None: none
    yet); ``signum`` is the signal (the CLI exits with 128 + it: 130, 143)."""

    def __init__(self, step: int, checkpoint: Path | None, signum: int = signal.SIGINT) -> None:
        self.step, self.checkpoint, self.signum = step, checkpoint, int(signum)
        saved = f"saved {checkpoint}" if checkpoint else "no step completed, nothing saved"
        how = "interrupted" if self.signum == signal.SIGINT else f"stopped by {signal.Signals(self.signum).name}"
        super().__init__(f"{how} after step {step}; {saved}")


# the signals that stop a run after saving its last completed step: Ctrl-C, and the SIGTERM of `kill`, SLURM
# preemption, `docker stop`, systemd and Kubernetes
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptGuard:
    """SIGINT / SIGTERM handling of the training loop (one process, main thread; elsewhere Python's default stays,
    and so does a SIGTERM the process ignores). The previous handlers come back on exit.

    During a step's forward / backward a signal raises KeyboardInterrupt at once (the step is abandoned: its
    gradients are dropped, the weights are still those of the last completed step). Inside ``deferred()`` (the
    optimizer update, the metrics line, a checkpoint being written) it is held until the block ends, so a step
    is applied whole or not at all and no file is left half written. ``signum``: the signal that came.
    """

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.deferring = self.pending = False
        self.previous: dict[int, Any] = {}
        self.signum: int = signal.SIGINT

    def __enter__(self) -> InterruptGuard:
        if self.active:
            mine = [s for s in STOP_SIGNALS if s == signal.SIGINT or signal.getsignal(s) is not signal.SIG_IGN]
            self.previous = {s: signal.signal(s, self._on_signal) for s in mine}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():  # None: a handler installed outside Python; the default stands in
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signum = signum
        if self.deferring:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def saving(self, step: int) -> str:
        """The line printed while the interrupted run saves ``step``."""
        again = "Ctrl-C again" if self.signum == signal.SIGINT else f"a second {signal.Signals(self.signum).name}"
        return f"interrupted: saving step {step} ({again} to quit without it)"

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
