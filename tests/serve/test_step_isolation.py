"""A batch's shared decode step that raises: each row runs once alone, so only the request whose inputs break the
step fails and the others go on with the tokens they get alone (the whole batch used to fail)."""

from __future__ import annotations

import time

import torch

from llavakit.engine.generate import decode_step
from llavakit.engine.sampling import SamplingParams
from llavakit.serve.batcher import Batcher, Job

QUESTIONS = ("hi", "question one about " + "x" * 30, "question two about " + "y" * 40)


def _jobs(pipe, done: dict, n: int = 8) -> list[Job]:  # noqa: ANN001
    def job(i: int, text: str) -> Job:
        events: list = []

        def emit(ev: tuple) -> None:
            events.append(ev)
            if ev[0] in ("done", "error"):
                done[i] = events

        ids = torch.tensor(pipe.processor.tokenizer.encode(f"USER: {text} ASSISTANT:"))
        return Job(ids, {}, n, SamplingParams(), [], time.monotonic() + 120, emit)

    return [job(i, text) for i, text in enumerate(QUESTIONS)]


def _run(pipe, step, max_batch_size: int = 4) -> tuple[dict, Batcher]:  # noqa: ANN001
    done: dict = {}
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=max_batch_size, step=step)
    worker.eos = set()  # every row runs to its max_new_tokens
    for job in _jobs(pipe, done):
        worker.submit(job)  # before the worker starts: admitted, prefilled and decoded together
    worker.start()
    end = time.monotonic() + 120
    while len(done) < len(QUESTIONS) and time.monotonic() < end:
        time.sleep(0.005)
    worker.stop()
    return done, worker


def _text(events: list) -> str:
    return "".join(e[1] for e in events if e[0] == "delta")


def test_a_row_that_breaks_the_shared_step_fails_alone(pipe) -> None:  # noqa: ANN001
    """Row 0 (the shortest prompt) makes every step that feeds it position P raise, P below the other prompts'
    lengths: the batch's step fails, each row runs alone, row 0 fails again and gets the 500; rows 1 and 2 finish
    as they do alone, and row 0 is not fed again."""
    alone, _ = _run(pipe, decode_step, max_batch_size=1)
    lengths = [j.prompt_tokens for j in _jobs(pipe, {})]
    bad = lengths[0] + 2  # row 0's third decode step
    assert bad + 1 < min(lengths[1:])
    fed: list[list[int]] = []

    def step(model, tokens, positions, cache, mask):  # noqa: ANN001, ANN202
        fed.append(positions[:, 0].tolist())
        if bad in fed[-1]:
            raise IndexError(f"position {bad} is out of range")
        return decode_step(model, tokens, positions, cache, mask)

    done, worker = _run(pipe, step)
    assert done[0][-1][:2] == ("error", 500) and f"position {bad} is out of range" in done[0][-1][2]
    for i in (1, 2):
        assert done[i][-1] == ("done", "length") and _text(done[i]) == _text(alone[i])
    assert worker.metrics.errors == 1 and worker.metrics.step_retries == 1
    assert not any(bad + 1 in positions for positions in fed)  # left out of the cache at the next step


def test_a_step_that_fails_once_fails_no_row(pipe) -> None:  # noqa: ANN001
    """A shared step that raises once (e.g. memory short for the whole batch) costs a step of each row alone;
    every request finishes as it does alone."""
    alone, _ = _run(pipe, decode_step, max_batch_size=1)
    rows: list[int] = []

    def step(model, tokens, positions, cache, mask):  # noqa: ANN001, ANN202
        rows.append(tokens.shape[0])
        if len(rows) == 3:
            raise RuntimeError("not enough memory for this batch")
        return decode_step(model, tokens, positions, cache, mask)

    done, worker = _run(pipe, step)
    assert rows[:7] == [3, 3, 3, 1, 1, 1, 3]  # the failed step, each row alone, then together again
    assert {i: _text(ev) for i, ev in done.items()} == {i: _text(ev) for i, ev in alone.items()}
    assert all(ev[-1] == ("done", "length") for ev in done.values())
    assert worker.metrics.errors == 0 and worker.metrics.step_retries == 1
