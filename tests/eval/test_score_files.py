"""`llava eval score` on hand-written answer files (LLaVA's keys question_id + text) with known scores;
`llava eval compare`; malformed inputs; the parquet readers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fixtures as fx
import pytest

from llavakit.eval.command import compare_runs, score_file


def _answers(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _score(task: str, data: Path, tmp_path: Path, answers: dict[str, str] | list[dict]) -> dict:
    records = answers if isinstance(answers, list) else [{"question_id": k, "text": v} for k, v in answers.items()]
    preds = _answers(tmp_path / f"{task}_answers.jsonl", records)
    return score_file(task, data=str(data), predictions=str(preds), out=str(tmp_path / f"{task}_scored"))


def test_vqav2(tmp_path):
    # q1: ten "red", "Red." -> EvalAI "red" -> 1.0; q2: two "2" of ten, "two" -> "2" -> 0.6; q3: 0.
    result = _score("vqav2", fx.vqav2(tmp_path / "d"), tmp_path, {"1": "Red.", "2": "two", "3": "no"})
    assert result["scores"]["accuracy"] == pytest.approx((1.0 + 0.6 + 0.0) / 3)


def test_textvqa_llava_answer_file(tmp_path):
    """LLaVA's TextVQA answer files use the image id as question_id; the prompt tells the questions apart."""
    ocr = "\nReference OCR token: sony, 1000\n" + fx.SHORT
    records = [
        {"question_id": "abc1", "prompt": "What brand is it?" + ocr, "text": "Sony"},  # 3 of 10 -> 0.9
        {"question_id": "abc1", "prompt": "What number is shown?" + ocr, "text": "1000"},  # "1,000" -> 1.0
        {"question_id": "abc2", "prompt": "What word is there?" + ocr, "text": "go"},  # 0
    ]
    result = _score("textvqa", fx.textvqa(tmp_path / "d"), tmp_path, records)
    assert result["scores"]["accuracy"] == pytest.approx((0.9 + 1.0 + 0.0) / 3)
    assert result["unanswered"]["count"] == 0


def test_gqa(tmp_path):
    result = _score("gqa", fx.gqa(tmp_path / "d"), tmp_path, {"201": "Yes.", "202": "left side", "203": "Red"})
    assert result["scores"]["accuracy"] == pytest.approx(2 / 3)


def test_vizwiz(tmp_path):
    answers = {
        "VizWiz_val_00000000.jpg": "Soup.",
        "VizWiz_val_00000001.jpg": "Unanswerable",
        "VizWiz_val_00000002.jpg": "cat",
    }
    result = _score("vizwiz", fx.vizwiz(tmp_path / "d"), tmp_path, answers)
    assert result["scores"]["accuracy"] == pytest.approx(2 / 3)  # 1.0 + 1.0 (5 of 10 agree) + 0


def test_pope(tmp_path):
    # random: labels yes no yes no, answers yes no no yes -> TP 1, TN 1, FN 1, FP 1
    # adversarial: labels yes no no, answers yes no no -> all right, yes-ratio 1/3
    answers = {
        "1": "Yes, there is.",
        "2": "No.",
        "3": "There is no cat.",
        "4": "Yes",
        "5": "Yes",
        "6": "No",
        "7": "I think not",
    }
    s = _score("pope", fx.pope(tmp_path / "d"), tmp_path, answers)["scores"]
    assert (s["random_accuracy"], s["random_precision"], s["random_recall"], s["random_f1"]) == (0.5, 0.5, 0.5, 0.5)
    assert s["random_yes_ratio"] == 0.5
    assert (s["adversarial_accuracy"], s["adversarial_f1"]) == (1.0, 1.0)
    assert s["adversarial_yes_ratio"] == pytest.approx(1 / 3)
    assert s["accuracy"] == pytest.approx(0.75) and s["f1"] == pytest.approx(0.75)
    assert s["overall_accuracy"] == pytest.approx(5 / 7)


