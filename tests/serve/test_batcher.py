"""The model worker without HTTP: requests joining and leaving a running batch at different steps (finished rows
stay in the cache until the next merge or until they are half of the rows) get the tokens they get alone."""

from __future__ import annotations

import threading
import time

import torch

from llavakit.engine.sampling import SamplingParams
from llavakit.serve.batcher import Batcher, Job
from llavakit.serve.rows import RunningBatch


def _job(pipe, i: int, max_new: int, done: dict) -> Job:  # noqa: ANN001
    ids = pipe.processor.tokenizer.encode(f"USER: question number {i} about {'x' * i} ASSISTANT:")
    events: list = []

    def emit(ev: tuple) -> None:
        events.append(ev)
        if ev[0] in ("done", "error"):
            done[i] = events

    return Job(torch.tensor(ids), {}, max_new, SamplingParams(temperature=0.0), [], time.monotonic() + 120, emit)


def test_rows_leaving_and_joining_match_alone(pipe, monkeypatch) -> None:  # noqa: ANN001
    merged_with_finished = []
    merge = RunningBatch.merge

    def spy(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        merged_with_finished.append(any(r.done for r in self.rows))
        return merge(self, *a, **kw)

    monkeypatch.setattr(RunningBatch, "merge", spy)
    lengths = [3, 12, 5, 9, 2, 14, 7, 4]  # rows end at different steps while others arrive
    alone: dict = {}
    solo = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=1)
    solo.start()
    for i, n in enumerate(lengths):
        solo.submit(_job(pipe, i, n, alone))
        while i not in alone:
            time.sleep(0.005)
    solo.stop()

    together: dict = {}
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=4)
    worker.start()

    def arrive() -> None:  # four at once, then each of the others as soon as one more request has finished
        end = time.monotonic() + 60
        for i, n in enumerate(lengths):
            while i >= 4 and len(together) < i - 3 and time.monotonic() < end:
                time.sleep(0.001)
            worker.submit(_job(pipe, i, n, together))

    t = threading.Thread(target=arrive)
    t.start()
    t.join()
    end = time.monotonic() + 60
    while len(together) < len(lengths) and time.monotonic() < end:
        time.sleep(0.01)
    worker.stop()
    text = {i: "".join(e[1] for e in ev if e[0] == "delta") for i, ev in together.items()}
    assert text == {i: "".join(e[1] for e in ev if e[0] == "delta") for i, ev in alone.items()}
    assert all(ev[-1][0] == "done" for ev in together.values())
    assert worker.metrics.prefills > 1 and worker.metrics.batch_size.total > 0
    assert any(merged_with_finished), "no request joined while a finished row was still in the cache"


def _run(worker: Batcher, job: Job, done: dict, i: int) -> list:
    worker.submit(job)
    end = time.monotonic() + 60
    while i not in done and time.monotonic() < end:
        time.sleep(0.005)
    return done[i]


def test_ignore_eos_generates_past_eos_to_max_tokens(pipe) -> None:  # noqa: ANN001
    """With ``ignore_eos`` a row goes on past its EOS token (vLLM's extension, for fixed-length benchmarks) and
    gives the tokens of a worker that knows no EOS; without it the same row stops at that token."""
    tok = pipe.processor.tokenizer
    first: dict = {}
    free = Batcher(pipe.model, tok, max_batch_size=2)
    free.eos = set()  # the reference: this worker never stops on EOS
    free.start()
    ref = _run(free, _job(pipe, 0, 10, first), first, 0)
    free.stop()
    assert ref[-1] == ("done", "length")
    ids = _job(pipe, 0, 10, {}).input_ids  # the prompt of the row below
    with torch.no_grad():
        step1 = int(pipe.model(ids[None]).logits[0, -1].argmax())  # the first token the row generates

    worker = Batcher(pipe.model, tok, max_batch_size=2)
    worker.eos = {step1}  # that token is this worker's EOS: a plain row ends on it at once
    worker.start()
    stopped: dict = {}
    job = _job(pipe, 0, 10, stopped)
    _run(worker, job, stopped, 0)
    assert stopped[0][-1] == ("done", "stop") and job.completion_tokens == 1
    kept: dict = {}
    job = _job(pipe, 0, 10, kept)
    job.ignore_eos = True
    events = _run(worker, job, kept, 0)
    worker.stop()
    assert events[-1] == ("done", "length") and job.completion_tokens == 10
    text = "".join(e[1] for e in events if e[0] == "delta")
    assert text == "".join(e[1] for e in ref if e[0] == "delta")


