"""Task-level helpers: prompts, option rotations, keys of LLaVA answer files, --limit groups, synth rules."""

from __future__ import annotations

import json

import pytest

from llavakit.eval.run import limit_samples, read_predictions
from llavakit.eval.tasks import TASKS
from llavakit.eval.tasks.base import Sample
from llavakit.eval.tasks.mmbench import is_none, rotations
from llavakit.eval.tasks.scienceqa import sqa_prompt
from llavakit.eval.tasks.synth import is_right, options_of
from llavakit.eval.tasks.synth import score as synth_score
from llavakit.eval.tasks.textvqa import textvqa_key, textvqa_question


def test_every_task_is_registered():
    expected = (
        "vqav2 textvqa textvqa_ocr gqa vizwiz pope scienceqa_img mmbench mme chartqa docvqa infovqa synth".split()
    )
    assert sorted(TASKS) == sorted(expected)


def test_mmbench_rotations_move_the_right_letter():
    row = {"question": "Q?", "hint": "nan", "A": "cat", "B": "dog", "C": "cow", "D": float("nan"), "answer": "B"}
    out = rotations(row, "row 1")
    assert [right for _, _, right in out] == ["B", "A", "C"]  # dog sits at B, then A, then C
    assert [shown for _, shown, _ in out][2] == {"A": "cow", "B": "cat", "C": "dog"}
    assert out[0][0] == "Q?\nA. cat\nB. dog\nC. cow\nAnswer with the option's letter from the given choices directly."
    with pytest.raises(ValueError, match="row 1: answer 'D'"):
        rotations({**row, "answer": "D"}, "row 1")
    assert is_none(None) and is_none("nan") and is_none(float("nan")) and not is_none("0")


def test_scienceqa_prompt():
    assert sqa_prompt("Which?", "", ["a", "b"]) == "Which?\nA. a\nB. b"
    assert sqa_prompt("Which?", "Look here. ", ["x"]) == "Context: Look here.\nWhich?\nA. x"


def test_textvqa_keys_of_llava_answer_files():
    ocr = "What brand?\nReference OCR token: a, b\nAnswer the question using a single word or phrase."
    assert textvqa_question(ocr) == "what brand?"
    assert textvqa_question("Reference OCR token: a\nWhat brand?\nAnswer.") == "what brand?"
    assert textvqa_key({"question_id": "abc", "prompt": ocr, "text": "x"}) == "abc|what brand?"
    assert textvqa_key({"question_id": "abc|what brand?", "text": "x"}) == "abc|what brand?"  # ours


