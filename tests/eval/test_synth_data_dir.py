"""`llava eval synth --data DIR` finds the eval questions file, and says how to make one when DIR has none."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llavakit.data.synth import write_dataset
from llavakit.eval.command import _read
from llavakit.eval.tasks import get_task


def test_a_folder_without_eval_questions_names_the_command_that_writes_them(tmp_path):
    """An instruct set (instruct.json + scenes.jsonl) was read through its scenes.jsonl, refused with
    "scenes.jsonl:1: record lacks 'id', 'question', ...", not with what to do."""
    data = tmp_path / "instruct"
    write_dataset(data, 2, seed=1_000_000, kind="instruct", min_side=112, max_side=160)
    (data / "predictions.jsonl").write_text('{"question_id": "s1_000000_0", "text": "red"}\n')
    with pytest.raises(ValueError, match=r"no eval\.jsonl; write one with `llava data synth --kind eval"):
        _read(get_task("synth"), str(data))


def test_a_renamed_eval_file_beside_scenes_is_still_found(tmp_path):
    data = tmp_path / "eval"
    write_dataset(data, 2, seed=1_000_000, kind="eval", min_side=112, max_side=160)
    shutil.move(data / "eval.jsonl", data / "z_eval.jsonl")  # sorts after scenes.jsonl
    samples = _read(get_task("synth"), str(data))
    assert samples and all(Path(s.image).is_file() for s in samples)


@pytest.mark.parametrize(
    "flags, said",
    [(["--n", "1"], "--n says"), (["--seed", "5", "--sides", "100", "200"], "--seed/--sides say")],
)
def test_generation_flags_beside_data_are_refused(tmp_path, capsys, flags, said):
    """--n, --seed and --sides describe a set to generate; beside --data they were ignored without a word (the whole
    set scored for --n 1)."""
    from llavakit.cli import main

    data = tmp_path / "eval"
    write_dataset(data, 2, seed=1_000_000, kind="eval", min_side=112, max_side=160)
    assert main(["eval", "synth", "--data", str(data), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{said} what scenes to generate, but --data {data} is scored as it is" in err
    assert ("--limit N" in err) == ("--n" in flags)
    assert not (tmp_path / "o").exists()


def test_a_bad_limit_is_refused_before_a_set_is_generated(tmp_path, capsys, monkeypatch):
    """``llava eval synth --limit 0`` wrote the 200-scene set (under runs/eval/...) before refusing the limit."""
    from llavakit.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("llavakit.data.synth.write_dataset", lambda *a, **k: pytest.fail("a set was generated"))
    assert main(["eval", "synth", "--limit", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--limit must be >= 1, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
