"""Markdown report of one run and the side-by-side comparison of two runs (``llava eval compare``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tasks.io import read_text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def render_report(result: dict[str, Any]) -> str:
    """Markdown: header facts, a scores table (percent), counts, points (MME), missing images."""
    lines = [f"# {result['task']} evaluation", ""]
    for key in ("model", "data", "questions", "predictions_file", "seconds"):
        if key in result:
            lines.append(f"- {key}: `{result[key]}`")
    lines += [f"\n**warning:** {warning}" for warning in result.get("warnings", [])]
    lines += ["", "| metric | score (%) |", "|---|---:|"]
    lines += [f"| {name} | {_pct(value)} |" for name, value in result["scores"].items()]
    if result.get("points"):
        lines += ["", "| official points | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in result["points"].items()]
    if result.get("counts"):
        lines += ["", "| count | n |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in result["counts"].items()]
    for name in ("missing_images", "unanswered", "failed", "unknown_prediction_ids"):
        info = result.get(name)
        if info and info["count"]:
            lines += ["", f"**{name.replace('_', ' ')}: {info['count']}** (first ids: {', '.join(info['ids'])})"]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], path: Path) -> None:
    path.write_text(render_report(result), encoding="utf-8")


def load_run(path: str | Path) -> dict[str, Any]:
    """A run's result object: a directory holding scores.json, or the JSON file itself."""
    p = Path(path)
    file = p / "scores.json" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no scores at {path} (give an eval output directory or its scores.json)")
    try:
        result = json.loads(read_text(file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(result, dict) or not isinstance(result.get("scores"), dict):
        raise ValueError(f"{file}: not an eval result (no 'scores' object)")
    if not isinstance(result.get("task"), str):
        raise ValueError(f"{file}: not an eval result (no 'task' name)")
    for name, value in result["scores"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{file}: score {name!r} is not a number (got {value!r}); not a scores.json of llava eval")
    return result


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A Markdown table of every score of either run (A, B, B - A in points) and the same as a dict.

    Example: A overall 0.50, B overall 0.625 -> row ``| overall | 50.00 | 62.50 | +12.50 |``.
    """
    names = list(a["scores"]) + [k for k in b["scores"] if k not in a["scores"]]
    label_a = f"A ({a.get('model') or a['task']})"
    label_b = f"B ({b.get('model') or b['task']})"
    rows = [f"| metric | {label_a} | {label_b} | B - A |", "|---|---:|---:|---:|"]
    diff: dict[str, float | None] = {}
    for name in names:
        va, vb = a["scores"].get(name), b["scores"].get(name)
        d = None if va is None or vb is None else vb - va
        diff[name] = d
        rows.append(f"| {name} | {_pct(va)} | {_pct(vb)} | {'-' if d is None else f'{100 * d:+.2f}'} |")
    header = f"task: {a['task']}" + ("" if a["task"] == b["task"] else f" vs {b['task']}")
    notes = caveats(a, b)
    summary = {"task_a": a["task"], "task_b": b["task"], "a": a["scores"], "b": b["scores"], "diff": diff}
    summary["caveats"] = notes
    head = "\n".join([header, *(f"warning: {n}" for n in notes)])
    return head + "\n\n" + "\n".join(rows), summary


def _scored(result: dict[str, Any]) -> int | None:
    """Questions a run's scores cover: its questions less those without an image or an answer."""
    if not isinstance(result.get("questions"), int):
        return None
    left_out = sum(
        info["count"]
        for name in ("missing_images", "unanswered")
        if isinstance(info := result.get(name), dict) and isinstance(info.get("count"), int)
    )
    return result["questions"] - left_out


def caveats(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Why two runs' scores may not be comparable: another task, another data directory, other questions scored.

    Example: A scored 1438 of 1438 questions, B 900 of 1438 (a run stopped early, then scored) ->
    ``["A's scores cover 1438 questions, B's 900 (B: 538 unanswered, 0 without an image): ..."]``.
    """
    out = []
    if a["task"] != b["task"]:
        out.append(f"the runs are of different tasks ({a['task']} and {b['task']}): their scores do not compare")
    data_a, data_b = a.get("data"), b.get("data")
    if data_a is not None and data_b is not None and str(data_a) != str(data_b):
        out.append(f"the runs read different data (A: {data_a}, B: {data_b}): the questions may differ")
    elif a.get("questions") != b.get("questions") and None not in (a.get("questions"), b.get("questions")):
        out.append(f"the runs hold different numbers of questions (A: {a['questions']}, B: {b['questions']})")
    sa, sb = _scored(a), _scored(b)
    if sa is not None and sb is not None and sa != sb:
        parts = []
        for label, r in (("A", a), ("B", b)):
            miss, unans = (r.get(k, {}).get("count", 0) for k in ("missing_images", "unanswered"))
            parts.append(f"{label}: {unans} unanswered, {miss} without an image")
        out.append(
            f"A's scores cover {sa} questions, B's {sb} ({'; '.join(parts)}): finish both runs "
            "(run the same command again to resume) before comparing"
        )
    return out