def test_read_predictions_keys(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [
        {"question_id": 7, "text": "yes"},
        {"question_id": 3, "round_id": 1, "text": "B"},
        {"id": "x", "prediction": "no"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"question_id": 9, "te')
    assert read_predictions(path, tolerate_torn_tail=True) == {"7": "yes", "3/1": "B", "x": "no"}
    with pytest.raises(ValueError, match="a.jsonl:4"):
        read_predictions(path)


def test_limit_keeps_groups_whole():
    samples = [Sample(f"{g}/{r}", "q", None, group=str(g)) for g in range(3) for r in range(3)]
    assert [s.id for s in limit_samples(samples, 4)] == ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2"]
    assert len(limit_samples(samples, 3)) == 3
    assert limit_samples(samples, None) == samples
    with pytest.raises(ValueError, match="--limit"):
        limit_samples(samples, 0)


def _synth(qtype: str, answer: str, prompt: str = "Q?", **ref) -> Sample:
    return Sample(f"{qtype}{answer}{len(ref)}", prompt, None, {"qtype": qtype, "answer": answer, **ref})


@pytest.mark.parametrize(
    ("qtype", "answer", "prediction", "right"),
    [
        ("count", "2", "Two.", True),  # official VQA normalisation: number words, trailing period
        ("count", "2", "2 circles", False),
        ("color", "red", "The red", True),  # articles dropped
        ("color", "red", "RED!", True),
        ("position", "left", "right", False),
        ("reading", "apple", "Apple", True),
        ("existence", "no", "No, there is not.", True),  # LLaVA's POPE rule
        ("existence", "no", "There is a star.", False),
        ("existence", "yes", "I do not think so", False),
    ],
)
def test_synth_rules(qtype, answer, prediction, right):
    assert is_right(_synth(qtype, answer), prediction) is right


def test_synth_multiple_choice_and_aggregates():
    prompt = "What color is the star?\nA. red\nB. blue\nC. green\nAnswer with the option's letter."
    assert options_of(prompt) == {"A": "red", "B": "blue", "C": "green"}
    mc = _synth("mc", "B", prompt)
    assert is_right(mc, "B") and is_right(mc, "blue") and not is_right(mc, "A")
    samples = [
        _synth("existence", "yes"),
        Sample("e2", "Q?", None, {"qtype": "existence", "answer": "no", "negative": "adversarial"}),
        Sample("r1", "Q?", None, {"qtype": "reading", "answer": "cat", "font_bucket": "tiny"}),
        Sample("r2", "Q?", None, {"qtype": "reading", "answer": "dog", "font_bucket": "large"}),
    ]
    preds = {samples[0].id: "Yes", "e2": "Yes", "r1": "cot", "r2": "dog"}
    result = synth_score(samples, preds)["scores"]
    assert result["overall"] == 0.5 and result["existence"] == 0.5 and result["reading"] == 0.5
    assert result["existence_precision"] == 0.5 and result["existence_recall"] == 1.0
    assert result["existence_yes_ratio"] == 1.0 and result["existence_no_adversarial"] == 0.0
    assert (result["reading_tiny"], result["reading_large"]) == (0.0, 1.0)
    assert "count_1_to_5" not in result  # no count question, no count split


def test_synth_count_split_by_answer():
    samples = [_synth("count", n) for n in ("0", "1", "2", "3", "7")]
    preds = {s.id: p for s, p in zip(samples, ("0", "1", "1", "3", "7"))}  # "2" answered "1"
    result = synth_score(samples, preds)
    assert result["scores"]["count"] == 0.8
    assert result["scores"]["count_1_to_5"] == 2 / 3 and result["counts"]["count_1_to_5"] == 3
    assert result["scores"]["count_2_plus"] == 2 / 3 and result["counts"]["count_2_plus"] == 3


def test_scienceqa_uses_llava_question_file_when_present(tmp_path):
    import fixtures as fx

    data = fx.scienceqa(tmp_path / "sqa")
    value = "Context: N/A\nQuestion: Which is a metal?\nOptions: (A) wood (B) iron\n<image>"
    fx.dump(data / "llava_test_CQM-A.json", [{"id": "1", "image": "1/image.png", "conversations": [
        {"from": "human", "value": value}, {"from": "gpt", "value": "B"}]}])  # fmt: skip
    samples = {s.id: s for s in TASKS["scienceqa_img"].read(data)}
    assert samples["1"].prompt == value.replace("\n<image>", "") + "\n" + fx.LETTER
    assert samples["4"].prompt == "Pick B.\nA. a\nB. b\n" + fx.LETTER  # not in LLaVA's file: built


def test_reference_answers_of_the_wrong_shape_are_refused(tmp_path):
    """A DocVQA answer list given as one string (it would be scored letter by letter), a ChartQA label given as a
    list, and a ScienceQA answer index outside its choices (-1 read as letter E) are refused by file and record."""
    import fixtures as fx

    from llavakit.eval.tasks import get_task

    docs = fx.docvqa(tmp_path / "doc")
    ann = json.loads((docs / "val_v1.0.json").read_text())
    ann["data"][0]["answers"] = "1 jan 2000"
    (docs / "val_v1.0.json").write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="val_v1.0.json: record 0: the reference answers must be a non-empty list"):
        get_task("docvqa").read(docs)
    sqa = fx.scienceqa(tmp_path / "sqa")
    problems = json.loads((sqa / "problems.json").read_text())
    first = next(iter(problems))
    problems[first]["answer"] = -1
    (sqa / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(ValueError, match=f"problem '{first}': 'answer' must be the index of one of its"):
        get_task("scienceqa_img").read(sqa)
    chart = fx.chartqa(tmp_path / "chart")
    human = next(chart.rglob("test_human.json"))
    records = json.loads(human.read_text())
    records[0]["label"] = ["100"]
    human.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record 0: the reference answer must be a string, got list"):
        get_task("chartqa").read(chart)


def test_answer_files_with_a_question_answered_twice_or_a_non_text_answer_are_refused(tmp_path):
    path = tmp_path / "answers.jsonl"
    rows = [{"question_id": 1, "text": "yes"}, {"question_id": 2, "text": "no"}, {"question_id": 1, "text": "no"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="answers.jsonl:3: question '1' is answered twice \\(also on line 1\\)"):
        read_predictions(path)
    path.write_text('{"question_id": 1, "text": ["yes"]}\n')
    with pytest.raises(ValueError, match="answers.jsonl:1: the answer must be a string, got list"):
        read_predictions(path)
