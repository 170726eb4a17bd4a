"""`llava eval synth`: end to end on a tiny model, resume, and scoring of hand-written answer files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavakit.data.synth import write_dataset
from llavakit.eval.command import eval_task, score_file

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, 2, seed=1_000_123, kind="eval", min_side=112, max_side=200, text_prob=1.0)
    return out


def _by_hand(records: list[dict], answers: dict[str, str]) -> dict[str, float]:
    """An independent reading of the rules for the answers a tiny model gives (and the test files below)."""
    words = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}

    def norm(text: str) -> str:
        kept = [w for w in text.lower().replace(".", " ").split() if w not in ("a", "an", "the")]
        return " ".join(words.get(w, w) for w in kept)

    right: dict[str, list[bool]] = {}
    for r in records:
        pred = answers[r["id"]]
        if r["qtype"] == "existence":
            first = pred.split(".")[0].replace(",", "").split(" ")
            said = "no" if {"No", "no", "not"} & set(first) else "yes"
            ok = said == r["answer"]
        elif r["qtype"] == "mc":
            ok = pred.strip().rstrip(".") == r["answer"]
        else:
            ok = norm(pred) == norm(r["answer"])
        right.setdefault(r["qtype"], []).append(ok)
    scores = {q: sum(v) / len(v) for q, v in right.items()}
    scores["overall"] = sum(sum(v) for v in right.values()) / sum(len(v) for v in right.values())
    return scores


def test_synth_end_to_end_scores_what_was_predicted(tiny_model, synth_data, tmp_path):
    out = tmp_path / "run"
    result = eval_task(
        "synth", model=tiny_model, data=str(synth_data), out=str(out), batch_size=8, max_new_tokens=2, progress=False
    )
    records = _lines(synth_data / "eval.jsonl")
    predictions = {p["question_id"]: p["text"] for p in _lines(out / "predictions.jsonl")}
    assert set(predictions) == {r["id"] for r in records}
    expected = _by_hand(records, predictions)
    for name, value in expected.items():
        assert result["scores"][name] == pytest.approx(value), name
    # POPE metrics of the existence questions, counted by hand (label "yes" is the positive class).
    existence = [r for r in records if r["qtype"] == "existence"]
    said_yes = [
        not ({"No", "no", "not"} & set(predictions[r["id"]].split(".")[0].replace(",", "").split(" ")))
        for r in existence
    ]
    assert result["scores"]["existence_yes_ratio"] == pytest.approx(sum(said_yes) / len(existence))
    assert json.loads((out / "scores.json").read_text()) == result
    assert "| overall |" in (out / "report.md").read_text()


def test_synth_score_file_with_known_answers(synth_data, tmp_path):
    """Every answer right but written loosely (case, articles, number words, trailing period), then one
    existence "yes" answered "No, there is not." -> known scores."""
    records = _lines(synth_data / "eval.jsonl")
    spelled = {"1": "One", "2": "two.", "3": "Three", "0": "zero"}
    lines = []
    flipped = None
    for r in records:
        text = r["answer"]
        if r["qtype"] == "count":
            text = spelled.get(text, text)
        elif r["qtype"] in ("color", "shape"):
            text = f"The {text.capitalize()}."
        elif r["qtype"] == "existence":
            if text == "yes" and flipped is None:
                flipped, text = r["id"], "No, there is not."
            else:
                text = "Yes, there is." if text == "yes" else "No."
        lines.append(json.dumps({"question_id": r["id"], "text": text}))
    preds = tmp_path / "answers.jsonl"
    preds.write_text("\n".join(lines) + "\n")
    result = score_file("synth", data=str(synth_data), predictions=str(preds), out=str(tmp_path / "scored"))
    n_exist = sum(r["qtype"] == "existence" for r in records)
    n_yes = n_exist // 2  # eval sets ask one yes and one no existence question per scene
    assert result["scores"]["overall"] == pytest.approx((len(records) - 1) / len(records))
    assert result["scores"]["existence"] == pytest.approx((n_exist - 1) / n_exist)
    assert result["scores"]["existence_recall"] == pytest.approx((n_yes - 1) / n_yes)
    assert result["scores"]["existence_precision"] == 1.0
    assert result["scores"]["existence_yes_ratio"] == pytest.approx((n_yes - 1) / n_exist)
    for q in ("color", "shape", "count", "reading", "mc"):
        if q in result["scores"]:
            assert result["scores"][q] == 1.0, q
    buckets = [k for k in result["scores"] if k.startswith("reading_")]
    assert buckets and all(result["scores"][k] == 1.0 for k in buckets)


def test_synth_generates_held_out_set_and_resumes(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    kwargs = dict(model=tiny_model, data=None, out=str(out), n=1, max_new_tokens=2, progress=False)
    result = eval_task("synth", limit=3, **kwargs)
    # the model names no training sizes: the scenes are the generator's default sizes, and that is said
    assert "does not say which scene sizes it was trained on" in capsys.readouterr().err
    assert result["seed"] >= 1_000_000 and result["predicted_now"] == 3  # a held-out seed
    assert all(0.0 <= v <= 1.0 for v in result["scores"].values())
    again = eval_task("synth", limit=5, **kwargs)  # the first 3 are resumed, 2 more predicted
    assert (again["resumed"], again["predicted_now"]) == (3, 2)
    assert len(_lines(out / "predictions.jsonl")) == 5
    # A torn last line (a crash mid-write) is redone, not an error.
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"question_id": "s1000000_000000_5", "te')
    third = eval_task("synth", limit=6, **kwargs)
    assert (third["resumed"], third["predicted_now"]) == (5, 1)
    assert len(_lines(out / "predictions.jsonl")) == 6
    assert third["counts"]["questions"] == 6
    fewer = eval_task("synth", limit=2, **kwargs)  # a smaller --limit scores only its questions
    assert fewer["counts"]["questions"] == 2 and "unknown_prediction_ids" not in fewer


def test_synth_score_cli_prints_the_result_last(synth_data, tmp_path):
    records = _lines(synth_data / "eval.jsonl")
    preds = tmp_path / "answers.jsonl"
    preds.write_text("".join(json.dumps({"question_id": r["id"], "text": r["answer"]}) + "\n" for r in records))
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "llavakit.cli", "eval", "score", "synth", "--data", str(synth_data)]
    cmd += ["--predictions", str(preds), "--out", str(tmp_path / "s")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["scores"]["overall"] == 1.0
    assert json.loads((tmp_path / "s" / "scores.json").read_text()) == result


def test_resume_refuses_another_model_with_the_same_name(tiny_model, synth_data, tmp_path):
    from llavakit.tiny import write_tiny_checkpoint

    out = str(tmp_path / "run")
    kwargs = dict(data=str(synth_data), out=out, limit=1, max_new_tokens=1, progress=False)
    eval_task("synth", model=tiny_model, **kwargs)
    other = write_tiny_checkpoint(tmp_path / "elsewhere" / Path(tiny_model).name, seed=1)
    with pytest.raises(ValueError, match="holds predictions of model"):
        eval_task("synth", model=str(other), **kwargs)


def test_resume_refuses_other_settings(tiny_model, synth_data, tmp_path):
    """The same model run in another dtype, quantized, or with another answer length does not resume (its scores
    would be the first run's); by default such runs get their own directory."""
    out = str(tmp_path / "run")
    kwargs = dict(model=tiny_model, data=str(synth_data), limit=1, progress=False)
    first = eval_task("synth", out=out, max_new_tokens=1, **kwargs)
    files = sorted(Path(tiny_model).glob("*.safetensors"))
    weights = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    assert first["settings"] == {"task": "synth", "dtype": "float32", "quantize": None, "weights": weights,
                                 "max_new_tokens": 1}  # fmt: skip
    for change, said in (({"quantize": "int8"}, "quantize None there, 'int8' now"), ({"max_new_tokens": 2}, "1 there")):
        with pytest.raises(ValueError, match=f"other settings .*{said}"):
            eval_task("synth", out=out, **{"max_new_tokens": 1, **kwargs, **change})
    assert eval_task("synth", out=out, max_new_tokens=1, **kwargs)["resumed"] == 1
    with pytest.raises(ValueError, match="--max-new-tokens must be >= 1"):
        eval_task("synth", out=out, max_new_tokens=0, **kwargs)


def test_resume_refuses_retrained_weights_and_other_questions(tiny_model, synth_data, tmp_path):
    """Weights rewritten in place, or other data under the same ids, are not resumed from the old answers."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = str(tmp_path / "run")
    kwargs = dict(data=str(synth_data), out=out, limit=2, max_new_tokens=1, progress=False)
    eval_task("synth", model=str(model), **kwargs)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # retrained in place: same path, new file
    with pytest.raises(ValueError, match="other settings .*weights"):
        eval_task("synth", model=str(model), **kwargs)
    other = tmp_path / "other"
    shutil.copytree(synth_data, other)
    lines = (other / "eval.jsonl").read_text().splitlines()
    changed = [json.dumps({**json.loads(line), "question": "Is there a unicorn?"}) for line in lines]
    (other / "eval.jsonl").write_text("\n".join(changed) + "\n")
    fresh = str(tmp_path / "run2")
    eval_task("synth", model=str(model), **{**kwargs, "out": fresh})
    with pytest.raises(ValueError, match="answered for another prompt .* a llavakit whose prompts differed"):
        eval_task("synth", model=str(model), **{**kwargs, "out": fresh, "data": str(other)})


def test_a_torn_multibyte_last_answer_is_cut_and_redone(tiny_model, synth_data, tmp_path):
    """A crash inside a UTF-8 character of the last answer does not block the resume: that line is cut, redone."""
    out = tmp_path / "run"
    kwargs = dict(model=tiny_model, data=str(synth_data), out=str(out), limit=2, max_new_tokens=1, progress=False)
    eval_task("synth", **kwargs)
    pred = out / "predictions.jsonl"
    first, second = pred.read_bytes().splitlines(keepends=True)[:2]
    record = json.loads(second)
    torn = json.dumps({**record, "text": "日本"}, ensure_ascii=False).encode()
    pred.write_bytes(first + torn[: torn.index("日".encode()) + 1])
    result = eval_task("synth", **kwargs)
    assert result["resumed"] == 1 and result["predicted_now"] == 1


def test_default_out_dir_names_dtype_and_quantization(tiny_model, synth_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs = dict(model=tiny_model, data=str(synth_data), limit=1, max_new_tokens=1, progress=False)
    eval_task("synth", **kwargs)
    eval_task("synth", quantize="int8", **kwargs)
    eval_task("synth", dtype="bfloat16", **kwargs)
    name = Path(tiny_model).name
    runs = sorted(p.name for p in (tmp_path / "runs" / "eval").iterdir())
    assert runs == sorted([f"synth-{name}", f"synth-{name}-int8", f"synth-{name}-bfloat16"])


def test_colour_and_shape_split_by_scene(tmp_path):
    """Answers that name something in the scene but the wrong object: right on one-object scenes, wrong on
    several-object scenes whenever the scene has another value to name; then answers naming nothing in it."""
    data = tmp_path / "data"
    write_dataset(data, 12, seed=1_000_321, kind="eval", min_side=112, max_side=160, text_prob=0.0)
    shapes = {r["image"]: r["scene"]["shapes"] for r in _lines(data / "scenes.jsonl")}
    records = [r for r in _lines(data / "eval.jsonl") if r["qtype"] in ("color", "shape")]
    attr = {"color": "color", "shape": "kind"}
    answers, expected, chance = {}, {"color": [], "shape": []}, {"color": [], "shape": []}
    for r in records:
        values = [x[attr[r["qtype"]]] for x in shapes[r["image"]]]
        others = [v for v in values if v != r["answer"]]
        answers[r["id"]] = others[0] if len(values) > 1 and others else r["answer"]
        if len(values) > 1:
            expected[r["qtype"]].append(answers[r["id"]] == r["answer"])
            chance[r["qtype"]].append(1 / len(set(values)))
    assert all(expected.values()) and not all(all(v) for v in expected.values())  # several-object scenes, wrong

    def scored(texts: dict[str, str]) -> dict[str, float]:
        preds = tmp_path / "answers.jsonl"
        preds.write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in texts.items()))
        return score_file("synth", data=str(data), predictions=str(preds), out=str(tmp_path / "scored"))["scores"]

    scores = scored(answers)
    for q in ("color", "shape"):
        assert scores[f"{q}_several"] == pytest.approx(sum(expected[q]) / len(expected[q]))
        assert scores[f"{q}_named_in_scene"] == 1.0
        assert scores[f"{q}_several_chance"] == pytest.approx(sum(chance[q]) / len(chance[q]))
        if f"{q}_one_object" in scores:
            assert scores[f"{q}_one_object"] == 1.0
    assert scored({r["id"]: "nothing" for r in records})["color_named_in_scene"] == 0.0
    good = (data / "scenes.jsonl").read_text()
    (data / "scenes.jsonl").write_text(good + '{"image": "images/x.png", "scene": {"width": 9}}\n')
    with pytest.raises(ValueError, match=r"scenes.jsonl:13: the scene has no list of shapes"):
        scored(answers)
    (data / "scenes.jsonl").unlink()  # without the scenes' ground truth: no split, the rest as before
    plain = scored(answers)
    assert "color_several" not in plain and plain["color"] == scores["color"]


def test_resume_refuses_an_answer_recorded_with_a_null_prompt(tiny_model, synth_data, tmp_path):
    """An answer file edited or written by another tool with ``"prompt": null`` is refused in one line, not with a
    TypeError from slicing None."""
    out = tmp_path / "run"
    kwargs = dict(model=str(tiny_model), data=str(synth_data), out=str(out), limit=2, max_new_tokens=1, progress=False)
    eval_task("synth", **kwargs)
    answers = out / "predictions.jsonl"
    lines = answers.read_text().splitlines()
    answers.write_text("\n".join([json.dumps({**json.loads(lines[0]), "prompt": None}), *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="answered for another prompt \\('None'\\)"):
        eval_task("synth", **kwargs)


def test_compile_flag_reaches_the_pipeline(tiny_model, synth_data, tmp_path, monkeypatch):
    """``llava eval TASK --compile`` opens the pipeline with its decode step compiled (the compiled step itself is
    tested against eager decoding in tests/engine/test_compile.py)."""
    import llavakit.commands as commands
    from llavakit.cli import _parser

    seen = []
    real = commands.open_pipeline

    def spy(model, dtype="float32", quantize=None, compile=False):
        seen.append(compile)
        return real(model, dtype, quantize)

    monkeypatch.setattr(commands, "open_pipeline", spy)
    a = _parser().parse_args(["eval", "synth", "--model", tiny_model, "--data", str(synth_data), "--compile"])
    assert a.compile is True and _parser().parse_args(["eval", "synth"]).compile is False
    kwargs = dict(model=tiny_model, data=str(synth_data), limit=1, max_new_tokens=1, progress=False)
    eval_task("synth", out=str(tmp_path / "c"), compile=True, **kwargs)
    assert seen == [True]


def test_empty_data_or_out_is_not_the_working_directory(tiny_model, tmp_path, monkeypatch):
    """An unset variable in ``--data "$DIR"`` read whatever the working directory held."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cap.jsonl").write_text('{"question_id": "x", "text": "y"}\n')
    with pytest.raises(ValueError, match="--data is empty"):
        eval_task("mmbench", model=tiny_model, data="", progress=False)
    with pytest.raises(ValueError, match="--out is empty"):
        eval_task("synth", model=tiny_model, data=None, out=" ", n=2, progress=False)
