"""The training loop: one function, read top to bottom.

Per optimizer step the process takes its share of one global batch (``global_batch_size`` samples, in
``accum = global / (micro * processes)`` micro-batches per process). The loss is the token-level cross-entropy
over every supervised token of the global batch:

    loss = sum over the batch's supervised tokens of -log p(token) / (number of supervised tokens in the batch)

Each process back-propagates ``its sum * processes / global token count``; DDP / FSDP average gradients over
processes, so the update equals the one-process update on the same global batch, whatever the split (a recipe's
``distill`` term, normalised per micro-batch, is the exception: llavakit.train.distill).
Worked example: 2 processes, 30 + 10 supervised tokens with CE sums 60 and 10 -> each scales by 2 / 40;
the averaged gradient is that of (60 + 10) / 40 = 1.75, the loss one process gets on all 40 tokens.

Steps are counted as transformers' Trainer counts them (``train.batching``): an epoch's last step takes the
samples left over, ``ceil(epochs * steps per epoch)`` steps in all.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.save import write_text_atomic
from ..model.llava import IGNORE_INDEX
from .batching import epoch_batches, process_micro_batches, steps_per_epoch, total_steps
from .checkpointing import (
    InterruptGuard,
    TrainingInterrupted,
    check_same_recipe,
    checkpoint_dirs,
    load_checkpoint,
    recipe_record,
    rng_state,
    save_checkpoint,
    saved_counters,
    seed_everything,
    set_rng_state,
    write_model,
)
from .distill import check_same_split
from .distill import from_recipe as distiller_for
from .distributed import Dist, all_sum, full_model_state, setup, teardown, unwrap, wrap
from .fingerprint import check_same_data, data_fingerprint
from .foreground import hidden_background
from .loss import supervised_ce_sum, supervised_positions
from .output_dir import check_output_dir
from .progress import MetricsLog, Progress
from .recipe import Recipe
from .schedule import logged_lrs, lr_lambda
from .stages import apply_stage

FORWARD_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")


class TrainingDiverged(ValueError):
    """The loss (or gradient norm) became NaN / inf; the run stopped and the last good checkpoint is kept."""


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per optimizer step run by this call
    steps: list[int] = field(default_factory=list)
    final_step: int = 0
    output_dir: Path | None = None
    resumed_from: Path | None = None
    finished: bool = False  # False when train.stop_after ended the run early
    # records this process's dataset left out, by reason (``SampleError``): unreadable when read (data.on_error
    # skip), or failing when built (too long to truncate without cutting image tokens, an image that will not
    # load in skip mode): such a sample is replaced by the next one in the data, as LLaVA-NeXT's trainer does
    skipped: dict[str, int] = field(default_factory=dict)


def train(
    recipe: Recipe,
    *,
    model: torch.nn.Module | None = None,
    processor: Any = None,
    dataset: Sequence[dict] | None = None,
    collate_fn: Callable[[list[dict]], dict] | None = None,
    callbacks: Sequence[Callable[[int, torch.nn.Module], None]] = (),
) -> TrainResult:
    """Run (or resume) the recipe. ``model`` / ``processor`` / ``dataset`` / ``collate_fn`` default to the ones
    the recipe describes; tests pass small ones. Returns the losses of the steps this call ran."""
    recipe.check()  # a recipe changed after load_recipe (recipe.train.max_steps = 0) is refused like a bad YAML
    t = recipe.train
    d = setup(t.device, t.distributed)
    closers: list[Callable[[], None]] = []  # hooks _train puts on the caller's model come off again
    try:
        result = _train(recipe, d, model, processor, dataset, collate_fn, callbacks, closers)
        if d.active and d.owns_group:  # every process's collectives done before any destroys the group (a rank
            torch.distributed.barrier()  # that did not write the model went first; gloo aborted it now and then)
        return result
    finally:
        for close in closers:
            close()
        teardown(d)


def _train(recipe, d: Dist, model, processor, dataset, collate_fn, callbacks, closers) -> TrainResult:  # noqa: ANN001, C901
    from .build import build_model, source_generation_config, trained_processor

    t, out = recipe.train, Path(recipe.train.output_dir)
    check_output_dir(out, recipe.model.init, t.resume)  # before the model is read: nothing to overwrite
    if dataset is None:  # a misspelt data file, before minutes of loading weights
        from .mixture import check_data_files

        check_data_files(vars(recipe.data))
    if d.active:  # every rank's check (which makes and removes out) done before rank 0 makes it for good (FSDP
        torch.distributed.barrier()  # sets up without a collective, so nothing else holds rank 0 back)
    seed_everything(t.seed)  # identical model init on every process
    if model is None:
        model, processor = build_model(recipe.model)
    if processor is not None:  # saved with the template the run trains with
        processor = trained_processor(processor, recipe.data.template or recipe.model.template)
    generation = source_generation_config(recipe.model)  # its end-of-sequence ids go with every model written
    if dataset is None:
        dataset, collate_fn = _dataset(recipe, processor)
    if collate_fn is None:
        raise ValueError("train() got a dataset but no collate_fn")
    groups = apply_stage(model, recipe.stage)
    lora = recipe.stage.lora if recipe.stage.name in ("lora", "qlora") else None
    if t.gradient_checkpointing:
        from .grad_ckpt import enable_gradient_checkpointing

        enable_gradient_checkpointing(model, vision=recipe.stage.vision_lr is not None)
    model.to(d.device).train()
    distiller = distiller_for(recipe.distill, model, processor, d.device)  # hooks on the student before wrapping
    if distiller is not None:
        closers.append(distiller.close)
    model = wrap(model, d)
    params = dict(model.named_parameters()) if d.strategy == "fsdp" else dict(unwrap(model).named_parameters())
    opt_groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [params[n] for n in g["names"]]} for g in groups
    ]
    optimizer = torch.optim.AdamW(opt_groups, betas=tuple(t.adam_betas), eps=t.adam_eps)
    trainable = [p for g in opt_groups for p in g["params"]]

    per_step = t.global_batch_size
    if per_step % (t.micro_batch_size * d.world):
        raise ValueError(
            f"train.global_batch_size {per_step} is not a multiple of micro_batch_size {t.micro_batch_size} x "
            f"{d.world} process(es); change one of them"
        )
    found, saved, recipe_json = checkpoint_dirs(out), None, recipe_record(recipe)
    data_now = data_fingerprint(recipe.data, dataset)
    if t.resume:
        if not found:
            raise FileNotFoundError(f"train.resume: no checkpoint in {out / 'checkpoints'}; start without resume")
        saved = saved_counters(found[-1])
        check_same_recipe(out / "recipe.json", recipe, saved.get("recipe"), found[-1], saved.get("cwd"))
        check_same_split(recipe.distill, saved.get("world", d.world), d.world, found[-1].name)
        if not t.allow_data_change:  # "cwd": where the run that wrote it ran (its relative paths' base)
            check_same_data(saved.get("data"), data_now, found[-1], saved.get("cwd"))
    elif found:
        raise FileExistsError(
            f"{out} already holds checkpoints of an earlier run ({found[-1].name}); resume it with "
            "train.resume=true (--resume), or choose another train.output_dir (or delete its checkpoints/)"
        )
    full_only = bool(saved.get("full_batches_only", True)) if saved else False  # a run from before: its counting
    per_epoch = steps_per_epoch(len(dataset), per_step, full_only)
    if per_epoch == 0:
        raise ValueError(f"the dataset has {len(dataset)} samples, fewer than one global batch ({per_step})")
    total = total_steps(t.epochs, per_epoch, t.max_steps, full_only)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, t.warmup_ratio, t.schedule))

    step, resumed = 0, None
    if t.resume:
        resumed = found[-1]
        step = int(load_checkpoint(resumed, model, optimizer, scheduler, d, lora is not None)["step"])
        if step > total:
            raise ValueError(
                f"train.resume: the last checkpoint {resumed.name} is past this run's {total} steps; resume with "
                "the recipe that wrote it, or start a new train.output_dir"
            )
    else:
        seed_everything(t.seed + d.rank)  # per-process streams (dropout)
    metrics = MetricsLog(out / "metrics.jsonl", d.main, keep_until=step if resumed else 0)
    bar = Progress(total, step, d.main and t.progress)
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=t.bf16)
    result = TrainResult(output_dir=out, resumed_from=resumed)
    order_cache: dict[int, list[list[int]]] = {}
    if d.main and resumed is None:  # a resumed run keeps the record of the recipe that started it
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "recipe.json", json.dumps(recipe_json, indent=2))  # synced

    guard, ran_from, saved_at = InterruptGuard(d.world == 1), step, None  # Ctrl-C, SIGTERM
    at_top, rng_top, last = step, None, {}
    try:
        with guard:
            while step < total:
                rng_top = rng_state() if guard.active else None  # before at_top: a Ctrl-C between them restores
                t0, at_top = time.perf_counter(), step  # nothing (the RNG is still the last completed step's)
                epoch, in_epoch = divmod(step, per_epoch)
                if epoch not in order_cache:
                    group = recipe.data.group_by_modality_length
                    order_cache = {epoch: epoch_batches(dataset, epoch, t.seed, group, per_step, full_only)}
                chunk = order_cache[epoch][in_epoch]  # global_batch_size indices (fewer in an epoch's last step)
                mine = process_micro_batches(chunk, t.micro_batch_size, d.world, d.rank)
                batches = [collate_fn([dataset[i] for i in idx or chunk[:1]]) for idx in mine]
                batches = [b if idx else _unsupervised(b) for b, idx in zip(batches, mine)]
                n_sup = all_sum(torch.tensor(sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)), d)
                n_tok = all_sum(
                    torch.tensor(sum(int(b["attention_mask"].sum()) for b, i in zip(batches, mine) if i)), d
                )
                if int(n_sup) == 0:
                    raise ValueError(f"step {step + 1}: the global batch has no supervised tokens (all labels ignored)")
                loss_sum, distill_sum = torch.zeros((), device=d.device), torch.zeros((), device=d.device)
                for m, batch in enumerate(batches):
                    inputs = {k: _to(batch[k], d.device) for k in FORWARD_KEYS if batch.get(k) is not None}
                    if (drop := recipe.data.background_drop) is not None:
                        micro = m * d.world + d.rank
                        inputs.update(hidden_background(batch, drop, t.seed, step, total, micro, d.device))
                    labels = batch["labels"].to(d.device)
                    sync = m == len(batches) - 1 or d.strategy != "ddp"
                    with contextlib.nullcontext() if sync else model.no_sync(), autocast:
                        ce = supervised_ce_sum(model(**inputs, logits_mask=supervised_positions(labels)).logits, labels)
                        kd = None if distiller is None else distiller.loss(inputs, labels)
                    ((ce if kd is None else ce + kd) * d.world / n_sup.to(d.device)).backward()
                    loss_sum += ce.detach()
                    if kd is not None:
                        distill_sum += kd.detach()
                loss = float(all_sum(loss_sum, d)) / int(n_sup)
                if not math.isfinite(loss):
                    _stop(f"loss is {loss} at step {step + 1}", out, bar)
                norm = torch.nn.utils.clip_grad_norm_(
                    trainable, t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
                )
                norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if not math.isfinite(norm):
                    _stop(f"gradient norm is {norm} at step {step + 1}", out, bar)
                lrs = logged_lrs(optimizer)
                with guard.deferred():  # the update, its log line and checkpoint happen whole; Ctrl-C waits
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    position = in_epoch * per_step + len(chunk)  # the counters of this step, before any callback
                    last = {"step": step, "epoch": epoch, "position": position, "seed": t.seed, "total_steps": total}
                    last |= {"full_batches_only": full_only, "data": data_now, "cwd": str(Path.cwd())}  # counting, data
                    last["recipe"] = recipe_json  # what computed it: a resume (of a copied checkpoint) checks it
                    dt = time.perf_counter() - t0
                    rec = {
                        "step": step,
                        "epoch": round(step / per_epoch, 4),
                        "loss": loss,
                        **lrs,
                        "grad_norm": norm,
                        "tokens_per_s": float(n_tok) / dt,
                        "samples_per_s": len(chunk) / dt,
                        "time_s": dt,
                    }
                    if distiller is not None:  # the distillation term per supervised token, beside the CE's
                        rec["distill"] = float(all_sum(distill_sum, d)) / int(n_sup)
                    result.losses.append(loss)
                    result.steps.append(step)
                    if step % max(1, t.log_every) == 0 or step == total:
                        metrics.write(rec)
                    bar.update(rec)
                    for cb in callbacks:
                        cb(step, unwrap(model))
                    stopping = (
                        t.stop_after is not None and step - (result.steps[0] - 1) >= t.stop_after and step < total
                    )
                    due = t.save_every > 0 and step % t.save_every == 0
                    if (due and step < total) or stopping:  # stop_after: a checkpoint at the stop step, to resume from
                        save_checkpoint(
                            out, step, model, optimizer, scheduler, processor, last, d, t.keep_last, lora, generation
                        )
                        saved_at = step
                if stopping:
                    bar.close()
                    result.final_step, result.skipped = step, dict(getattr(dataset, "skipped", {}))
                    return result
    except KeyboardInterrupt:
        if not guard.active:  # several processes: Python's default (save_every's checkpoints are kept)
            raise
        bar.close()
        optimizer.zero_grad(set_to_none=True)  # the abandoned step's gradients
        if step == at_top and step > ran_from:
            set_rng_state(rng_top)  # the RNG as the last completed step left it (the abandoned one drew)
        if step > ran_from and saved_at != step:  # the checkpoint save_every would have written at this step
            print(guard.saving(step), file=sys.stderr, flush=True)
            saved_at = step
            save_checkpoint(out, step, model, optimizer, scheduler, processor, last, d, t.keep_last, lora, generation)
        kept = out / "checkpoints" / f"step-{step:08d}" if step > ran_from else resumed
        raise TrainingInterrupted(step, kept, guard.signum) from None
    bar.close()
    result.final_step, result.skipped = step, dict(getattr(dataset, "skipped", {}))
    try:
        with guard, guard.deferred():  # Ctrl-C waits: the final model is written whole (as a checkpoint is)
            _finish(out, model, processor, lora, d, metrics, base_model_id(recipe.model.init), generation)
    except KeyboardInterrupt:
        if not guard.active:
            raise
        print("interrupted: the final model was written whole; the run is complete", file=sys.stderr, flush=True)
    result.finished = True
    return result


def _unsupervised(batch: dict[str, Any]) -> dict[str, Any]:
    """A process's stand-in micro-batch in an epoch's short last step: a real sample, every label ignored."""
    return {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _stop(what: str, out: Path, bar: Any) -> None:
    bar.close()
    kept = checkpoint_dirs(out)
    where = f"the last good checkpoint is {kept[-1]} (resume with train.resume=true)" if kept else "no checkpoint yet"
    raise TrainingDiverged(f"training stopped: {what}; {where}. Lower the learning rate or check the data")


def _dataset(recipe: Recipe, processor: Any) -> tuple[Any, Callable]:
    from functools import partial

    from .collate import collate
    from .mixture import build_dataset

    own = ("template", "max_length", "group_by_modality_length", "background_drop")
    spec = {k: v for k, v in vars(recipe.data).items() if k not in own and v is not None}
    if not spec.get("datasets"):
        spec.pop("datasets", None)
    template = recipe.data.template or processor.template
    check_inherited_template(recipe, processor)
    drop = recipe.data.background_drop
    if drop is not None and (len(drop) != 2 or not all(0 <= x <= 1 for x in drop)):
        raise ValueError(f"data.background_drop must be [start, end] probabilities in [0, 1], got {drop}")
    ds = build_dataset(spec, processor, template, recipe.data.max_length, foreground=drop is not None)
    return ds, partial(collate, pad_id=ds.pad_id, family=processor.family)


def check_inherited_template(recipe: Recipe, processor: Any) -> None:
    """Refuse to train past stage 1 with a captions-only template (``plain``) the recipe did not name: a stage-1
    output carries it, and inherited silently it would drop every question of the conversations."""
    from .build import drops_questions

    inherited = recipe.data.template is None and recipe.model.template is None
    if inherited and recipe.stage.name != "stage1" and drops_questions(processor):
        raise ValueError(
            f"model.init carries the {processor.template!r} template (stage 1's captions: it drops the questions); "
            f"name the template this {recipe.stage.name} run trains with, e.g. data.template=vicuna_v1 "
            f"(or data.template={processor.template} to keep it)"
        )


def base_model_id(init: str | None) -> str | None:
    """What a LoRA adapter names as its base (``base_model_name_or_path``, which PEFT's ``AutoPeftModel*`` loads):
    ``model.init`` as an absolute path when it is a local directory, a hub id as it is, None for a model built
    from parts or a tiny random one."""
    if not init or init.startswith("tiny:"):
        return None
    return str(Path(init).resolve()) if Path(init).exists() else init


def _finish(
    out: Path,
    model: torch.nn.Module,
    processor: Any,
    lora: Any,
    d: Dist,
    metrics: MetricsLog,
    base: str | None = None,
    generation: str | None = None,
) -> None:
    """The final output: an HF checkpoint (LoRA merged into it; the adapter, naming ``base``, and the processor also
    in ``adapter/``), each with ``generation`` (the source's generation_config.json) when not None."""
    state = full_model_state(model)
    if not d.main:
        return
    config = unwrap(model).config
    if lora is not None:
        from ..model.llava import LlavaModel
        from .lora import apply_lora, merge_lora

        write_model(out / "adapter", state, config, processor, lora, base, generation)  # merge-lora reads both
        with torch.device("meta"):
            plain = LlavaModel(config)
        apply_lora(plain, lora)
        plain.load_state_dict(state, assign=True)
        plain.tie_weights()
        merge_lora(plain)
        state = plain.state_dict()
    write_model(out, state, config, processor, generation=generation)
    metrics.plot(out / "loss.png")
