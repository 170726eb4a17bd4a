"""One model worker thread that batches the requests of many clients into the model (continuous batching).

HTTP handlers prepare each request (images decoded, prompt rendered, ids with image tokens expanded) and
``submit`` a ``Job``. The worker keeps a set of active rows that share one KV cache and runs one decode step for
all of them at a time. Between steps it admits waiting jobs (up to ``max_batch_size`` rows): their prompts are
prefilled together (the engine's model forward on a left-padded batch), then their cache slots are merged into the
running cache, right-aligned. A row leaves as soon as it ends (EOS, a stop string, its ``max_new_tokens``, a client
disconnect, its deadline); a new request never waits for a whole batch to finish. A decode step costs about the
same for 1 row as for 16 on a CPU (the weights are read once per step), so throughput grows with concurrency.

Slots vs positions: every row has its own RoPE positions (``pos``); slots are only where its keys sit. Rows are
right-aligned, a row's slots left of its first token are masked out. A row that ends stops at once, but its slots
stay (fed, outputs ignored) until the cache is next copied: at the next arrival's merge, or when finished rows are
half the batch. That copy leaves out the finished rows and the columns that are padding for every row kept.

Worked example: rows A (prompt 40 tokens, 10 generated) and B (prompt 52, 3 generated) share a cache of
L = max(50, 55) = 55 slots: A's 50 slots sit at [5, 55) with slots [0, 5) masked, B's at [0, 55). Job C (prompt 60)
arrives: it is prefilled alone (60 slots), the merged cache has L = 60 slots, A at [10, 60), B at [5, 60), C at
[0, 60). When C and B end, A's leading 10 padding slots are trimmed: L = 50 again.

Sampling is per row (each job's temperature / top-p / top-k / repetition penalty, and its own generator when it
has a ``seed``), so a seeded request gives the same answer batched or alone. The engine knows nothing about HTTP:
events go back through ``Job.emit``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.generate import StepFn, check_finite, decode_step, eos_ids
from ..engine.kv_cache import KVCache
from ..engine.sampling import SamplingParams
from .metrics import Metrics
from .rows import Row, RunningBatch

log = logging.getLogger("llavakit.serve")

# events sent to a job's owner: ("delta", text) | ("done", finish_reason) | ("error", status, message)
Event = tuple[Any, ...]


SHUTTING_DOWN = "the server is shutting down; retry once it is back (or on another instance)"


class QueueFull(RuntimeError):
    pass


@dataclass(eq=False)  # a job is itself, not its fields: == on tensors would raise (and match other jobs)
class Job:
    input_ids: torch.Tensor  # (T,) prompt ids, image tokens expanded
    vision: dict[str, torch.Tensor]  # the processor's pixel_values (N, [views,] 3, S, S), image_sizes (N, 2),
    # pixel_values_videos (1, F, 3, S, S) ...
    max_new_tokens: int
    params: SamplingParams
    stop: list[str]
    deadline: float  # time.monotonic() by which the last token must be out
    emit: Callable[[Event], None]  # thread-safe
    stream: bool = True  # False: the text comes in one ("delta", text) right before ("done", ...)
    ignore_eos: bool = False  # EOS is a token like any other: the row ends at max_new_tokens or a stop string
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    completion_tokens: int = 0
    first_token_at: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])


class Batcher:
    """The model worker. ``submit`` from any thread; ``start`` / ``stop`` around the server's life."""

    def __init__(
        self,
        model,  # noqa: ANN001 - a LlavaModel
        tokenizer,  # noqa: ANN001 - llavakit Tokenizer
        *,
        max_batch_size: int = 8,
        max_queue: int = 64,
        metrics: Metrics | None = None,
        gather_wait: float = 0.05,
        step: StepFn = decode_step,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size}, {max_queue}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.metrics = metrics or Metrics()
        self.gather_wait = gather_wait
        self.step = step  # the shared one-token decode step: decode_step, or compiled (``llava serve --compile``)
        self.eos = set(eos_ids(model, getattr(tokenizer, "eos_token_ids", None) or None))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (sorted(self.eos) or [0])[0]
        self.cond = threading.Condition()
        self.pending: deque[Job] = deque()
        self.running = 0
        self.preparing = 0  # requests being prepared by handlers: worth a short wait to batch them too
        self.stopping = False
        self.draining = False  # shutting down: no new jobs; the running batch may finish (``drain``)
        self.thread = threading.Thread(target=self._loop, name="llava-model-worker", daemon=True)

    # -- the handlers' side ---------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """False once the worker thread has ended (or before ``start``): nothing would answer a new job."""
        return self.thread.is_alive() and not self.closing

    @property
    def closing(self) -> bool:
        """True from the start of a shutdown (``drain`` or ``stop``) on: new jobs are refused."""
        return self.stopping or self.draining

    @property
    def queue_depth(self) -> int:
        with self.cond:
            self._forget_cancelled()
            return len(self.pending)

    def full(self) -> bool:
        with self.cond:
            self._forget_cancelled()
            return len(self.pending) + self.running + self.preparing >= self.max_queue

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closing:  # a shutdown began after the handler looked
                job.emit(("error", 503, SHUTTING_DOWN))
                return
            self._forget_cancelled()
            if len(self.pending) + self.running >= self.max_queue:
                raise QueueFull(f"the server is busy ({self.max_queue} requests in flight); retry shortly")
            self.pending.append(job)
            self.cond.notify_all()

    def _forget_cancelled(self) -> None:
        """Drop the queued jobs whose clients have gone (``cond`` held): they keep no place in the queue or the
        count of requests in flight, and the worker never sees them."""
        waiting = [job for job in self.pending if not job.cancelled.is_set()]
        if len(waiting) < len(self.pending):
            self.metrics.add("cancelled", len(self.pending) - len(waiting))
            self.pending = deque(waiting)

    def preparing_delta(self, d: int) -> None:
        with self.cond:
            self.preparing += d
            self.cond.notify_all()

    def start(self) -> None:
        self.thread.start()

    def drain(self) -> None:
        """The first half of a shutdown: the queued jobs get a 503 now and new ones at once, while the rows being
        generated go on; the worker ends when they are done. ``stop`` then cuts whatever still runs."""
        with self.cond:
            self.draining = True
            self._refuse_pending()

    def stop(self) -> None:
        """End the worker: queued jobs and the rows still being generated get a 503 (streams an error event)."""
        with self.cond:
            self.stopping = True
            self._refuse_pending()
        self.thread.join(timeout=30)

    def _refuse_pending(self) -> None:
        for job in self.pending:
            job.emit(("error", 503, SHUTTING_DOWN))
        self.pending.clear()
        self.cond.notify_all()

    # -- the worker -----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        batch = RunningBatch(self.model, self.step)
        while True:
            jobs = self._take(wait=not batch.rows)
            if jobs is None:
                for row in batch.live():
                    row.job.emit(("error", 503, SHUTTING_DOWN))
                return
            try:
                if jobs:
                    t0 = time.perf_counter()
                    self._admit(batch, jobs)
                    self.metrics.add("prefills")
                    self.metrics.add("prefill_seconds", time.perf_counter() - t0)
                    jobs = []  # admitted (or answered): a later failure is not theirs to report twice
                if batch.rows:
                    t0 = time.perf_counter()
                    self._step(batch)
                    self.metrics.add("decode_seconds", time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - a failed step must not kill the worker
                log.error("generation step failed:\n%s", traceback.format_exc())
                merged = {id(j) for j in batch.jobs()}
                for job in [r.job for r in batch.live()] + [j for j in jobs or [] if id(j) not in merged]:
                    self.metrics.add("errors")
                    job.emit(("error", 500, f"generation failed: {type(e).__name__}: {e}"))
                batch = RunningBatch(self.model, self.step)
            with self.cond:
                self.running = len(batch.live())

    def _take(self, wait: bool) -> list[Job] | None:
        """Jobs to admit now (up to the free rows); waits for work only when nothing runs. None when stopping, or
        when draining and nothing runs."""
        with self.cond:
            while wait and not self.pending and not self.closing:
                self.cond.wait()
            if self.stopping or (self.draining and wait):
                return None
            room = self.max_batch_size - self.running
            if wait:
                # requests still being prepared would miss this prefill: give them a moment to arrive
                until = time.monotonic() + self.gather_wait
                while self.preparing and len(self.pending) < room and not self.stopping:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
            now, chosen = time.monotonic(), []
            while self.pending and len(chosen) < room:
                job = self.pending.popleft()
                if job.cancelled.is_set():
                    self.metrics.add("cancelled")
                elif now > job.deadline:
                    self._timeout(job)
                else:
                    chosen.append(job)
            self.running += len(chosen)
            return chosen

    def _timeout(self, job: Job, queued: bool = True) -> None:
        self.metrics.add("timeouts")
        if queued:  # it never ran: a smaller max_tokens would not have helped
            msg = "the request waited in the queue past its time limit (see --timeout): the server is busy; retry later"
        elif job.first_token_at is None:  # admitted, but its time went on the queue and its prompt: no token came
            msg = (
                "the request ran out of time before its first token (see --timeout): its time went waiting in the "
                "queue and reading the prompt; retry later, or with a shorter prompt"
            )
        else:
            msg = "the request ran out of time (see --timeout); retry with a smaller max_tokens"
        job.emit(("error", 504, msg))

    def _collate(self, jobs: list[Job]) -> dict[str, torch.Tensor]:
        """Left-pad the prompts into (B, T) and concatenate the images of all rows in row order."""
        t = max(j.prompt_tokens for j in jobs)
        ids = torch.full((len(jobs), t), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(jobs), t, dtype=torch.long)  # (B, T)
        for r, j in enumerate(jobs):
            ids[r, t - j.prompt_tokens :] = j.input_ids
            mask[r, t - j.prompt_tokens :] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        pix = [j.vision["pixel_values"] for j in jobs if "pixel_values" in j.vision]
        if pix:
            if pix[0].dim() == 5:  # AnyRes: (N, views, 3, S, S), fewer views padded with zeros
                most = max(p.shape[1] for p in pix)
                pix = [torch.cat([p, p.new_zeros(p.shape[0], most - p.shape[1], *p.shape[2:])], 1) for p in pix]
            out["pixel_values"] = torch.cat(pix)
        for k in ("image_sizes", "batch_num_images", "pixel_values_videos"):  # videos: one job at a time (_admit)
            parts = [j.vision[k] for j in jobs if k in j.vision]
            if parts:
                out[k] = torch.cat(parts)
        return out

    def _admit(self, batch: RunningBatch, jobs: list[Job]) -> None:
        """Prefill the new jobs and merge them into the running batch. The jobs without a video are prefilled
        together; if their joint prefill fails, each is prefilled alone: a request the model cannot take gets its
        own error, the others and the running rows go on (the running batch is not touched until a prefill has
        succeeded).

        A job with a video is always prefilled alone, then decodes in the running batch like any row: its F frames
        cost the vision tower as much as F images, so it has little to share with others' prefill, and videos of
        different frame counts do not stack into one (V, F, 3, S, S) tensor (the processor pads no frames)."""
        groups = [[j] for j in jobs if "pixel_values_videos" in j.vision]
        rest = [j for j in jobs if "pixel_values_videos" not in j.vision]
        prefilled = []
        for group in [rest, *groups] if rest else groups:
            prefilled += self._prefill_or_fail(jobs, group)
        for rows, cache, mask, pos, logits in prefilled:
            batch.merge(rows, cache, mask, pos, logits)

    def _prefill_or_fail(self, jobs: list[Job], group: list[Job]) -> list[tuple]:
        """``group`` prefilled together, or each alone if that fails; a job that fails alone is answered (``_fail``)."""
        try:
            return [self._prefill(group)]
        except Exception as e:  # noqa: BLE001 - one request's inputs must not fail the others
            if len(group) == 1:
                self._fail(jobs, group[0], e)
                return []
        prefilled = []
        for job in group:
            try:
                prefilled.append(self._prefill([job]))
            except Exception as one:  # noqa: BLE001
                self._fail(jobs, job, one)
        return prefilled

    def _fail(self, jobs: list[Job], job: Job, e: Exception) -> None:
        """Answer ``job`` with a 500 and take it out of ``jobs`` (the admission's list: answered, it is not
        reported again if a later part of the step fails)."""
        log.error("prefill failed:\n%s", "".join(traceback.format_exception(e)))
        self.metrics.add("errors")
        jobs.remove(job)
        job.emit(("error", 500, f"generation failed: {type(e).__name__}: {e}"))

    def _prefill(self, jobs: list[Job]) -> tuple[list[Row], KVCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The jobs' prompts through the model, left-padded into one batch: their rows, their own cache, mask
        (B, T), next positions (B, 1) and next-token logits (B, V), ready for ``RunningBatch.merge``."""
        model, device = self.model, self.model.device
        inputs = {k: v.to(device) for k, v in self._collate(jobs).items()}
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")  # (B, T) each
        b, t = ids.shape
        padded = bool((mask == 0).any())
        pos = (mask.cumsum(-1) - 1).clamp_min(0) if padded else torch.arange(t, device=device).expand(b, t)
        cache = KVCache(model.config.text, b, t, dtype=model.dtype, device=device)
        embeds = model.embed(ids, **inputs)  # (B, T, D)
        logits = model(
            inputs_embeds=embeds,
            attention_mask=mask if padded else None,
            position_ids=pos,
            cache=cache,
            logits_to_keep=1,
        ).logits[:, -1]  # (B, V)
        check_finite(logits)  # NaN weights or a float16 overflow: a 500 naming it (alone, see _prefill_or_fail)
        rows = [Row(job, self.tokenizer) for job in jobs]
        for row in rows:
            row.start(logits.shape[-1], device)
        return rows, cache, mask, pos[:, -1:] + 1, logits

    def _step(self, batch: RunningBatch) -> None:
        """Pick every row's next token, hand it out, drop the rows that ended, feed the rest one decode step."""
        now = time.monotonic()
        self.metrics.observe("batch_size", len(batch.live()))
        tokens = batch.sample(on_error=self._row_failed)  # (B,)
        for row, t in zip(batch.rows, tokens.tolist()):
            if row.done:  # ended at an earlier step (still in the cache), or its sampling failed just now
                continue
            try:
                self._hand_out(row, t, now)
            except Exception as e:  # noqa: BLE001 - one row's text handling must not fail the others
                self._row_failed(row, e)
        batch.drop_finished(tokens)
        shared = batch.decode(on_error=self._row_failed) if batch.rows else None
        if shared is not None:
            log.error(
                "a batch's decode step failed, each row ran alone:\n%s", "".join(traceback.format_exception(shared))
            )
            self.metrics.add("step_retries")

    def _row_failed(self, row: Row, e: Exception) -> None:
        """End one row with a 500 (its sampling, its text handling or its decode step run alone raised); the other
        rows go on. Its slots stay in the cache like a finished row's (until the next step, if its decode failed)."""
        log.error("row failed:\n%s", "".join(traceback.format_exception(e)))
        row.done = True
        self.metrics.add("errors")
        row.job.emit(("error", 500, f"generation failed: {type(e).__name__}: {e}"))

    def _hand_out(self, row: Row, t: int, now: float) -> None:
        """One row's new token: its text out (or the row's end: EOS, stop string, length, cancel, deadline)."""
        if row.job.cancelled.is_set():
            row.done = True
            self.metrics.add("cancelled")
        elif now > row.job.deadline:
            row.done = True
            self._timeout(row.job, queued=False)
        elif t in self.eos and not row.job.ignore_eos:
            row.count(now)
            row.finish("stop")
        else:
            row.count(now)
            row.push(t)
        if row.done:
            self.metrics.add("completion_tokens", row.job.completion_tokens)
            if row.job.first_token_at is not None:
                self.metrics.observe("ttft", row.job.first_token_at - row.job.arrived)
