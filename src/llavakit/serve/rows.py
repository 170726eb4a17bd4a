"""The state of the rows the model worker generates together (``batcher.Batcher``'s running batch).

``RunningBatch`` holds the rows, their shared KV cache (rows right-aligned over its slots), masks, positions and
next-token logits; ``Row`` holds one request's detokenizer, stop matching and sampling state. See ``batcher``'s
docstring for the slot layout with a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..engine.generate import StepFn, decode_step
from ..engine.kv_cache import KVCache
from ..engine.sampling import apply_repetition_penalty, greedy_pick, sample
from ..engine.text import AnswerText

if TYPE_CHECKING:
    from .batcher import Job


class RunningBatch:
    """The active rows, their shared KV cache (rows right-aligned over ``cache.length`` slots) and their state.

    mask (B, max_len) marks each row's real slots; pos (B, 1) is each row's next RoPE position; logits (B, V) are
    the logits of each row's next token; tokens (B,) the tokens about to be fed. ``step`` runs the shared decode
    step (``engine.generate.decode_step``, or its compiled form).
    """

    def __init__(self, model, step: StepFn = decode_step) -> None:  # noqa: ANN001
        self.model, self.step = model, step
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.mask = self.pos = self.logits = self.tokens = None
        self.failed = False  # a row failed in the decode step: leave it out of the cache at the next step

    def jobs(self) -> list[Job]:
        return [r.job for r in self.rows]

    def _keep(self) -> list[int]:
        """Indices of the rows still generating."""
        return [i for i, r in enumerate(self.rows) if not r.done]

    def live(self) -> list[Row]:
        """The rows still generating (``rows`` may also hold finished ones until the next merge or compaction)."""
        return [self.rows[i] for i in self._keep()]

    def merge(self, rows: list[Row], cache: KVCache, mask: torch.Tensor, pos: torch.Tensor, logits: torch.Tensor):
        """Join prefilled rows (their own ``cache`` of T slots, ``mask`` (b, T)) to the running ones.

        Finished rows still in the batch are left out of the new cache, and so are the leading slot columns that
        are padding for every row kept: this copy is the only one a row's arrival or departure costs.
        """
        old = self.cache
        keep = self._keep()
        b_a, t = len(keep), cache.length
        lead = self._lead(keep) if b_a else 0
        l_a = old.length - lead if b_a else 0  # the kept rows' slots: old columns [lead, old.length)
        length = max(l_a, t)
        self.rows = [self.rows[i] for i in keep] + rows
        room = max(r.job.max_new_tokens - r.job.completion_tokens for r in self.rows)
        new = KVCache(
            self.model.config.text, len(self.rows), length + room + 1, dtype=cache.k[0].dtype, device=cache.k[0].device
        )
        idx = torch.tensor(keep, device=mask.device)
        for layer in range(len(new.k)):
            for dst, src in ((new.k, old.k if old else None), (new.v, old.v if old else None)):
                if src is not None and b_a:
                    kept = src[layer][:, :, lead : lead + l_a].index_select(0, idx)  # (b_a, KV, l_a, d)
                    dst[layer][:b_a, :, length - l_a : length] = kept
            new.k[layer][b_a:, :, length - t : length] = cache.k[layer][:, :, :t]
            new.v[layer][b_a:, :, length - t : length] = cache.v[layer][:, :, :t]
        new.length = length
        full = torch.ones(len(self.rows), new.max_len, dtype=torch.long, device=mask.device)  # (B, max_len)
        full[:, :length] = 0
        if b_a:
            full[:b_a, length - l_a : length] = self.mask[:, lead : lead + l_a].index_select(0, idx)
        full[b_a:, length - t : length] = mask
        self.cache, self.mask = new, full
        self.pos = pos if not b_a else torch.cat([self.pos.index_select(0, idx), pos])
        self.logits = logits if not b_a else torch.cat([self.logits.index_select(0, idx), logits])

    def _lead(self, keep: list[int]) -> int:
        """How many leading slot columns are padding for every row in ``keep``."""
        m = self.mask[keep, : self.cache.length]
        return int((m.cumsum(-1) == 0).sum(-1).min())

    def sample(self, on_error: Callable[[Row, Exception], None] | None = None) -> torch.Tensor:
        """(B,) next tokens: greedy rows by one argmax, the others each with their own settings and generator.

        ``on_error``: called with a row whose own sampling raised (e.g. its logits hold NaN), which it must end
        (``row.done``); that row's token is then the greedy one, fed but never handed out. Without it, it raises."""
        tokens = greedy_pick(self.logits)
        for i, row in enumerate(self.rows):
            p = row.job.params
            if row.done or (row.seen is None and p.greedy):
                continue
            try:
                logits = self.logits[i : i + 1]
                if row.seen is not None:
                    logits = apply_repetition_penalty(logits, row.seen, p.repetition_penalty)
                tokens[i] = sample(logits, p, row.generator)[0]
                if row.seen is not None:
                    row.seen[0, tokens[i]] = True
            except Exception as e:
                if on_error is None:
                    raise
                on_error(row, e)
        return tokens

    def drop_finished(self, tokens: torch.Tensor) -> None:
        """Set the tokens to feed next; forget the batch when every row has ended.

        Finished rows stay in the cache (fed like the others, their outputs ignored) until the next ``merge``
        leaves them out, or until they are at least half of the rows: a row leaving does not copy the whole cache
        (with 16 clients that copy had cost the model worker ~6 ms per request, an eighth of its time).
        """
        keep = self._keep()
        if not keep:
            self.__init__(self.model, self.step)
            return
        if 2 * len(keep) <= len(self.rows) or (self.failed and len(keep) < len(self.rows)):
            self.failed = False  # a row whose inputs broke the step is not fed again
            idx = torch.tensor(keep, device=self.mask.device)
            lead = self._lead(keep)
            self.rows = [self.rows[i] for i in keep]
            for kv in (self.cache.k, self.cache.v):
                for layer in range(len(kv)):
                    kv[layer] = kv[layer][:, :, lead:].index_select(0, idx)
            self.cache.batch_size = len(keep)
            self.cache.length -= lead
            self.cache.max_len -= lead
            self.mask, self.pos = self.mask[:, lead:].index_select(0, idx), self.pos.index_select(0, idx)
            tokens = tokens.index_select(0, idx)
        self.tokens = tokens

    def decode(self, on_error: Callable[[Row, Exception], None] | None = None) -> Exception | None:
        """Feed ``tokens`` (one per row) and keep the logits of the next ones. Returns the shared step's error if
        it raised and the rows were run alone, else None.

        ``on_error``: when the shared step raises, each row still generating is run once alone (its own rows of
        the cache, written in place) and a row that raises alone is ended through it, so that one request's
        inputs fail that request only; a failure of every row alone ends every row. Without it, it raises.
        """
        length, end = self.cache.length, self.cache.length + 1
        try:
            self.logits = self.step(self.model, self.tokens, self.pos, self.cache, self.mask[:, :end])  # (B, V)
        except Exception as e:
            if on_error is None:
                raise
            self.cache.length = length  # it advances after the layers: a failure in the head came after that
            self.logits = self._decode_alone(on_error)
            self.pos = self.pos + 1
            return e
        self.pos = self.pos + 1
        return None

    def _decode_alone(self, on_error: Callable[[Row, Exception], None]) -> torch.Tensor:
        """(B, V) next-token logits, each live row's from a step of its own; zeros for the rows that failed."""
        length, end = self.cache.length, self.cache.length + 1
        logits = self.logits.new_zeros(len(self.rows), self.logits.shape[-1])  # (B, V)
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            one = self.cache.row(i)  # views of row i's slots: the step writes its new slot into the batch's
            r = slice(i, i + 1)
            try:
                logits[i] = self.step(self.model, self.tokens[r], self.pos[r], one, self.mask[r, :end])[0]
            except Exception as e:  # noqa: BLE001 - handed to on_error, which ends this row
                self.failed = True
                on_error(row, e)
        self.cache.length = length + 1
        return logits