def test_a_failed_step_fails_its_rows_and_the_worker_goes_on(pipe, monkeypatch) -> None:  # noqa: ANN001
    """A step that raises while one row runs and another is being admitted answers both with an error; the
    worker survives (a Job compared by its fields once raised inside this handler and killed it)."""
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=4)
    calls = {"n": 0}
    sample = RunningBatch.sample

    def fail_third(self, **kw):  # noqa: ANN001, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return sample(self, **kw)

    monkeypatch.setattr(RunningBatch, "sample", fail_third)
    done: dict = {}
    worker.submit(_job(pipe, 0, 20, done))
    worker.submit(_job(pipe, 1, 20, done))
    worker.start()
    end = time.monotonic() + 60
    while len(done) < 2 and time.monotonic() < end:
        time.sleep(0.005)
    assert [done[i][-1][:2] for i in (0, 1)] == [("error", 500)] * 2
    assert worker.alive
    after = _run(worker, _job(pipe, 2, 3, done), done, 2)
    worker.stop()
    assert after[-1] == ("done", "length") and not worker.alive


def test_a_row_whose_sampling_fails_fails_alone(pipe, monkeypatch) -> None:  # noqa: ANN001
    """One row of a jointly decoded batch raises in its own sampling (its 3rd token): only that request gets a 500;
    the other sampled row and the greedy row finish with the tokens they get alone."""
    from llavakit.serve import rows

    def jobs(done: dict) -> list[Job]:
        out = [_job(pipe, i, 12, done) for i in range(3)]
        for job, seed in zip(out[:2], (7, 13)):
            job.params = SamplingParams(temperature=0.8, top_k=20, seed=seed)
        return out

    alone: dict = {}
    solo = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=1)
    solo.start()
    for i, job in enumerate(jobs(alone)):
        _run(solo, job, alone, i)
    solo.stop()

    calls = {"n": 0}
    sample = rows.sample

    def fail_seed_13(logits, params, generator):  # noqa: ANN001, ANN202
        if params.seed == 13:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return sample(logits, params, generator)

    monkeypatch.setattr(rows, "sample", fail_seed_13)
    done: dict = {}
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=4)
    for job in jobs(done):
        worker.submit(job)
    worker.start()
    end = time.monotonic() + 60
    while len(done) < 3 and time.monotonic() < end:
        time.sleep(0.005)
    worker.stop()
    assert done[1][-1][:2] == ("error", 500) and "inf, nan" in done[1][-1][2]
    assert all(e[0] == "delta" for e in done[1][:-1])  # its text so far, then the error
    for i in (0, 2):
        assert done[i][-1][0] == "done"
        assert "".join(e[1] for e in done[i] if e[0] == "delta") == "".join(e[1] for e in alone[i] if e[0] == "delta")
    assert worker.metrics.errors == 1


def test_a_request_whose_prefill_fails_fails_alone(pipe) -> None:  # noqa: ANN001
    """Two jobs arrive together while a third runs; one carries image inputs the model refuses (pixel values for
    a prompt without image tokens). Only that job gets a 500; the one prefilled with it and the running row
    finish with the tokens they get alone."""
    alone: dict = {}
    solo = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=1)
    solo.start()
    for i in (0, 2):
        _run(solo, _job(pipe, i, 12, alone), alone, i)
    solo.stop()

    done: dict = {}
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=4)
    worker.start()
    worker.submit(_job(pipe, 0, 12, done))
    while worker.metrics.prefills < 1:  # the first row runs before the others arrive
        time.sleep(0.001)
    bad = _job(pipe, 1, 12, done)
    bad.vision = {"pixel_values": torch.zeros(1, 3, 8, 8)}
    with worker.cond:  # both land in one admission
        worker.pending.extend([bad, _job(pipe, 2, 12, done)])
        worker.cond.notify_all()
    end = time.monotonic() + 60
    while len(done) < 3 and time.monotonic() < end:
        time.sleep(0.005)
    worker.stop()
    assert done[1][-1][:2] == ("error", 500)
    for i in (0, 2):
        assert done[i][-1][0] == "done"
        assert "".join(e[1] for e in done[i] if e[0] == "delta") == "".join(e[1] for e in alone[i] if e[0] == "delta")
    assert worker.metrics.errors == 1


def test_a_row_whose_text_handling_fails_fails_alone(pipe) -> None:  # noqa: ANN001
    """A row that raises while its token is handed out (here: its owner's callback) ends with a 500; the other
    rows of the batch generate on to their end."""
    done: dict = {}
    good = _job(pipe, 0, 12, done)
    broken = _job(pipe, 1, 12, done)
    events: list = []

    def emit(ev: tuple) -> None:
        events.append(ev)
        if ev[0] == "delta" and len(events) == 2:
            raise ConnectionError("the client went away mid-write")
        if ev[0] in ("done", "error"):
            done[1] = events

    broken.emit = emit
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=4)
    worker.submit(good)
    worker.submit(broken)
    worker.start()
    end = time.monotonic() + 60
    while len(done) < 2 and time.monotonic() < end:
        time.sleep(0.005)
    worker.stop()
    assert done[1][-1][:2] == ("error", 500) and "ConnectionError" in done[1][-1][2]
    assert done[0][-1][0] == "done" and good.completion_tokens == 12


