"""Run a benchmark: batched greedy inference through the pipeline, resumable predictions, scores, report.

Output directory layout::

    predictions.jsonl   {"question_id", "prompt", "text", "model_id"} per line: the LLaVA answer-file keys,
                        so files written here and by LLaVA's own scripts score alike; resumable
    scores.json         the result object (also printed as the last line of stdout)
    report.md           the same, as Markdown tables
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .lock import out_dir_lock
from .report import write_report
from .tasks.base import Sample, Task, numbered
from .tasks.io import read_text

MAX_IDS = 20  # ids listed in the result object for missing images / failures (the count is exact)


def _lines(path: Path) -> list[str]:
    """The lines of an answer file, split at "\n", "\r\n" and "\r" only (as Python's text mode reads them): answers
    are written with ``ensure_ascii=False``, so a U+2028 or \x85 inside one is raw text that ``str.splitlines`` would
    cut the record at. A file that is not UTF-8 is refused, naming it (:func:`llavakit.eval.tasks.io.read_text`)."""
    return read_text(path).replace("\r\n", "\n").replace("\r", "\n").split("\n")


def record_key(record: dict[str, Any]) -> str:
    """An answer record's question key: its ``question_id`` (else ``id``), with ``/<round_id>`` for MMBench rounds."""
    qid = record["question_id"] if "question_id" in record else record["id"]
    return f"{qid}/{record['round_id']}" if "round_id" in record else str(qid)


def read_predictions(
    path: Path,
    *,
    tolerate_torn_tail: bool = False,
    key_of: Callable[[dict[str, Any]], str] | None = None,
    number_repeats: bool = False,
    same_repeats: bool = False,
) -> dict[str, str]:
    """Predicted texts by question id from a JSONL answer file: ``{"question_id", "text"}`` (LLaVA's and ours),
    ``"id"`` / ``"prediction"`` / ``"answer"`` also accepted. MMBench answers with a ``round_id`` are keyed
    ``"<question_id>/<round_id>"``; ``key_of`` overrides the key (a task's own rule). ``number_repeats``: a key
    that ``key_of`` derives (not the record's own id) and meets again is numbered ``key#n``, as the task's reader
    numbers such questions (TextVQA); any other key met twice is refused, unless ``same_repeats`` and both lines
    give the same answer (two runs that wrote one directory at once, before runs locked it): it counts once. A torn
    last line (a crash mid-write) is skipped when resuming."""
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    derived: dict[str, int] = {}
    lines = _lines(path)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            qid = record["question_id"] if "question_id" in record else record["id"]
            text = next(record[k] for k in ("text", "prediction", "answer") if k in record)
        except (json.JSONDecodeError, KeyError, TypeError, StopIteration):
            if tolerate_torn_tail and n == len(lines):
                break
            raise ValueError(
                f"{path}:{n}: not a prediction record (need JSON with 'question_id' and 'text'); fix that line"
            ) from None
        if key_of is not None:
            key = key_of(record)
            if number_repeats and key != str(qid):
                key = numbered(key, derived)
        else:
            key = record_key(record)
        if text is not None and not isinstance(text, (str, int, float)):
            raise ValueError(f"{path}:{n}: the answer must be a string, got {type(text).__name__} {text!r}")
        if key in first_line:  # which of two answers would be scored is not for us to guess
            if same_repeats and out[key] == ("" if text is None else str(text)):
                continue
            differ = " with another answer" if same_repeats else ""
            raise ValueError(
                f"{path}:{n}: question {key!r} is answered twice (also on line {first_line[key]}){differ}; "
                "delete one of the two lines"
            )
        first_line[key] = n
        out[key] = "" if text is None else str(text)
    return out


def _check_same_model(path: Path, model_id: str, settings: dict[str, Any] | None = None) -> None:
    """Refuse to resume a predictions file written by another model, or by the same model run differently (another
    task, dtype, quantization, answer length, or weights changed in place): its answers would be mixed in and scored
    as this run's. Settings a file does not record (older files) are not compared."""
    for line in [ln for ln in _lines(path) if ln.strip()][:1]:
        first = json.loads(line)
        other = first.get("model_id")
        if other is not None and other != model_id:
            raise ValueError(
                f"{path} holds predictions of model {other!r}, not {model_id!r}; pass another --out directory"
            )
        theirs = first.get("settings")
        if theirs is not None and settings is not None:
            diff = {k: (theirs[k], v) for k, v in settings.items() if k in theirs and theirs[k] != v}
            if diff:
                said = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(
                    f"{path} holds predictions made with other settings ({said}); pass another --out directory "
                    "(or delete the file to predict everything again)"
                )


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that is not complete JSON (a crash mid-write, possibly inside a multi-byte character) so
    that reading and appending start cleanly."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if not lines:
        return
    try:
        json.loads(lines[-1].decode("utf-8"))
        torn = False
    except (UnicodeDecodeError, json.JSONDecodeError):
        torn = True
    if torn:
        path.write_bytes(b"".join(lines[:-1]))
    elif not data.endswith(b"\n"):
        path.write_bytes(data + b"\n")


def _drop_repeats(path: Path, answers: int) -> None:
    """Keep the first of lines that answer one question again alike (:func:`read_predictions` with
    ``same_repeats`` has refused repeats that differ), so the file scores with ``llava eval score`` too.
    ``answers``: the questions the file answers; nothing is rewritten when every line is one of them."""
    lines = [ln for ln in _lines(path) if ln.strip()]
    if len(lines) == answers:
        return
    seen: set[str] = set()
    kept = []
    for line in lines:
        key = record_key(json.loads(line))
        if key not in seen:
            seen.add(key)
            kept.append(line + "\n")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text("".join(kept), encoding="utf-8")
    os.replace(partial, path)  # whole or not at all: a crash here leaves the old file


def _check_same_questions(path: Path, samples: list[Sample]) -> None:
    """Refuse to resume answers whose recorded prompt is not the prompt this data asks under the same id (other
    data, another task, or changed questions written to the same --out directory)."""
    prompts = {s.id: s.prompt for s in samples}
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        qid = str(record.get("question_id", record.get("id")))
        if "prompt" in record and qid in prompts and record["prompt"] != prompts[qid]:
            recorded = str(record["prompt"])  # null or a number when another tool wrote the file
            raise ValueError(
                f"{path}:{n}: question {qid!r} was answered for another prompt ({recorded[:60]!r}) than this "
                f"data asks ({prompts[qid][:60]!r}): other data, another task or a llavakit whose prompts differed "
                "(MME before 2026-12-04, TextVQA before 2026-12-05) wrote this directory; pass another --out directory"
            )


def _message(sample: Sample) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image", "image": sample.image}] if sample.image is not None else []
    return [{"role": "user", "content": parts + [{"type": "text", "text": sample.prompt}]}]


def missing_images(samples: list[Sample]) -> list[str]:
    """Ids of samples whose image file does not exist."""
    return [s.id for s in samples if isinstance(s.image, str) and not Path(s.image).is_file()]


def limit_samples(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` samples, extended to the end of the last group (rotations, image pairs)."""
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    end = limit
    while end < len(samples) and samples[end].group is not None and samples[end].group == samples[end - 1].group:
        end += 1
    return samples[:end]


def predict(
    pipe: Any,
    samples: list[Sample],
    out_path: Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    model_id: str,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Answer ``samples`` in batches, appending to ``out_path``; return (id, error) of samples that failed.

    A batch that fails (e.g. an undecodable image) is retried one by one so one bad sample costs only itself.
    """
    from tqdm import tqdm

    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(samples), disable=not progress, unit="q", file=sys.stderr)
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
    recorded = {"settings": settings} if settings is not None else {}
    with out_path.open("a", encoding="utf-8") as f:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            try:
                texts: list[str | None] = [a.text for a in pipe.batch([_message(s) for s in chunk], **sampling)]
            except (ValueError, OSError):
                texts = []
                for s in chunk:
                    try:
                        texts.append(pipe.batch([_message(s)], **sampling)[0].text)
                    except (ValueError, OSError) as e:
                        texts.append(None)
                        failed.append((s.id, str(e)))
            for s, text in zip(chunk, texts):
                if text is not None:
                    record = {"question_id": s.id, "prompt": s.prompt, "text": text.strip(), "model_id": model_id}
                    record |= recorded
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(chunk))
    bar.close()
    return failed


def result_object(
    task: Task, samples: list[Sample], predictions: dict[str, str], *, missing: list[str], extra: dict[str, Any]
) -> dict[str, Any]:
    """Score the answered samples and assemble the result object (the scores JSON)."""
    missing_set = set(missing)
    present = [s for s in samples if s.id not in missing_set]
    known = {s.id for s in samples}
    unanswered = [s.id for s in present if s.id not in predictions]
    scored = task.score(present, predictions)
    result: dict[str, Any] = {"task": task.name, **extra, **scored}
    result["missing_images"] = {"count": len(missing), "ids": missing[:MAX_IDS]}
    result["unanswered"] = {"count": len(unanswered), "ids": unanswered[:MAX_IDS]}
    unknown = [k for k in predictions if k not in known]
    if unknown:
        result["unknown_prediction_ids"] = {"count": len(unknown), "ids": unknown[:MAX_IDS]}
    return result


def finish(result: dict[str, Any], out_dir: Path, printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Write scores.json and report.md; print a summary and the result as the last line of stdout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(result, sort_keys=False)
    (out_dir / "scores.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out_dir / "report.md")
    for warning in result.get("warnings", []):  # the task's own (e.g. MME scored over part of its subtasks)
        print(f"warning: {warning}", file=sys.stderr)
    for name in ("missing_images", "unanswered", "unknown_prediction_ids"):
        info = result.get(name)
        if info and info["count"]:
            print(
                f"warning: {info['count']} {name.replace('_', ' ')} (e.g. {', '.join(info['ids'][:5])})",
                file=sys.stderr,
            )
    if failed := result.get("failed"):  # why they went unanswered, not only in the JSON
        print(f"warning: {failed['count']} failed; the first: {failed['first_error']}", file=sys.stderr)
    printer(f"wrote {out_dir / 'scores.json'} and {out_dir / 'report.md'}")
    printer(line)
    return result


def check_run_args(task: Task, batch_size: int, max_new_tokens: int | None) -> None:
    """Refuse a batch size or answer length ``run`` cannot use (called before the model loads, too)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens} (left out: {task.max_new_tokens})")


def run(
    task: Task,
    samples: list[Sample],
    pipe: Any,
    out_dir: Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    model_id: str = "",
    settings: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict what is not yet in ``out_dir/predictions.jsonl``, score everything answered, write outputs.

    ``settings`` (e.g. dtype and quantization) are recorded with every prediction, with the answer length, and a
    rerun with other settings is refused rather than resumed. ``out_dir`` is locked meanwhile
    (:func:`llavakit.eval.lock.out_dir_lock`): a run into it from another process is refused at once."""
    check_run_args(task, batch_size, max_new_tokens)
    with out_dir_lock(out_dir):  # another process appending to the same predictions.jsonl is refused
        return _run(task, samples, pipe, out_dir, batch_size, max_new_tokens, model_id, settings, extra, progress)


def _run(
    task: Task,
    samples: list[Sample],
    pipe: Any,
    out_dir: Path,
    batch_size: int,
    max_new_tokens: int | None,
    model_id: str,
    settings: dict[str, Any] | None,
    extra: dict[str, Any] | None,
    progress: bool,
) -> dict[str, Any]:
    max_new_tokens = max_new_tokens or task.max_new_tokens
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / "predictions.jsonl"
    if pred_path.exists():
        _drop_torn_tail(pred_path)
    done = read_predictions(pred_path, same_repeats=True) if pred_path.exists() else {}
    if done:
        _drop_repeats(pred_path, len(done))
    settings = {"task": task.name, **(settings or {}), "max_new_tokens": max_new_tokens}
    if done:
        _check_same_model(pred_path, model_id, settings)
        _check_same_questions(pred_path, samples)
    missing = missing_images(samples)
    missing_set = set(missing)
    todo = [s for s in samples if s.id not in done and s.id not in missing_set]
    start = time.perf_counter()
    failed = predict(
        pipe,
        todo,
        pred_path,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        model_id=model_id,
        settings=settings,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    ids = {s.id for s in samples}  # answers beyond a smaller --limit stay in the file but are not scored
    answers = read_predictions(pred_path, tolerate_torn_tail=True, same_repeats=True)
    predictions = {k: v for k, v in answers.items() if k in ids}
    info = {
        **(extra or {}),
        "model": model_id,
        "settings": settings,
        "questions": len(samples),
        "predicted_now": len(todo) - len(failed),
        "resumed": len([s for s in samples if s.id in done]),
        "seconds": round(seconds, 2),
    }
    if not predictions:  # the scorer would only say "no predictions": say why
        why = [f"{len(missing)} images missing (e.g. {missing[0]})"] if missing else []
        why += [f"{len(failed)} questions failed (first: {failed[0][1]})"] if failed else []
        raise ValueError(f"{task.name}: no question was answered: {'; '.join(why) or 'nothing to ask'}")
    result = result_object(task, samples, predictions, missing=missing, extra=info)
    if failed:
        result["failed"] = {"count": len(failed), "ids": [i for i, _ in failed[:MAX_IDS]], "first_error": failed[0][1]}
    return result
