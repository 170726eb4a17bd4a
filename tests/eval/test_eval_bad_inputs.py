"""`llava eval` on bad inputs: an --out that is a file, files that are not UTF-8; and two prompt-fidelity rules
(MMBench options after an empty cell, as VLMEvalKit keeps them)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import fixtures as fx
import pytest

from llavakit.cli import main
from llavakit.eval.command import score_file
from llavakit.eval.run import read_predictions
from llavakit.eval.tasks import get_task
from llavakit.eval.tasks.mmbench import rotations
from one_error import one_error

LATIN1 = "Qu'est-ce qui est écrit ?".encode("latin-1")  # b"\xe9": no UTF-8 text


def _answers(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- --out that cannot be a directory


def test_eval_out_that_is_a_file_is_refused_before_the_model_loads(tiny_model, tmp_path, capsys, monkeypatch):
    data = fx.pope(tmp_path / "pope")
    taken = tmp_path / "taken.txt"
    taken.write_text("not a directory\n")
    args = ["eval", "pope", "--model", tiny_model, "--data", str(data), "--no-progress"]
    assert main([*args, "--out", str(taken)]) == 2  # was "[Errno 17] File exists: '.../taken.txt'"
    one_error(capsys, f"--out {taken} is a file, not a directory", "pass --out with a new or existing directory")
    assert taken.read_text() == "not a directory\n"
    assert main([*args, "--out", str(taken / "run")]) == 2  # was "[Errno 20] Not a directory"
    one_error(capsys, f"--out {taken / 'run'} lies under {taken}, which is a file")
    # the default directory runs/eval/pope-tiny is no directory either when runs/eval is a file
    monkeypatch.chdir(tmp_path)
    Path("runs").mkdir()
    Path("runs/eval").write_text("")
    assert main(args) == 2
    one_error(capsys, "the default output directory runs/eval/pope-tiny lies under runs/eval", "pass --out")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
        ("--max-new-tokens", "0", "--max-new-tokens must be >= 1"),
    ],
)
def test_eval_bad_batch_size_or_answer_length_is_refused_before_the_model_loads(
    tmp_path, capsys, monkeypatch, flag, value, message
):
    import llavakit.commands

    def no_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(llavakit.commands, "open_pipeline", no_load)
    data = fx.pope(tmp_path / "pope")
    args = ["eval", "pope", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*args, "--no-progress", flag, value]) == 2
    one_error(capsys, message)


def test_eval_out_with_a_directory_where_a_result_file_goes(tmp_path, capsys):
    data = fx.gqa(tmp_path / "d")
    preds = _answers(tmp_path / "p.jsonl", [{"question_id": "201", "text": "yes"}])
    (tmp_path / "out" / "scores.json").mkdir(parents=True)
    args = ["eval", "score", "gqa", "--data", str(data), "--predictions", str(preds)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2  # was "[Errno 21] Is a directory"
    one_error(capsys, f"{tmp_path / 'out' / 'scores.json'} is a directory where the run writes a file")
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main([*args, "--out", str(taken)]) == 2
    one_error(capsys, f"--out {taken} is a file, not a directory")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    assert main([*args, "--out", str(dangling / "run")]) == 2  # was "[Errno 17] File exists"
    one_error(capsys, f"{dangling} is a link to nothing")
    assert main([*args, "--out", str(tmp_path / "new")]) == 0  # a new directory is made
    assert (tmp_path / "new" / "scores.json").is_file()


# ---------------------------------------------------------------- files that are not UTF-8


def test_answer_file_that_is_not_utf8_is_named(tmp_path, capsys):
    data = fx.gqa(tmp_path / "d")
    preds = tmp_path / "answers.jsonl"
    preds.write_bytes(b'{"question_id": "201", "text": "yes"}\n{"question_id": "202", "text": "' + LATIN1 + b'"}\n')
    args = ["eval", "score", "gqa", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "o")]
    assert main(args) == 2  # was "'utf-8' codec can't decode byte 0xe9 in position 75", no file named
    one_error(capsys, f"{preds}:2: not UTF-8 text (byte 0xe9 at offset", "re-save the file as UTF-8")
    with pytest.raises(ValueError, match=r"answers.jsonl:2: not UTF-8 text"):  # a resumed run's own file too
        read_predictions(preds)


def test_data_files_that_are_not_utf8_are_named(tmp_path, capsys):
    # JSONL question file (VQAv2)
    data = fx.vqav2(tmp_path / "v")
    qfile = data / "llava_vqav2_mscoco_val2014.jsonl"
    qfile.write_bytes(qfile.read_bytes() + b'{"question_id": 4, "image": "x.jpg", "text": "' + LATIN1 + b'"}\n')
    preds = _answers(tmp_path / "p.jsonl", [{"question_id": 1, "text": "red"}])
    args = ["eval", "score", "vqav2", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    one_error(capsys, f"{qfile}:4: not UTF-8 text")
    # JSON annotation file (TextVQA)
    tvqa = fx.textvqa(tmp_path / "t")
    ann = tvqa / "TextVQA_0.5.1_val.json"
    ann.write_bytes(ann.read_bytes().replace(b"what", "wh\u00e2t".encode("latin-1"), 1))
    with pytest.raises(ValueError, match=r"TextVQA_0.5.1_val.json:1: not UTF-8 text \(byte 0xe2"):
        get_task("textvqa").read(tvqa)
    # TSV (MMBench) and MME's question/answer .txt files
    mmb = fx.mmbench(tmp_path / "m")
    tsv = mmb / "mmbench_dev_20230712.tsv"
    tsv.write_bytes(tsv.read_bytes().replace(b"What is shown?", LATIN1))
    with pytest.raises(ValueError, match=r"mmbench_dev_20230712.tsv:2: not UTF-8 text"):
        get_task("mmbench").read(mmb)
    mme = fx.mme(tmp_path / "mme")
    txt = mme / "MME_Benchmark_release_version" / "OCR" / "questions_answers_YN" / "ocr1.txt"
    txt.write_bytes(LATIN1 + b"\tYes\n")
    with pytest.raises(ValueError, match=r"ocr1.txt:1: not UTF-8 text"):
        get_task("mme").read(mme)


def test_compare_names_a_scores_file_that_is_not_utf8(tmp_path, capsys):
    bad = tmp_path / "scores.json"
    bad.write_bytes(b'{"task": "gqa", "scores": {"accuracy": 0.5}, "model": "' + LATIN1 + b'"}')
    assert main(["eval", "compare", str(bad), str(bad)]) == 2
    one_error(capsys, f"{bad}:1: not UTF-8 text")


# ---------------------------------------------------------------- MMBench: options after an empty cell


def test_mmbench_option_after_an_empty_cell_is_kept_as_vlmevalkit_keeps_it():
    """VLMEvalKit's options are every letter whose cell is not NaN (``{c: line[c] for c in ascii_uppercase if not
    pd.isna(line[c])}``): an empty C drops C alone, D stays under its own letter. LLaVA's loop stopped at C."""
    row = {"question": "Q?", "hint": "nan", "A": "cat", "B": "dog", "C": "", "D": "cow", "answer": "D"}
    out = rotations(row, "row 1")
    assert [shown for _, shown, _ in out] == [
        {"A": "cat", "B": "dog", "D": "cow"},
        {"A": "dog", "B": "cow", "D": "cat"},
        {"A": "cow", "B": "cat", "D": "dog"},
    ]
    assert [right for _, _, right in out] == ["D", "B", "A"]  # cow sits at D, then B, then A
    assert out[0][0] == f"Q?\nA. cat\nB. dog\nD. cow\n{fx.LETTER}"
    with pytest.raises(ValueError, match=r"row 1: answer 'C' is not one of the options ABD"):
        rotations({**row, "answer": "C"}, "row 1")
    with pytest.raises(ValueError, match=r"row 1: a question needs at least two options, got A"):
        rotations({**row, "B": "nan", "D": float("nan")}, "row 1")


def test_mmbench_tsv_row_with_an_empty_cell_is_scored_over_its_kept_options(tmp_path):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    image = base64.b64encode(fx.png_bytes(1)).decode()
    cells = ["0", "Which?", "nan", "red", "blue", "", "green", "D", "color", image]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mmbench_dev.tsv").write_text("\t".join(header) + "\n" + "\t".join(cells) + "\n")
    samples = get_task("mmbench").read(tmp_path / "m")
    assert [s.id for s in samples] == ["0/0", "0/1", "0/2"]
    assert [s.ref["answer"] for s in samples] == ["D", "B", "A"]  # green at D, B, A
    preds = _answers(tmp_path / "p.jsonl", [{"question_id": s.id, "text": s.ref["answer"]} for s in samples])
    result = score_file("mmbench", data=str(tmp_path / "m"), predictions=str(preds), out=str(tmp_path / "o"))
    assert result["scores"]["circular"] == 1.0 and result["counts"]["unparsed"] == 0
