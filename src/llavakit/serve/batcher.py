"""One model worker thread that batches the requests of many clients into the engine (dynamic batching).

HTTP handlers prepare each request (images decoded, prompt rendered, ids with image tokens expanded) and
``submit`` a ``Job``. The worker takes every compatible waiting job (up to ``max_batch_size``), left-pads them into
one batch, and runs ``engine.generate.stream_tokens`` on it: one prefill for the batch, then one decode step per
token for all rows at once. A decode step costs almost the same for 1 row as for 16 on a CPU (the weights are
read once per step), so throughput grows with the number of concurrent clients.

Each row stops on its own (EOS, a stop string, its own ``max_new_tokens``, a client disconnect, its deadline);
the batch ends when every row has stopped. Jobs that may not share a batch wait for the next one: sampled jobs
with a ``seed`` run alone (their random stream must not depend on the other rows), and jobs batch only with jobs
of the same sampling settings. The engine knows nothing about HTTP: events go back through ``Job.emit``.

Worked example (max_batch_size 8): 3 greedy jobs with prompts of 40, 52 and 47 tokens and max_tokens 16, 8, 16
wait when the worker frees up -> one batch (3, 52) left-padded; 16 decode steps at most; row 2 stops
emitting after 8 tokens, rows 1 and 3 after 16 (or earlier at EOS).
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

from ..engine.generate import eos_ids, stream_tokens
from ..engine.sampling import SamplingParams
from ..engine.text import StopMatcher
from .metrics import Metrics

log = logging.getLogger("llavakit.serve")

# events sent to a job's owner: ("delta", text) | ("done", finish_reason) | ("error", status, message)
Event = tuple[Any, ...]


class QueueFull(RuntimeError):
    pass


@dataclass
class Job:
    input_ids: torch.Tensor  # (T,) prompt ids, image tokens expanded
    vision: dict[str, torch.Tensor]  # the processor's pixel_values (N, [views,] 3, S, S), image_sizes (N, 2), ...
    max_new_tokens: int
    params: SamplingParams
    stop: list[str]
    deadline: float  # time.monotonic() by which the last token must be out
    emit: Callable[[Event], None]  # thread-safe
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    completion_tokens: int = 0
    first_token_at: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def batch_key(self) -> tuple:
        """Jobs with equal keys may share a batch."""
        p = self.params
        if p.greedy:
            return ("greedy", p.repetition_penalty)
        if p.seed is not None:
            return ("alone", id(self))
        return ("sample", p.temperature, p.top_p, p.top_k, p.repetition_penalty)


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
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size}, {max_queue}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.metrics = metrics or Metrics()
        self.gather_wait = gather_wait
        self.eos = set(eos_ids(model, getattr(tokenizer, "eos_token_ids", None) or None))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (sorted(self.eos) or [0])[0]
        self.context = model.config.text.max_position_embeddings if model.config.text.rope_scaling is None else None
        self.cond = threading.Condition()
        self.pending: deque[Job] = deque()
        self.running = 0
        self.preparing = 0  # requests being prepared by handlers: worth a short wait to batch them too
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="llava-model-worker", daemon=True)

    # -- the handlers' side ---------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self.pending)

    def full(self) -> bool:
        return len(self.pending) + self.running + self.preparing >= self.max_queue

    def submit(self, job: Job) -> None:
        with self.cond:
            if len(self.pending) + self.running >= self.max_queue:
                raise QueueFull(f"the server is busy ({self.max_queue} requests in flight); retry shortly")
            self.pending.append(job)
            self.cond.notify_all()

    def preparing_delta(self, d: int) -> None:
        with self.cond:
            self.preparing += d
            self.cond.notify_all()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            for job in self.pending:
                job.emit(("error", 503, "the server is shutting down"))
            self.pending.clear()
            self.cond.notify_all()
        self.thread.join(timeout=30)

    # -- the worker -----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception as e:  # noqa: BLE001 - a failed batch must not kill the worker
                log.error("batch of %d failed:\n%s", len(jobs), traceback.format_exc())
                for job in jobs:
                    job.emit(("error", 500, f"generation failed: {type(e).__name__}: {e}"))
            finally:
                with self.cond:
                    self.running = 0

    def _take(self) -> list[Job] | None:
        """Wait for work; return the next batch ([] if everything waiting was dropped), None when stopping."""
        with self.cond:
            while not self.pending and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return None
            # requests still being prepared would miss this batch: give them a moment to arrive
            until = time.monotonic() + self.gather_wait
            while self.preparing and len(self.pending) < self.max_batch_size and not self.stopping:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            now = time.monotonic()
            chosen: list[Job] = []
            rest: deque[Job] = deque()
            key = None
            for job in self.pending:
                if job.cancelled.is_set():
                    self.metrics.add("cancelled")
                    continue
                if now > job.deadline:
                    self._timeout(job)
                    continue
                if key is None:
                    key = job.batch_key()
                if len(chosen) < self.max_batch_size and job.batch_key() == key and self._fits(chosen, job):
                    chosen.append(job)
                else:
                    rest.append(job)
            self.pending = rest
            self.running = len(chosen)
            return chosen

    def _fits(self, chosen: list[Job], job: Job) -> bool:
        """A left-padded batch needs (longest prompt + most new tokens) slots; keep it inside the context."""
        if self.context is None or not chosen:
            return True
        longest = max(j.prompt_tokens for j in [*chosen, job])
        most = max(j.max_new_tokens for j in [*chosen, job])
        return longest + most <= self.context

    def _timeout(self, job: Job) -> None:
        self.metrics.add("timeouts")
        job.emit(("error", 504, "the request ran out of time (see --timeout); retry with a smaller max_tokens"))

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
        for k in ("image_sizes", "batch_num_images"):
            parts = [j.vision[k] for j in jobs if k in j.vision]
            if parts:
                out[k] = torch.cat(parts)
        return out

    def _run(self, jobs: list[Job]) -> None:
        self.metrics.observe("batch_size", len(jobs))
        inputs = self._collate(jobs)
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        rows = [_Row(job, self.tokenizer) for job in jobs]
        steps = stream_tokens(
            self.model,
            ids,
            attention_mask=mask,
            max_new_tokens=max(j.max_new_tokens for j in jobs),
            params=jobs[0].params,
            eos_token_id=sorted(self.eos),
            **inputs,
        )
        for step in steps:
            now = time.monotonic()
            for row, t in zip(rows, step.tolist()):
                if row.done:
                    continue
                if row.job.cancelled.is_set():
                    row.done = True
                    self.metrics.add("cancelled")
                elif now > row.job.deadline:
                    row.done = True
                    self._timeout(row.job)
                elif t < 0 or t in self.eos:
                    row.count(t, now)
                    row.finish("stop")
                else:
                    row.count(t, now)
                    row.push(t)
            if all(r.done for r in rows):
                break
        for row in rows:
            if not row.done:
                row.finish("length")
        for row in rows:
            self.metrics.add("completion_tokens", row.job.completion_tokens)
            if row.job.first_token_at is not None:
                self.metrics.observe("ttft", row.job.first_token_at - row.job.arrived)


class _Row:
    """Detokenizing and stop matching of one row of a batch."""

    def __init__(self, job: Job, tokenizer) -> None:  # noqa: ANN001
        self.job = job
        self.decoder = tokenizer.decode_stream(skip_special_tokens=True)
        self.stops = StopMatcher(job.stop)
        self.done = False

    def count(self, t: int, now: float) -> None:
        if t >= 0:
            self.job.completion_tokens += 1
        if self.job.first_token_at is None:
            self.job.first_token_at = now

    def push(self, t: int) -> None:
        delta = self.stops.push(self.decoder.push(t))
        if delta:
            self.job.emit(("delta", delta))
        if self.stops.stopped:
            self.finish("stop")
        elif self.job.completion_tokens >= self.job.max_new_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        if not self.stops.stopped:
            tail = self.stops.push(self.decoder.flush()) + self.stops.flush()
            if tail:
                self.job.emit(("delta", tail))
        self.job.emit(("done", reason))
        self.done = True