class Row:
    """Detokenizing and stop matching of one row of a batch."""

    def __init__(self, job: Job, tokenizer) -> None:  # noqa: ANN001
        self.job = job
        self.text = AnswerText(tokenizer, job.stop)  # EOS is the batcher's (ignore_eos), not the text's
        self.done = False
        self.seen: torch.Tensor | None = None  # (1, V) tokens seen, for the repetition penalty
        self.generator: torch.Generator | None = None
        self.held: list[str] = []  # the text so far of a job that does not stream

    def start(self, vocab: int, device: torch.device) -> None:
        """Sampling state as the engine's decode loop sets it up for one request."""
        p = self.job.params
        if p.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(p.seed)
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            ids = self.job.input_ids.to(device)
            self.seen[0, ids[(ids >= 0) & (ids < vocab)]] = True  # as the engine: ids past the vocabulary left out

    def count(self, now: float) -> None:
        self.job.completion_tokens += 1
        if self.job.first_token_at is None:
            self.job.first_token_at = now

    def _out(self, delta: str) -> None:
        if not delta:
            return
        if self.job.stream:
            self.job.emit(("delta", delta))
        else:
            self.held.append(delta)

    def push(self, t: int) -> None:
        self._out(self.text.push(t))
        if self.text.reason is not None:  # a stop string
            self.finish("stop")
        elif self.job.completion_tokens >= self.job.max_new_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        self._out(self.text.finish())
        if self.held:
            self.job.emit(("delta", "".join(self.held)))
        self.job.emit(("done", reason))
        self.done = True