def test_pope_label_files_alone(tmp_path):
    data = fx.pope(tmp_path / "d")
    (data / "llava_pope_test.jsonl").unlink()  # without LLaVA's question file, ids are <split>/<id>
    answers = {"random/1": "Yes", "random/2": "Yes", "random/3": "Yes", "random/4": "Yes"}
    result = _score("pope", data, tmp_path, answers)
    assert result["scores"]["random_precision"] == 0.5 and result["scores"]["random_recall"] == 1.0
    assert result["unanswered"]["count"] == 3  # the adversarial split was not answered


def test_scienceqa_img(tmp_path):
    # pid 1 (B) right, pid 2 (C) right via "The answer is C.", pid 4 (B) answered "A. a" -> wrong
    result = _score(
        "scienceqa_img", fx.scienceqa(tmp_path / "d"), tmp_path, {"1": "B", "2": "The answer is C.", "4": "A. a"}
    )
    assert result["scores"]["accuracy"] == pytest.approx(2 / 3)


def test_mmbench_llava_answer_file_with_rounds(tmp_path):
    """Question 0 (answer B = "dog"): rotation 2 shows cow, cat, dog and is answered B (cow): the question
    fails circular evaluation although 2 of its 3 rotations are right. Question 1 passes."""
    records = [
        {"question_id": 0, "round_id": 0, "text": "B"},
        {"question_id": 0, "round_id": 1, "text": "A. dog"},
        {"question_id": 0, "round_id": 2, "text": "B"},
        {"question_id": 1, "round_id": 0, "text": "A"},
        {"question_id": 1, "round_id": 1, "text": "The answer is (B) red"},
    ]
    result = _score("mmbench", fx.mmbench(tmp_path / "d"), tmp_path, records)
    assert result["scores"]["circular"] == 0.5
    assert result["scores"]["rotations"] == pytest.approx(4 / 5)
    assert result["scores"]["first_round"] == 1.0
    assert result["scores"]["category/recognition"] == 0.0 and result["scores"]["category/color"] == 1.0


def test_mme_points(tmp_path):
    e1, e2 = "existence/000000000001.jpg", "existence/000000000002.jpg"
    answers = {
        f"{e1}/1": "Yes", f"{e1}/2": "No",  # both right
        f"{e2}/1": "Yes", f"{e2}/2": "Yes, it is",  # one right -> existence acc 3/4, acc+ 1/2 -> 125 points
        "OCR/ocr1.jpg/1": "No", "OCR/ocr1.jpg/2": "Yes",  # both wrong -> 0 points
        "code_reasoning/0020.png/1": "yes", "code_reasoning/0020.png/2": "no",  # 200 points
    }  # fmt: skip
    result = _score("mme", fx.mme(tmp_path / "d"), tmp_path, answers)
    assert result["points"]["existence"] == pytest.approx(125.0)
    assert result["points"]["perception"] == pytest.approx(125.0)
    assert result["points"]["cognition"] == pytest.approx(200.0)
    assert result["scores"]["perception"] == pytest.approx(125 / 400)  # two perception subtasks present
    assert result["scores"]["existence_acc"] == 0.75 and result["scores"]["existence_acc_plus"] == 0.5
    assert all(0 <= v <= 1 for v in result["scores"].values())


def test_mme_incomplete_pair_left_out(tmp_path):
    e1 = "existence/000000000001.jpg"
    answers = {f"{e1}/1": "Yes", f"{e1}/2": "No", "existence/000000000002.jpg/1": "Yes"}
    result = _score("mme", fx.mme(tmp_path / "d"), tmp_path, answers)
    assert result["counts"]["incomplete_pairs"] == 1
    assert result["points"]["existence"] == 200.0


def test_chartqa(tmp_path):
    # 104 vs 100: 4% off -> right; "yes" vs "Yes" -> right; 0.22 vs 0.2: 10% off -> wrong
    result = _score(
        "chartqa", fx.chartqa(tmp_path / "d"), tmp_path, {"human/0": "104", "human/1": "yes", "augmented/0": "0.22"}
    )
    s = result["scores"]
    assert (s["relaxed_accuracy"], s["relaxed_human"], s["relaxed_augmented"]) == (pytest.approx(2 / 3), 1.0, 0.0)


