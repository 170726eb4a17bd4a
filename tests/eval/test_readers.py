"""Benchmark readers on the awkward corners of real downloads: TextVQA questions asked twice of one image and its
OCR-token prompts, MMBench option cells pandas reads as NaN, MME.tsv image references, a full lmms-lab/GQA download."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import fixtures as fx
import pytest

from llavakit.eval.command import _read, score_file
from llavakit.eval.tasks import get_task
from llavakit.eval.tasks.mmbench import is_none, rotations
from llavakit.eval.tasks.textvqa import textvqa_key, textvqa_prompt

SHORT = fx.SHORT


def _score(task: str, data: Path, tmp_path: Path, records: list[dict]) -> dict:
    preds = tmp_path / f"{task}_answers.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in records))
    return score_file(task, data=str(data), predictions=str(preds), out=str(tmp_path / f"{task}_scored"))


# ---------------------------------------------------------------- TextVQA: one question asked twice of one image


def _textvqa_repeat(root: Path, *, llava_file: bool) -> Path:
    """Image abc1 is asked "What is written?" twice (ids 10 and 12, other answers); abc2 once."""
    fx.image(root / "train_images" / "abc1.jpg", 1)
    fx.image(root / "train_images" / "abc2.jpg", 2)
    data = [
        {"question_id": 10, "image_id": "abc1", "question": "what is written?", "answers": ["stop"] * 10},
        {"question_id": 11, "image_id": "abc2", "question": "what brand?", "answers": ["sony"] * 10},
        {"question_id": 12, "image_id": "abc1", "question": "What is written?", "answers": ["go"] * 10},
    ]
    fx.dump(root / "TextVQA_0.5.1_val.json", {"data": data})
    if llava_file:
        fx.jsonl(
            root / "llava_textvqa_val_v051_ocr.jsonl",
            [
                {"question_id": d["image_id"], "image": f"{d['image_id']}.jpg", "text": _ocr_prompt(d["question"])}
                for d in data
            ],
        )
    return root


def _ocr_prompt(question: str) -> str:
    return f"{question.capitalize()}\nReference OCR token: stop, go\n{SHORT}"


def test_textvqa_repeated_question_in_llava_file_is_scored_as_eval_textvqa(tmp_path):
    """LLaVA's lines cannot tell the two apart: both are kept and scored against the last annotation of the pair,
    as eval_textvqa.py's {(image_id, question.lower()): annotation} map does; its answer file scores as it would."""
    data = _textvqa_repeat(tmp_path / "d", llava_file=True)
    samples = _read(get_task("textvqa"), str(data))  # refuses ids occurring twice
    assert [s.id for s in samples] == ["abc1|what is written?", "abc2|what brand?", "abc1|what is written?#2"]
    assert samples[0].ref["answers"] == samples[2].ref["answers"] == ["go"] * 10
    records = [
        {"question_id": "abc1", "prompt": _ocr_prompt("what is written?"), "text": "go"},
        {"question_id": "abc2", "prompt": _ocr_prompt("what brand?"), "text": "canon"},
        {"question_id": "abc1", "prompt": _ocr_prompt("what is written?"), "text": "go"},
    ]
    result = _score("textvqa", data, tmp_path, records)  # no "answered twice": the second line answers "#2"
    assert result["scores"]["accuracy"] == pytest.approx(2 / 3)
    assert result["unanswered"]["count"] == 0 and "unknown_prediction_ids" not in result


def test_textvqa_repeated_question_with_built_prompts_keeps_each_own_answers(tmp_path):
    """From the annotation file alone every question is asked, each scored with its own answers (as lmms-eval)."""
    data = _textvqa_repeat(tmp_path / "d", llava_file=False)
    samples = _read(get_task("textvqa"), str(data))
    assert [s.id for s in samples] == ["abc1|what is written?", "abc2|what brand?", "abc1|what is written?#2"]
    assert [s.ref["answers"][0] for s in samples] == ["stop", "sony", "go"]
    # our own predictions file names the ids as they are; "#2" is no LLaVA key to be numbered again
    assert textvqa_key({"question_id": "abc1|what is written?#2", "prompt": "x", "text": "go"}).endswith("#2")
    ids = ["abc1|what is written?", "abc2|what brand?", "abc1|what is written?#2"]
    result = _score("textvqa", data, tmp_path, [{"question_id": i, "text": "go"} for i in ids])
    assert result["scores"]["accuracy"] == pytest.approx(1 / 3)


def _textvqa_row() -> dict:
    """One row of lmms-lab/textvqa's parquet."""
    return {"question_id": 1, "image_id": "ab", "question": "what brand?", "answers": ["sony"] * 10,
            "image": fx.pq_image(4)}  # fmt: skip


