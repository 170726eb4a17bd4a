"""Two `llava eval` runs into one --out: the second is refused at once (the output directory is locked while a run
writes it), and a predictions.jsonl that two unlocked runs wrote at once resumes when their answers agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import fixtures as fx
import pytest

from llavakit.cli import main
from llavakit.eval.command import score_file
from one_error import one_error

SRC = str(Path(__file__).resolve().parents[2] / "src")
HOLD = (  # another llava eval writing the directory: holds its lock until stdin closes or it is killed
    "import sys; from pathlib import Path; from llavakit.eval.lock import out_dir_lock\n"
    "with out_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()\n"
)


def _args(model: str, data: Path, out: Path) -> list[str]:
    return ["eval", "pope", "--model", model, "--data", str(data), "--out", str(out), "--max-new-tokens", "2"]


def _holder(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", HOLD, str(out)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def test_a_second_run_into_a_busy_out_is_refused_before_the_model_loads(tiny_model, tmp_path, capsys, monkeypatch):
    """Both runs appended to predictions.jsonl, then both died on a question "answered twice", as every resume
    after them did. Now the second stops at once, naming the directory and why; a killed run leaves no lock."""
    import llavakit.commands

    data, out = fx.pope(tmp_path / "pope"), tmp_path / "out"
    holder = _holder(out)
    opened = []
    real_open = llavakit.commands.open_pipeline
    monkeypatch.setattr(llavakit.commands, "open_pipeline", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    try:
        assert main([*_args(tiny_model, data, out), "--no-progress"]) == 2
        one_error(capsys, f"{out} is being written by another llava eval (pid {holder.pid})", "pass another --out")
        assert not opened and not (out / "predictions.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock with the process
        holder.wait(timeout=60)
    assert main([*_args(tiny_model, data, out), "--no-progress"]) == 0
    assert len(opened) == 1 and len((out / "predictions.jsonl").read_text().splitlines()) == 7


def test_a_refused_run_leaves_no_out_directory_behind(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    args = ["eval", "pope", "--data", str(tmp_path / "nothing"), "--out", str(out)]
    assert main(args) == 2
    one_error(capsys, "does not exist")
    assert not out.exists()


def test_resume_keeps_one_of_two_identical_answers_and_names_two_that_differ(tiny_model, tmp_path, capsys):
    """Lines a second unlocked run appended answer the same questions alike: resuming stopped on "answered twice"
    (the user had to find and delete lines by hand, untold). Identical repeats now count once and leave the file;
    repeats that differ are refused with both lines and what to do."""
    data, out = fx.pope(tmp_path / "pope"), tmp_path / "out"
    assert main([*_args(tiny_model, data, out), "--no-progress"]) == 0
    capsys.readouterr()
    pred = out / "predictions.jsonl"
    lines = pred.read_text().splitlines(keepends=True)
    first = json.loads((out / "scores.json").read_text())["scores"]
    pred.write_text("".join(lines + lines[:3]))  # the second run's answers to the first three questions
    assert main([*_args(tiny_model, data, out), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["scores"] == first
    assert pred.read_text() == "".join(lines)  # one line per question again: `llava eval score` takes it
    other = json.loads(lines[1]) | {"text": "yes" if json.loads(lines[1])["text"] != "yes" else "no"}
    pred.write_text("".join(lines) + json.dumps(other) + "\n")
    assert main([*_args(tiny_model, data, out), "--no-progress"]) == 2
    one_error(
        capsys,
        f"predictions.jsonl:{len(lines) + 1}: question '{other['question_id']}' is answered twice (also on line 2) "
        "with another answer; delete one of the two lines",
    )


def test_score_still_refuses_a_question_answered_twice_alike(tmp_path):
    """A user's answer file with a repeated question is refused as documented, identical answers or not."""
    data = fx.pope(tmp_path / "pope")
    preds = tmp_path / "answers.jsonl"
    preds.write_text('{"question_id": 1, "text": "yes"}\n{"question_id": 2, "text": "no"}\n' * 2)
    with pytest.raises(ValueError, match=r"answers.jsonl:3: question '1' is answered twice \(also on line 1\); delete"):
        score_file("pope", data=str(data), predictions=str(preds), out=str(tmp_path / "o"))


def test_score_into_a_directory_a_run_writes_is_refused(tmp_path, capsys):
    """`llava eval score --out DIR` wrote scores.json and report.md into a directory a running llava eval was
    writing, which its own scores.json then replaced (or the other way round). It now takes the same lock."""
    data = fx.pope(tmp_path / "pope")
    preds = tmp_path / "answers.jsonl"
    preds.write_text('{"question_id": 1, "text": "yes"}\n{"question_id": 2, "text": "no"}\n')
    out = tmp_path / "out"
    args = ["eval", "score", "pope", "--data", str(data), "--predictions", str(preds), "--out", str(out)]
    holder = _holder(out)
    try:
        assert main(args) == 2
        one_error(capsys, f"{out} is being written by another llava eval (pid {holder.pid})", "pass another --out")
        assert not (out / "scores.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(args) == 0
    assert (out / "scores.json").exists()