def test_docvqa_anls(tmp_path):
    # exact -> 1; "Denver Bronco" vs "Denver Broncos" -> 1 - 1/14; "abxy" vs "abcd" -> 0.5 exactly, kept
    answers = {"301": "1 may 2020", "302": "Denver Bronco", "303": "abxy"}
    result = _score("docvqa", fx.docvqa(tmp_path / "d"), tmp_path, answers)
    assert result["scores"]["anls"] == pytest.approx((1 + (1 - 1 / 14) + 0.5) / 3)


def test_infovqa_anls(tmp_path):
    # "France" -> 1; "13" vs golds "12" (NL 1/2 -> 0.5) and "twelve" (NL 1) -> 0.5
    result = _score("infovqa", fx.infovqa(tmp_path / "d"), tmp_path, {"401": "France", "402": "13"})
    assert result["scores"]["anls"] == pytest.approx(0.75)


def test_compare_two_runs(tmp_path, capsys):
    data = fx.gqa(tmp_path / "d")
    _score("gqa", data, tmp_path, {"201": "yes", "202": "left", "203": "blue"})
    (tmp_path / "gqa_scored").rename(tmp_path / "a")
    _score("gqa", data, tmp_path, {"201": "yes", "202": "left", "203": "red"})
    summary = compare_runs(str(tmp_path / "a"), str(tmp_path / "gqa_scored" / "scores.json"))
    out = capsys.readouterr().out.strip().splitlines()
    assert "| accuracy | 66.67 | 100.00 | +33.33 |" in out
    assert json.loads(out[-1]) == summary
    assert summary["diff"]["accuracy"] == pytest.approx(1 / 3)


def test_compare_warns_when_runs_score_other_questions(tmp_path, capsys):
    """A run that answered 2 of 3 questions, or read another data folder, is flagged above the table."""
    data = fx.gqa(tmp_path / "d")
    _score("gqa", data, tmp_path, {"201": "yes", "202": "left", "203": "blue"})
    (tmp_path / "gqa_scored").rename(tmp_path / "a")
    _score("gqa", data, tmp_path, {"201": "yes", "202": "left"})
    capsys.readouterr()
    summary = compare_runs(str(tmp_path / "a"), str(tmp_path / "gqa_scored"))
    out = capsys.readouterr().out
    assert summary["caveats"] == [
        "A's scores cover 3 questions, B's 2 (A: 0 unanswered, 0 without an image; B: 1 unanswered, 0 without an "
        "image): finish both runs (run the same command again to resume) before comparing"
    ]
    assert "warning: A's scores cover 3 questions, B's 2" in out.splitlines()[1]

    other = fx.gqa(tmp_path / "d2")  # the same questions in another folder: named, not taken as the same data
    (tmp_path / "gqa_scored").rename(tmp_path / "b")
    _score("gqa", other, tmp_path, {"201": "yes", "202": "left", "203": "blue"})
    summary = compare_runs(str(tmp_path / "a"), str(tmp_path / "gqa_scored"))
    assert summary["caveats"] == [
        f"the runs read different data (A: {data.resolve()}, B: {other.resolve()}): the questions may differ"
    ]


