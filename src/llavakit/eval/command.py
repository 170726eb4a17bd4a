"""``llava eval TASK | score | compare``: the command bodies and their argparse wiring."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..config import QUANTIZE_MODES
from .lock import out_dir_lock
from .report import compare, load_run
from .run import check_run_args, finish, limit_samples, missing_images, read_predictions, result_object, run
from .tasks import TASKS, get_task
from .tasks.base import Sample, Task


def _read(task: Task, data: str) -> list[Sample]:
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{task.name}: --data {data} does not exist; expected {task.data_help}")
    try:
        samples = task.read(path)
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # a field missing or of the wrong type
        raise ValueError(
            f"{task.name}: a record in {data} cannot be read ({type(e).__name__}: {e}); expected {task.data_help}"
        ) from None
    if not samples:
        raise ValueError(f"{task.name}: no questions found in {data}; expected {task.data_help}")
    seen: set[str] = set()
    for s in samples:
        if not isinstance(s.prompt, str) or not s.prompt.strip():
            raise ValueError(f"{task.name}: question {s.id!r} in {data} has no question text (got {s.prompt!r})")
        if s.id in seen:
            raise ValueError(f"{task.name}: question id {s.id!r} occurs more than once in {data}")
        seen.add(s.id)
    return samples


OUTPUTS = ("predictions.jsonl", "scores.json", "report.md")  # the files a run writes in its output directory


def check_out_dir(out_dir: Path, given: bool = True) -> None:
    """Refuse an output directory that cannot be one before any work: an existing file (or a path under one), or a
    directory holding a directory where a run writes one of its files. ``given``: ``out_dir`` came from ``--out``
    (else it is the default ``runs/eval/...``, and the fix is to pass ``--out``)."""
    said = f"--out {out_dir}" if given else f"the default output directory {out_dir}"
    fix = "pass --out with a new or existing directory for predictions.jsonl, scores.json and report.md"
    for p in (out_dir, *out_dir.parents):
        if p.is_dir():
            break
        if p.exists():  # a file (or a device, a socket): nothing is written under it
            where = "is" if p == out_dir else f"lies under {p}, which is"
            raise ValueError(f"{said} {where} a file, not a directory; {fix}")
        if p.is_symlink():
            raise ValueError(f"{said}: {p} is a link to nothing; {fix}")
    for name in OUTPUTS:
        if (out_dir / name).is_dir():
            raise ValueError(f"{said}: {out_dir / name} is a directory where the run writes a file; {fix}")


def check_scorable(task: Task, samples: list[Sample], missing: list[str]) -> None:
    """Score empty answers once before any inference: reference data the scorer refuses (a POPE label that is
    not yes/no, an MME image without its question pair, fewer than ten VQA answers) fails now, not after hours.
    ``missing``: the ids whose image is not there (not asked and not scored: their references do not matter)."""
    skipped = set(missing)
    present = [s for s in samples if s.id not in skipped]
    if not present:
        return
    try:
        task.score(present, {s.id: "" for s in present})
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{task.name}: the data cannot be scored, so nothing was run: {e}") from None


def weights_fingerprint(model: Path) -> str | None:
    """Size and modification time of a local checkpoint's weight files: a checkpoint retrained in place gets a
    new fingerprint, so its evaluation is not resumed from the old weights' answers. None for hub ids."""
    from ..checkpoint.load import checkpoint_files

    if not model.is_dir():
        return None
    files = checkpoint_files(model)  # the files the loader reads (none there: its error, naming the fix)
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files) or None