def test_textvqa_repeated_question_in_parquet_gets_unique_ids(tmp_path):
    row = _textvqa_row()
    data = fx.parquet(tmp_path / "tvqa" / "validation-00000-of-00001.parquet", [row, {**row, "question_id": 2}])
    assert [s.id for s in _read(get_task("textvqa"), str(data))] == ["ab|what brand?", "ab|what brand?#2"]


# ---------------------------------------------------------------- TextVQA: the OCR-token prompts


def test_textvqa_ocr_prompt_text():
    """LLaVA-1.5's llava_textvqa_val_v051_ocr.jsonl / lmms-eval's TextVQA with ocr: true."""
    assert textvqa_prompt("what brand is SONY?", ["SONY", "A7"]) == (
        "What brand is sony?\nReference OCR token: SONY, A7\nAnswer the question using a single word or phrase."
    )
    assert textvqa_prompt("what brand?", []) == f"What brand?\nReference OCR token: \n{SHORT}"
    assert textvqa_prompt("what brand is SONY?") == f"What brand is sony?\n{SHORT}"  # task textvqa: lmms-eval's too


def test_textvqa_ocr_task_from_parquet_and_from_the_rosetta_file(tmp_path):
    row = _textvqa_row()
    pq = fx.parquet(tmp_path / "pq" / "validation-00000-of-00001.parquet", [{**row, "ocr_tokens": ["SONY", "x"]}])
    [sample] = _read(get_task("textvqa_ocr"), str(pq))
    assert sample.prompt == f"What brand?\nReference OCR token: SONY, x\n{SHORT}" and sample.id == "ab|what brand?"
    [plain] = _read(get_task("textvqa"), str(pq))
    assert plain.prompt == f"What brand?\n{SHORT}"
    # LLaVA's answer file of such a run finds its question by image id + the question line of the prompt
    answer = {"question_id": "ab", "prompt": sample.prompt, "text": "Sony"}
    assert _score("textvqa_ocr", pq, tmp_path, [answer])["scores"]["accuracy"] == 1.0

    data = _textvqa_repeat(tmp_path / "d", llava_file=False)
    with pytest.raises(ValueError, match=r"no TextVQA_Rosetta_OCR_v0.2_val.json lies in .*; put TextVQA's Rosetta"):
        get_task("textvqa_ocr").read(data)
    ocr = [{"image_id": "abc1", "ocr_tokens": ["STOP"], "ocr_info": []}, {"image_id": "abc2", "ocr_tokens": []}]
    fx.dump(data / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": ocr})
    prompts = [s.prompt for s in get_task("textvqa_ocr").read(data)]
    assert prompts == [
        f"What is written?\nReference OCR token: STOP\n{SHORT}",
        f"What brand?\nReference OCR token: \n{SHORT}",
        f"What is written?\nReference OCR token: STOP\n{SHORT}",
    ]
    assert [s.prompt for s in get_task("textvqa").read(data)][0] == f"What is written?\n{SHORT}"


# ---------------------------------------------------------------- MMBench: option cells pandas reads as NaN


def test_mmbench_na_option_cells_are_no_options(tmp_path):
    """VLMEvalKit (and LLaVA) read the TSV with pandas, which turns "NA", "N/A", "nan"... into NaN: no option."""
    for text in ("NA", "N/A", "n/a", "nan", "NaN", "NULL", "#N/A", "<NA>", " NA "):
        assert is_none(text), text
    assert not is_none("Na") and not is_none("NA.") and not is_none("0")
    row = {"question": "Q?", "hint": "N/A", "A": "cat", "B": "dog", "C": "N/A", "D": "NA", "answer": "B"}
    out = rotations(row, "row 1")
    assert len(out) == 2 and out[0][0] == "Q?\nA. cat\nB. dog\n" + fx.LETTER  # no hint line, no C or D

    root = tmp_path / "mmb"
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    image = base64.b64encode(fx.png_bytes(1)).decode()
    cells = ["0", "Which?", "NA", "red", "blue", "N/A", "nan", "A", "color", image]
    root.mkdir()
    (root / "mmbench_dev.tsv").write_text("\t".join(header) + "\n" + "\t".join(cells) + "\n")
    samples = get_task("mmbench").read(root)
    assert [s.id for s in samples] == ["0/0", "0/1"] and samples[0].ref["options"] == {"A": "red", "B": "blue"}


# ---------------------------------------------------------------- MME.tsv: image references


def _mme_tsv(path: Path, image_cells: list[str]) -> Path:
    header = ["index", "question", "answer", "category", "image"]
    questions = ["Is it red? Please answer yes or no.", "Is it blue? Please answer yes or no."]
    lines = ["\t".join(header)]
    for i, cell in enumerate(image_cells):
        lines.append("\t".join([str(i), questions[i % 2], ["Yes", "No"][i % 2], "color", cell]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mme_tsv_image_reference_to_a_missing_row_names_row_file_and_fix(tmp_path, capsys):
    image = base64.b64encode(fx.png_bytes(2)).decode()
    ok = _mme_tsv(tmp_path / "ok" / "MME.tsv", [image, "0"])  # row 1 shares row 0's image
    samples = get_task("mme").read(ok)
    assert samples[0].image == samples[1].image == fx.png_bytes(2) and samples[0].group == samples[1].group

    bad = _mme_tsv(tmp_path / "bad" / "MME.tsv", [image, "9"])
    message = (
        r"MME.tsv:3: row 1's image cell refers to the image of row 9, but MME.tsv has no row with index 9; "
        r"restore that row, or put the base64 image in this row's image cell"
    )
    with pytest.raises(ValueError, match=message):
        _read(get_task("mme"), str(bad))
    from llavakit.cli import main

    preds = tmp_path / "p.jsonl"
    preds.write_text('{"question_id": "x", "text": "yes"}\n')
    assert main(["eval", "score", "mme", "--data", str(bad), "--predictions", str(preds)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:3: row 1's image cell refers to the image of row 9" in err
    chain = _mme_tsv(tmp_path / "chain" / "MME.tsv", [image, "2", "0"])
    with pytest.raises(ValueError, match=r"MME.tsv:3: row 1's image cell refers to row 2, whose image cell is itself"):
        get_task("mme").read(chain)


# ---------------------------------------------------------------- GQA: a full lmms-lab/GQA download


def _gqa_config(root: Path, config: str, split: str, rows: list[dict]) -> None:
    fx.parquet(root / config / f"{split}-00000-of-00001.parquet", rows)


def test_gqa_full_lmms_lab_download_reads_testdev_balanced_only(tmp_path):
    """testdev_all_* shards are named testdev-* too: only the testdev_balanced_* folders are read."""
    root = tmp_path / "GQA"
    q = {"imageId": "n1", "question": "Red?", "answer": "no"}
    _gqa_config(root, "testdev_balanced_instructions", "testdev", [{**q, "id": "b1"}, {**q, "id": "b2"}])
    _gqa_config(root, "testdev_balanced_images", "testdev", [{"id": "n1", "image": fx.pq_image(1)}])
    _gqa_config(root, "testdev_all_instructions", "testdev", [{**q, "id": f"a{i}"} for i in range(3)])
    _gqa_config(root, "testdev_all_images", "testdev", [{"id": "n1", "image": fx.pq_image(1)}])
    _gqa_config(root, "train_balanced_instructions", "train", [{**q, "id": "t1"}])
    samples = _read(get_task("gqa"), str(root))
    assert [s.id for s in samples] == ["b1", "b2"] and all(isinstance(s.image, bytes) for s in samples)

    only_all = tmp_path / "GQA-all"
    _gqa_config(only_all, "testdev_all_instructions", "testdev", [{**q, "id": "a1"}])
    _gqa_config(only_all, "testdev_all_images", "testdev", [{"id": "n1", "image": fx.pq_image(1)}])
    with pytest.raises(ValueError, match=r"holds GQA configs testdev_all_images, testdev_all_instructions but no "):
        get_task("gqa").read(only_all)
    with pytest.raises(ValueError, match=r"is GQA's testdev_all_instructions, not testdev_balanced"):
        get_task("gqa").read(only_all / "testdev_all_instructions")


def test_gqa_question_file_of_another_split_is_refused(tmp_path):
    """GQA's questions1.2 download holds testdev_all_questions.json beside testdev_balanced_questions.json."""
    data = fx.gqa(tmp_path / "d")
    (data / "llava_gqa_testdev_balanced.jsonl").unlink()
    (data / "testdev_balanced_questions.json").rename(data / "testdev_all_questions.json")
    with pytest.raises(ValueError, match=r"no testdev_balanced_questions.json \(only GQA's testdev_all_questions.json"):
        get_task("gqa").read(data)
    assert len(get_task("gqa").read(data / "testdev_all_questions.json")) == 3  # named explicitly: read


@pytest.mark.parametrize("task", ["vqav2", "textvqa", "gqa"])
def test_other_json_lines_files_are_not_taken_for_the_question_file(tmp_path, task):
    """With LLaVA's question file renamed away, llavakit's own predictions.jsonl (--out is the data folder: a
    resumed run failed on "record lacks 'image'") or an answer file beside the data was read as the questions."""
    data = {"vqav2": fx.vqav2, "textvqa": fx.textvqa, "gqa": fx.gqa}[task](tmp_path / task)
    (qfile,) = data.glob("llava_*.jsonl")
    want = get_task(task).read(data)
    fx.jsonl(data / "predictions.jsonl", [{"question_id": "1", "prompt": "x", "text": "red"}])
    fx.jsonl(data / "answers.jsonl", [{"question_id": 1, "text": "x"}])
    assert [s.prompt for s in get_task(task).read(data)] == [s.prompt for s in want]
    qfile.rename(data / "questions-renamed.jsonl")  # not LLaVA's name: found by its records
    assert [s.prompt for s in get_task(task).read(data)] == [s.prompt for s in want]