def test_compare_same_questions_has_no_caveats(tmp_path, monkeypatch):
    """The data path is recorded absolute, so runs given it relative and absolute are the same data."""
    data = fx.gqa(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    preds = _answers(tmp_path / "p.jsonl", [{"question_id": "201", "text": "yes"}])
    score_file("gqa", data="d", predictions=str(preds), out=str(tmp_path / "r1"))
    score_file("gqa", data=str(data), predictions=str(tmp_path / "p.jsonl"), out=str(tmp_path / "r2"))
    assert compare_runs(str(tmp_path / "r1"), str(tmp_path / "r2"))["caveats"] == []


# ---------------------------------------------------------------- errors through the CLI


def _cli(capsys, *args: str) -> tuple[int, str]:
    """``llava ARGS`` in-process (the subprocess path is covered in test_synth_eval): exit code, stderr."""
    from llavakit.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_malformed_files_name_file_and_line(tmp_path, capsys):
    data = fx.vqav2(tmp_path / "d")
    qfile = data / "llava_vqav2_mscoco_val2014.jsonl"
    lines = qfile.read_text().splitlines()
    lines[1] = '{"question_id": 2, "image": '  # broken JSON on line 2
    qfile.write_text("\n".join(lines) + "\n")
    preds = _answers(tmp_path / "p.jsonl", [{"question_id": 1, "text": "red"}])
    code, err = _cli(capsys, "eval", "score", "vqav2", "--data", str(data), "--predictions", str(preds))
    assert code == 2
    assert f"{qfile}:2: not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_malformed_tsv_prediction_file_and_mme_txt(tmp_path):
    data = fx.mmbench(tmp_path / "mmb")
    tsv = data / "mmbench_dev_20230712.tsv"
    tsv.write_text(tsv.read_text() + "2\tonly three\tfields\n")
    with pytest.raises(ValueError, match=r"mmbench_dev_20230712.tsv:4: 3 fields but the header has 12"):
        _score("mmbench", data, tmp_path, {"0/0": "A"})
    preds = tmp_path / "bad.jsonl"
    preds.write_text('{"question_id": "201", "text": "yes"}\nnot json\n{"question_id": "202", "text": "left"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a prediction record"):
        score_file("gqa", data=str(fx.gqa(tmp_path / "g")), predictions=str(preds))
    mme = fx.mme(tmp_path / "mme")
    (mme / "MME_Benchmark_release_version" / "OCR" / "questions_answers_YN" / "ocr1.txt").write_text("no tab here\n")
    with pytest.raises(ValueError, match=r"ocr1.txt:1: expected 'question<TAB>Yes\|No'"):
        _score("mme", mme, tmp_path, {"x": "yes"})


def test_unknown_ids_and_missing_data_are_clear(tmp_path, capsys):
    data = fx.gqa(tmp_path / "d")
    with pytest.raises(ValueError, match="none of its question ids"):
        _score("gqa", data, tmp_path, {"999": "yes"})
    code, err = _cli(capsys, "eval", "gqa", "--data", str(tmp_path / "nowhere"), "--model", str(tmp_path))
    assert code == 2 and "does not exist" in err


# ---------------------------------------------------------------- parquet (lmms-lab releases)


def test_parquet_docvqa_pope_gqa(tmp_path):
    doc = fx.parquet(
        tmp_path / "doc" / "data" / "validation-00000-of-00001.parquet",
        [{"questionId": "7", "question": "Date?", "answers": ["1 may"], "image": fx.pq_image(1), "docId": 1}],
    )
    assert _score("docvqa", doc, tmp_path, {"7": "1 May"})["scores"]["anls"] == 1.0
    pope = fx.parquet(
        tmp_path / "pope" / "data" / "test.parquet",
        [
            {
                "question_id": "1",
                "question": "Is there a cat?",
                "answer": "yes",
                "image": fx.pq_image(1),
                "category": "random",
            },
            {
                "question_id": "2",
                "question": "Is there a dog?",
                "answer": "no",
                "image": fx.pq_image(2),
                "category": "random",
            },
        ],
    )
    assert _score("pope", pope, tmp_path, {"1": "Yes", "2": "Yes"})["scores"]["random_precision"] == 0.5
    gqa = tmp_path / "gqa"
    fx.parquet(gqa / "instructions" / "a.parquet", [{"id": "q1", "imageId": "n1", "question": "Red?", "answer": "no"}])
    fx.parquet(gqa / "images" / "b.parquet", [{"id": "n1", "image": fx.pq_image(3)}])
    assert _score("gqa", gqa, tmp_path, {"q1": "No."})["scores"]["accuracy"] == 1.0
    # a question whose image row is absent is missing its image, not asked without one
    from llavakit.eval.run import missing_images
    from llavakit.eval.tasks import get_task

    rows = [{"id": q, "imageId": n, "question": "Red?", "answer": "no"} for q, n in (("q1", "n1"), ("q2", "n9"))]
    fx.parquet(gqa / "instructions" / "a.parquet", rows)
    assert missing_images(get_task("gqa").read(gqa)) == ["q2"]


def test_parquet_mmbench_mme_scienceqa_chartqa_textvqa(tmp_path):
    mmb = fx.parquet(
        tmp_path / "mmb" / "dev.parquet",
        [{"index": 5, "question": "Q?", "hint": None, "A": "x", "B": "y", "C": None, "D": None, "answer": "B",
          "category": "c", "image": fx.pq_image(1)}],
    )  # fmt: skip
    assert _score("mmbench", mmb, tmp_path, {"5/0": "B", "5/1": "A"})["scores"]["circular"] == 1.0
    mme = fx.parquet(
        tmp_path / "mme" / "test.parquet",
        [{"question_id": "color/1.png", "question": "Red? Answer yes or no.", "answer": "Yes", "category": "color",
          "image": fx.pq_image(1)},
         {"question_id": "color/1.png", "question": "Blue? Answer yes or no.", "answer": "No", "category": "color",
          "image": fx.pq_image(1)}],
    )  # fmt: skip
    assert (
        _score("mme", mme, tmp_path, {"color/color/1.png/1": "Yes", "color/color/1.png/2": "No"})["points"]["color"]
        == 200
    )
    sqa = fx.parquet(
        tmp_path / "sqa" / "test.parquet",
        [{"image": fx.pq_image(1), "question": "Which?", "choices": ["a", "b"], "answer": 1, "hint": "", "id": "s1"},
         {"image": None, "question": "Text?", "choices": ["a", "b"], "answer": 0, "hint": "", "id": "s2"}],
    )  # fmt: skip
    result = _score("scienceqa_img", sqa, tmp_path, {"s1": "B"})
    assert result["scores"]["accuracy"] == 1.0 and result["questions"] == 1  # the text-only question is not in IMG
    chart = fx.parquet(
        tmp_path / "chart" / "test.parquet",
        [{"type": "human_test", "question": "Max?", "answer": "50", "image": fx.pq_image(2)}],
    )
    assert _score("chartqa", chart, tmp_path, {"human_test/0": "51"})["scores"]["relaxed_human"] == 1.0
    tvqa = fx.parquet(
        tmp_path / "tvqa" / "val.parquet",
        [
            {
                "question_id": 3,
                "image_id": "ab",
                "question": "What brand?",
                "answers": ["sony"] * 10,
                "image": fx.pq_image(4),
            }
        ],
    )
    assert _score("textvqa", tvqa, tmp_path, {"ab|what brand?": "Sony"})["scores"]["accuracy"] == 1.0


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    data = tmp_path / "doc"
    data.mkdir()
    (data / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match=r"needs pyarrow; install it with `pip install 'llavakit\[eval\]'`"):
        _score("docvqa", data, tmp_path, {"1": "x"})


def test_mmbench_single_pass_llava_file(tmp_path):
    """Without --all-rounds LLaVA writes one answer per question (no round_id): round 0 is scored, and no
    circular score is claimed for questions whose other rotations were never asked."""
    records = [{"question_id": 0, "text": "B"}, {"question_id": 1, "text": "B"}]
    result = _score("mmbench", fx.mmbench(tmp_path / "d"), tmp_path, records)
    assert result["scores"] == {"rotations": 0.5, "first_round": 0.5}
    assert result["counts"]["incomplete_questions"] == 2 and result["unanswered"]["count"] == 3


def test_mme_llava_answer_file(tmp_path):
    """LLaVA's MME answers share one question_id per image ("<subtask>/<image>"); the prompt tells the two
    questions apart (with or without the answer-format suffix)."""
    q = "Is there a box in this image? Please answer yes or no."
    records = [
        {"question_id": "existence/000000000001.jpg", "prompt": f"{q}\n{fx.SHORT}", "text": "Yes"},
        {"question_id": "existence/000000000001.jpg", "prompt": q.replace("box", "cat0"), "text": "Yes"},
        {"question_id": "existence/000000000002.jpg", "prompt": q, "text": "Yes"},
        {"question_id": "existence/000000000002.jpg", "prompt": q.replace("box", "cat1"), "text": "No"},
    ]
    result = _score("mme", fx.mme(tmp_path / "d"), tmp_path, records)
    assert result["scores"]["existence_acc"] == 0.75 and result["scores"]["existence_acc_plus"] == 0.5
    assert result["unanswered"]["count"] == 4 and "unknown_prediction_ids" not in result


def test_parquet_rows_without_ids_get_ids_unique_across_files(tmp_path):
    """Two parquet shards whose rows carry no id: the fallback ids name the file, so they do not collide."""
    from llavakit.eval.tasks import get_task

    row = {"image": fx.pq_image(1), "question": "Which?", "choices": ["a", "b"], "answer": 1, "hint": ""}
    fx.parquet(tmp_path / "sqa" / "test-00000-of-00002.parquet", [row])
    fx.parquet(tmp_path / "sqa" / "test-00001-of-00002.parquet", [row])
    ids = [s.id for s in get_task("scienceqa_img").read(tmp_path / "sqa")]
    assert len(set(ids)) == 2 and all("row 0" in i for i in ids)
    (tmp_path / "sqa" / "test-00001-of-00002.parquet").unlink()  # one file: the ids answer files already use
    assert [s.id for s in get_task("scienceqa_img").read(tmp_path / "sqa")] == ["row 0"]


def test_parquet_release_reads_its_evaluation_split_only(tmp_path):
    """An lmms-lab folder with validation and test shards (the test answers withheld as null): DocVQA reads the
    validation shards; a folder of one split is read whole, whatever its files are named."""
    from llavakit.eval.tasks import get_task

    row = {"questionId": 1, "question": "Date?", "answers": ["1 jan"], "image": fx.pq_image(1)}
    fx.parquet(tmp_path / "doc" / "data" / "validation-00000-of-00001.parquet", [row])
    fx.parquet(tmp_path / "doc" / "data" / "test-00000-of-00001.parquet", [{**row, "questionId": 2, "answers": None}])
    assert [s.id for s in get_task("docvqa").read(tmp_path / "doc")] == ["1"]
    fx.parquet(tmp_path / "other" / "shard.parquet", [row])
    assert [s.id for s in get_task("docvqa").read(tmp_path / "other")] == ["1"]


def test_parquet_repository_of_several_datasets_reads_the_tasks_own(tmp_path):
    """lmms-lab/DocVQA holds DocVQA/ and InfographicVQA/: each task reads its own folder; a task without one of
    them refuses, naming the folders (reading the root whole mixed the two datasets)."""
    from llavakit.eval.tasks import get_task

    row = {"questionId": 1, "question": "Date?", "answers": ["1 jan"], "image": fx.pq_image(1)}
    root = tmp_path / "DocVQA-repo"
    fx.parquet(root / "DocVQA" / "validation-00000-of-00001.parquet", [row])
    fx.parquet(root / "InfographicVQA" / "validation-00000-of-00001.parquet", [{**row, "questionId": 2}])
    assert [s.id for s in get_task("docvqa").read(root)] == ["1"]
    assert [s.id for s in get_task("infovqa").read(root)] == ["2"]
    chart = {"question": "Max?", "answer": "3", "type": "human_test", "image": fx.pq_image(2)}
    fx.parquet(tmp_path / "charts" / "a" / "test-00000-of-00001.parquet", [chart])
    fx.parquet(tmp_path / "charts" / "b" / "test-00000-of-00001.parquet", [chart])
    with pytest.raises(ValueError, match=r"several datasets \(a, b\).*--data"):
        get_task("chartqa").read(tmp_path / "charts")


def test_mme_prompt_drops_please_answer_yes_or_no_for_the_short_answer_suffix(tmp_path):
    """lmms-eval's ``mme_doc_to_text`` (LLaVA-1.5's MME prompt) removes " Please answer yes or no." from the question
    when it appends "\\nAnswer the question using a single word or phrase."; the two instructions are never both
    asked."""
    from llavakit.eval.tasks import get_task

    samples = get_task("mme").read(fx.mme(tmp_path / "d"))
    prompt = {s.id: s.prompt for s in samples}["existence/000000000001.jpg/1"]
    assert prompt == f"Is there a box in this image?\n{fx.SHORT}"
    assert all("Please answer yes or no." not in s.prompt for s in samples)


def test_mme_llava_answer_file_without_the_yes_no_instruction(tmp_path):
    """LLaVA's ``llava_mme.jsonl`` prompts carry the question without " Please answer yes or no." (its
    ``convert_answer_to_mme.py`` adds it back to find the gold answer): such answers find their questions."""
    records = [
        {"question_id": "existence/000000000001.jpg", "prompt": f"Is there a box in this image?\n{fx.SHORT}"},
        {"question_id": "existence/000000000001.jpg", "prompt": f"Is there a cat0 in this image?\n{fx.SHORT}"},
        {"question_id": "existence/000000000002.jpg", "prompt": f"Is there a box in this image?\n{fx.SHORT}"},
        {"question_id": "existence/000000000002.jpg", "prompt": f"Is there a cat1 in this image? \n{fx.SHORT}"},
    ]
    for record, text in zip(records, ["Yes", "Yes", "Yes", "No"]):
        record["text"] = text
    result = _score("mme", fx.mme(tmp_path / "d"), tmp_path, records)
    assert result["scores"]["existence_acc"] == 0.75 and result["scores"]["existence_acc_plus"] == 0.5
    assert result["unanswered"]["count"] == 4 and "unknown_prediction_ids" not in result


def _circular_mmbench_tsv(root: Path) -> Path:
    """The official MMBench TSV layout: the circular copies of question i are rows of their own, indexed i + 1e6,
    i + 2e6, ..., with the options shifted and the answer moved; their image cell names the main row."""
    import base64

    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    rows = [
        [0, "What is shown?", "nan", "cat", "dog", "cow", "", "B", "recognition", base64.b64encode(fx.png_bytes(0))],
        [1, "Which color?", "nan", "red", "blue", "", "", "A", "color", base64.b64encode(fx.png_bytes(1))],
        [1000000, "What is shown?", "nan", "dog", "cow", "cat", "", "A", "recognition", "0"],
        [1000001, "Which color?", "nan", "blue", "red", "", "", "B", "color", "1"],
        [2000000, "What is shown?", "nan", "cow", "cat", "dog", "", "C", "recognition", "0"],
    ]
    lines = ["\t".join(header)]
    lines += ["\t".join(c.decode() if isinstance(c, bytes) else str(c) for c in row) for row in rows]
    root.mkdir(parents=True, exist_ok=True)
    (root / "mmbench_dev_en.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_mmbench_tsv_with_circular_copies_asks_each_row_once(tmp_path):
    """VLMEvalKit / the MMBench server group rows by ``index % 1e6``: the copies are the rotations. Rotating every row
    again asked each question n x n times and counted it once per copy (weighting questions by their option count)."""
    from llavakit.eval.tasks import get_task

    samples = get_task("mmbench").read(_circular_mmbench_tsv(tmp_path / "d"))
    assert [s.id for s in samples] == ["0/0", "0/1", "0/2", "1/0", "1/1"]  # a question's rows stay together
    copy = {s.id: s for s in samples}["0/1"]
    assert copy.prompt.split("\n")[1:4] == ["A. dog", "B. cow", "C. cat"] and copy.ref["answer"] == "A"
    # LLaVA's model_vqa_mmbench.py answers each row once, keyed by the row's index (round 0)
    records = [
        {"question_id": 0, "round_id": 0, "text": "B"},
        {"question_id": 1000000, "round_id": 0, "text": "A"},
        {"question_id": 2000000, "round_id": 0, "text": "A"},  # wrong: question 0 fails
        {"question_id": 1, "round_id": 0, "text": "A"},
        {"question_id": 1000001, "round_id": 0, "text": "B"},
    ]
    result = _score("mmbench", tmp_path / "d", tmp_path, records)
    assert result["scores"]["circular"] == 0.5 and result["scores"]["rotations"] == pytest.approx(4 / 5)
    assert result["counts"]["questions"] == 2 and result["unanswered"]["count"] == 0
