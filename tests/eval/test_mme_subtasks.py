"""MME scored over part of its 14 subtasks (`--limit`, a download without the cognition folders): a category with no
subtask scored gets no points (it reported `"cognition": 0`), and the run warns that its totals are not MME's."""

from __future__ import annotations

import json

import fixtures as fx

from llavakit.cli import main
from llavakit.eval.mme_pope import COGNITION_SUBTASKS, PERCEPTION_SUBTASKS
from llavakit.eval.tasks import get_task
from llavakit.eval.tasks.base import Sample

NOT_COMPARABLE = "do not compare with published MME totals"


def test_limit_without_a_cognition_subtask_reports_no_cognition_points(tiny_model, tmp_path, capsys):
    data, out = fx.mme(tmp_path / "d"), tmp_path / "o"
    args = ["eval", "mme", "--model", tiny_model, "--data", str(data), "--out", str(out), "--limit", "2"]
    assert main([*args, "--max-new-tokens", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.splitlines()[-1])
    assert set(result["points"]) == {"perception", "existence"}  # was also "cognition": 0
    assert "cognition" not in result["scores"] and "code_reasoning" in result["missing_subtasks"]
    report = (out / "report.md").read_text()
    assert "| cognition |" not in report and "| perception |" in report
    said = f"MME: 13 of the 14 subtasks were not scored ({', '.join(result['missing_subtasks'])}"
    assert f"warning: {said}" in captured.err and NOT_COMPARABLE in captured.err
    assert f"**warning:** {said}" in report and result["warnings"] == [captured.err.split("warning: ")[1].strip()]


def test_scoring_a_file_without_cognition_answers_says_so(tmp_path, capsys):
    data = fx.mme(tmp_path / "d")
    e1, e2 = "existence/000000000001.jpg", "existence/000000000002.jpg"
    answers = {f"{e1}/1": "Yes", f"{e1}/2": "No", f"{e2}/1": "Yes", f"{e2}/2": "No", "OCR/ocr1.jpg/1": "Yes"}
    preds = tmp_path / "answers.jsonl"
    preds.write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in answers.items()))
    argv = ["eval", "score", "mme", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.splitlines()[-1])
    assert result["points"] == {"perception": 200.0, "existence": 200.0}  # OCR's pair is incomplete: not scored
    assert "MME: 13 of the 14 subtasks were not scored" in captured.err and NOT_COMPARABLE in captured.err


def test_every_subtask_scored_has_both_totals_and_no_warning():
    samples, preds = [], {}
    for subtask in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS:
        for n, gold in ((1, "Yes"), (2, "No")):
            ref = {"subtask": subtask, "image": "a.jpg", "answer": gold}
            samples.append(Sample(f"{subtask}/a.jpg/{n}", "q", None, ref, f"{subtask}/a.jpg"))
            preds[f"{subtask}/a.jpg/{n}"] = gold
    result = get_task("mme").score(samples, preds)
    assert result["points"]["perception"] == 2000.0 and result["points"]["cognition"] == 800.0
    assert result["missing_subtasks"] == [] and "warnings" not in result