def synth_data(out: Path, n: int, seed: int, sides: tuple[int, int] | None = None) -> Path:
    """The held-out synthetic eval set for (n, seed, long-side bounds) under ``out``, generated once and reused
    on resume. ``sides`` None: the generator's defaults."""
    from ..data.synth import MAX_SIDE, MIN_SIDE, write_dataset

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    lo, hi = sides or (MIN_SIDE, MAX_SIDE)
    data = out / f"data-seed{seed}-n{n}-side{lo}-{hi}"
    if not (data / "eval.jsonl").is_file():
        # written beside and renamed when whole: a run killed mid-write (eval.jsonl is written before
        # scenes.jsonl, which the per-scene scores read) leaves a partial folder that the next run rewrites
        partial = data.with_name(f"{data.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        write_dataset(partial, n, seed, kind="eval", min_side=lo, max_side=hi)
        if data.exists():  # an incomplete set (no eval.jsonl): generated data, regenerated just now
            shutil.rmtree(data)
        partial.rename(data)
    return data


def eval_task(
    task_name: str,
    *,
    model: str | None,
    data: str | None,
    out: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    dtype: str = "float32",
    quantize: str | None = None,
    compile: bool = False,
    n: int = 200,
    seed: int | None = None,
    sides: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one benchmark end to end (see :mod:`llavakit.eval.run`); returns the result object."""
    from ..commands import check_given, default_model, open_pipeline, output_error

    task = get_task(task_name)
    if data is not None:  # "" would be the working directory
        check_given(data, "--data", f"the benchmark's local copy ({task.data_help})")
    if out is not None:
        check_given(out, "--out", "the run's output directory")
    check_run_args(task, batch_size, max_new_tokens)  # before the model loads and the data is read
    if limit is not None and limit < 1:  # before a synthetic set is generated, too
        raise ValueError(f"--limit must be >= 1, got {limit}")
    model_path = model or default_model()
    local = Path(model_path)
    # The full path tells checkpoints with the same directory name apart (resume must not mix them).
    model_id = str(local.resolve()) if local.exists() else str(model_path)
    # runs that differ in dtype or quantization get their own default directory (never resumed into each other)
    variant = "".join(f"-{v}" for v in (dtype if dtype != "float32" else None, quantize) if v)
    out_dir = Path(out or f"runs/eval/{task.name}-{local.name or 'model'}{variant}")
    check_out_dir(out_dir, given=out is not None)  # before hours of inference, not after
    held = ExitStack()  # one llava eval per --out: a second is refused before it loads the model
    try:
        held.enter_context(out_dir_lock(out_dir))
    except OSError as e:  # busy (said as is), or the directory or its lock file cannot be made
        raise output_error(e, out_dir, "the run's outputs", "--out") from None
    with held:
        extra: dict[str, Any] = {}
        if data is None:
            if task.name != "synth":
                raise ValueError(f"{task.name}: give --data PATH ({task.data_help})")
            from ..data.synth import EVAL_SEED_BASE

            seed = EVAL_SEED_BASE if seed is None else seed
            from ..data.synth import trained_sides

            sides = sides or trained_sides(local)
            if sides is None:  # the generator's default sizes, said
                from ..data.synth import MAX_SIDE, MIN_SIDE, untold_sides_note

                print(untold_sides_note(model_path, MIN_SIDE, MAX_SIDE), file=sys.stderr)
            data = str(synth_data(out_dir, n, seed, sides))
            extra["seed"] = seed
        samples = limit_samples(_read(task, data), limit)
        missing = missing_images(samples)
        check_scorable(task, samples, missing)
        if samples and len(missing) == len(samples) and not (out_dir / "predictions.jsonl").exists():
            first = next(s.image for s in samples if s.id == missing[0])
            raise FileNotFoundError(  # was found only after the model loaded, naming no path
                f"{task.name}: none of the {len(samples)} questions' images is there (the first looked for: {first}); "
                f"pass --data the benchmark's folder with its images ({task.data_help})"
            )
        pipe = open_pipeline(model_path, dtype, quantize, compile)  # compile: the decode step, not the answers
        try:
            result = run(
                task,
                samples,
                pipe,
                out_dir,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                model_id=model_id,
                settings={"dtype": dtype, "quantize": quantize, "weights": weights_fingerprint(local)},
                extra={"data": str(Path(data).resolve()), **extra},  # absolute: `eval compare` tells data apart
                progress=progress,
            )
            return finish(result, out_dir)
        except OSError as e:  # e.g. no permission to write there: say which output and what to do
            raise output_error(e, out_dir, "the run's outputs", "--out") from None


def score_file(task_name: str, *, data: str, predictions: str, out: str | None = None) -> dict[str, Any]:
    """Score an answer file produced elsewhere (LLaVA's scripts, another engine) with the same rules."""
    from ..commands import check_given, output_error

    task = get_task(task_name)
    check_given(data, "--data", f"the benchmark's local copy ({task.data_help})")  # "" is the working directory
    check_given(predictions, "--predictions", "the answer file (JSONL with question_id and text)")
    if out is not None:
        check_given(out, "--out", "the directory for scores.json and report.md")
    pred_path = Path(predictions)
    if not pred_path.is_file():
        raise FileNotFoundError(f"predictions file not found: {predictions}")
    out_dir = Path(out or f"runs/eval/{task.name}-scored-{pred_path.stem}")
    check_out_dir(out_dir, given=out is not None)
    samples = _read(task, data)
    preds = read_predictions(pred_path, key_of=task.key_of, number_repeats=task.number_repeats)
    aliases = {s.alias: s.id for s in samples if s.alias is not None}
    preds = {aliases.get(k, k): v for k, v in preds.items()}
    if not preds:
        raise ValueError(f"{predictions}: no predictions in the file")
    answered = [s for s in samples if s.id in preds]
    if not answered:
        example = next(iter(preds))
        raise ValueError(
            f"{predictions}: none of its question ids (e.g. {example!r}) is in {data} "
            f"(e.g. {samples[0].id!r}); score it against the question file it answers"
        )
    from .run import missing_images

    missing = [i for i in missing_images(samples) if i not in preds]  # answered elsewhere: their image is no matter
    extra = {"data": str(Path(data).resolve()), "predictions_file": str(pred_path.resolve()), "questions": len(samples)}
    result = result_object(task, samples, preds, missing=missing, extra=extra)
    try:
        with out_dir_lock(out_dir):  # not into a directory a running llava eval writes (its scores.json)
            return finish(result, out_dir)
    except OSError as e:  # busy (said as is), or the directory cannot be written
        raise output_error(e, out_dir, "the scores", "--out") from None


def compare_runs(run_a: str, run_b: str) -> dict[str, Any]:
    from ..commands import check_given

    for path, name in ((run_a, "RUN_A"), (run_b, "RUN_B")):  # "" is the working directory
        check_given(path, name, "an eval output directory or its scores.json")
    table, summary = compare(load_run(run_a), load_run(run_b))
    print(table)
    print(json.dumps(summary))
    return summary


def add_parser(sub: Any) -> None:
    """Register ``llava eval`` on the top-level subparsers object."""
    ev = sub.add_parser("eval", help="benchmarks with their official metrics; score answer files; compare runs")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    for name, task in TASKS.items():
        t = esub.add_parser(name, help=task.description)
        t.add_argument("--model", help="model directory or hub id (default: the bundled model)")
        t.add_argument("--data", required=name != "synth", help=task.data_help)
        t.add_argument("--limit", type=int, help="only the first N questions (whole groups kept)")
        t.add_argument("--batch-size", type=int, default=8)
        t.add_argument("--out", help="output directory (default runs/eval/TASK-MODEL); reruns resume")
        t.add_argument("--max-new-tokens", type=int, help=f"default {task.max_new_tokens}")
        t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        t.add_argument("--quantize", choices=QUANTIZE_MODES)
        t.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow first batch)")
        t.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
        if name == "synth":
            t.add_argument("--n", type=int, help="scenes to generate when --data is not given (default 200)")
            t.add_argument("--seed", type=int, help="held-out seed (default llavakit.data.synth.EVAL_SEED_BASE)")
            t.add_argument(
                "--sides",
                type=int,
                nargs=2,
                metavar=("MIN", "MAX"),
                help="long-side bounds of generated scenes, pixels (default: the model's training.json, else "
                "the generator's 336 1008)",
            )
        t.set_defaults(func=_quiet_when_stdout_closes(_run_task))
    sc = esub.add_parser("score", help="score a predictions JSONL made elsewhere (keys question_id, text)")
    sc.add_argument("task", choices=list(TASKS))
    sc.add_argument("--data", required=True)
    sc.add_argument("--predictions", required=True)
    sc.add_argument("--out")
    sc.set_defaults(
        func=_quiet_when_stdout_closes(
            lambda a: _ok(score_file(a.task, data=a.data, predictions=a.predictions, out=a.out))
        )
    )
    cp = esub.add_parser("compare", help="side-by-side table of two runs' scores")
    cp.add_argument("run_a", metavar="RUN_A", help="eval output directory or scores.json")
    cp.add_argument("run_b", metavar="RUN_B")
    cp.set_defaults(func=_quiet_when_stdout_closes(lambda a: _ok(compare_runs(a.run_a, a.run_b))))


def _ok(_: Any) -> int:
    return 0


def _quiet_when_stdout_closes(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``llava eval compare A B | head -1``: the reader leaving printed "llava eval: error: [Errno 32] Broken pipe"
    (exit 2); now ``eval`` stops quietly with 141 as ``generate`` and ``chat`` do (:func:`llavakit.commands.
    stdout_gone`). stdout is flushed here, so output still buffered meets the closed pipe inside the guard."""

    def guarded(a: argparse.Namespace) -> int:
        try:
            code = func(a)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            from ..commands import stdout_gone

            return stdout_gone()

    return guarded


def _run_task(a: argparse.Namespace) -> int:
    generate = {"--n": getattr(a, "n", None), "--seed": getattr(a, "seed", None), "--sides": getattr(a, "sides", None)}
    if a.data is not None and (given := [k for k, v in generate.items() if v is not None]):
        raise ValueError(
            f"{'/'.join(given)} {'say' if len(given) > 1 else 'says'} what scenes to generate, but --data {a.data} "
            f"is scored as it is; drop {'/'.join(given)} (or --data, to generate a set)"
            + (", or pass --limit N to score only the first N questions" if "--n" in given else "")
        )
    eval_task(
        a.eval_command,
        model=a.model,
        data=a.data,
        out=a.out,
        limit=a.limit,
        batch_size=a.batch_size,
        max_new_tokens=a.max_new_tokens,
        dtype=a.dtype,
        quantize=a.quantize,
        compile=a.compile,
        **({} if generate["--n"] is None else {"n": generate["--n"]}),  # left out: eval_task's default
        seed=generate["--seed"],
        sides=tuple(generate["--sides"]) if generate["--sides"] else None,
        progress=not a.no_progress,
    )
    return 0