def test_a_job_answered_by_its_own_prefill_failure_is_not_answered_twice(pipe, monkeypatch) -> None:  # noqa: ANN001
    """If the merge after a partly failed admission fails too, the job whose prefill failed keeps its one error."""

    def broken_merge(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise RuntimeError("out of memory while copying the cache")

    monkeypatch.setattr(RunningBatch, "merge", broken_merge)
    done: dict = {}
    bad = _job(pipe, 0, 5, done)
    bad.vision = {"pixel_values": torch.zeros(1, 3, 8, 8)}
    good = _job(pipe, 1, 5, done)
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=4)
    worker.pending.extend([bad, good])
    worker.start()
    end = time.monotonic() + 60
    while len(done) < 2 and time.monotonic() < end:
        time.sleep(0.005)
    time.sleep(0.1)
    worker.stop()
    assert [e[0] for e in done[0]] == ["error"] and [e[0] for e in done[1]] == ["error"]
    assert "out of memory" in done[1][0][2] and worker.metrics.errors == 2


def test_a_cancelled_queued_job_leaves_the_queue_at_once(pipe) -> None:  # noqa: ANN001
    """A client gone while its job waits frees its place in the queue right away (not when the job reaches the
    head of the queue): new requests are not refused because of abandoned ones."""
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_queue=2)  # not started: jobs stay queued
    done: dict = {}
    gone, waiting = _job(pipe, 0, 5, done), _job(pipe, 1, 5, done)
    worker.submit(gone)
    worker.submit(waiting)
    assert worker.full() and worker.queue_depth == 2
    gone.cancelled.set()
    assert not worker.full() and worker.queue_depth == 1 and worker.metrics.cancelled == 1
    new = _job(pipe, 2, 5, done)
    worker.submit(new)  # takes the freed place
    assert list(worker.pending) == [waiting, new] and worker.metrics.cancelled == 1


def test_a_job_that_timed_out_in_the_queue_is_not_told_to_lower_max_tokens(pipe) -> None:  # noqa: ANN001
    """It never ran, so "retry with a smaller max_tokens" (what a row cut by its deadline is told) would not help."""
    done: dict = {}
    worker = Batcher(pipe.model, pipe.processor.tokenizer)
    job = _job(pipe, 0, 4, done)
    job.deadline = time.monotonic() - 1  # its time ran out while it waited
    worker.submit(job)
    assert worker._take(wait=False) == []
    (kind, status, message) = done[0][-1]
    assert (kind, status) == ("error", 504) and "waited in the queue" in message and "max_tokens" not in message


def test_a_job_out_of_time_before_its_first_token_is_not_told_to_lower_max_tokens(pipe) -> None:  # noqa: ANN001
    """Admitted just in time (the rows ahead of it, having arrived earlier, end at their deadlines first), its
    time runs out in its prefill (seconds for a 7B model on a CPU): no token came, so "retry with a smaller
    max_tokens" would not help (it was what such a request was told)."""
    done: dict = {}
    worker = Batcher(pipe.model, pipe.processor.tokenizer)
    job = _job(pipe, 0, 4, done)
    worker.submit(job)
    batch = RunningBatch(pipe.model, worker.step)
    with torch.no_grad():
        worker._admit(batch, worker._take(wait=False))  # in time
        job.deadline = time.monotonic() - 1  # the prefill took the rest
        worker._step(batch)
    (kind, status, message) = done[0][-1]
    assert (kind, status) == ("error", 504) and "before its first token" in message, message
    assert "max_tokens" not in message


def test_the_repetition_penalty_leaves_prompt_ids_past_the_vocabulary_out(pipe) -> None:  # noqa: ANN001
    """An image token id that is not a row of the vocabulary (a checkpoint may have one; the embedding lookup allows
    it) was clamped to V - 1, so the server penalized the last vocabulary token, which the prompt never held, and its
    answers differed from the engine's (``engine.generate.decode`` counts only ids in [0, V))."""
    from llavakit.serve.rows import Row

    v = 50
    ids = torch.tensor([1, 17, 40, v, v + 70, 5])
    job = Job(ids, {}, 4, SamplingParams(repetition_penalty=2.0), [], time.monotonic() + 60, lambda ev: None)
    row = Row(job, pipe.processor.tokenizer)
    row.start(v, torch.device("cpu"))
    assert row.seen[0].nonzero().flatten().tolist() == [1, 5, 17, 40]


def test_nan_logits_are_a_500_that_names_them(pipe) -> None:  # noqa: ANN001
    """NaN weights made greedy rows answer with the NaN's token as if nothing were wrong."""
    w = pipe.model.lm_head.weight.detach().clone()
    done: dict = {}
    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=4)
    worker.start()
    try:
        with torch.no_grad():
            pipe.model.lm_head.weight[7, 0] = float("nan")
        _run(worker, _job(pipe, 0, 4, done), done, 0)
    finally:
        worker.stop()
        with torch.no_grad():
            pipe.model.lm_head.weight.copy_(w)
    status, message = done[0][-1][1:]
    assert status == 500 and "logits hold NaN or inf" in message and not any(e[0] == "delta" for e in done[0])
