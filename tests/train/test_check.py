"""`llava data check` finds planted faults, lists the offending ids and exits non-zero; clean data exits 0."""

from __future__ import annotations

import pytest
from train_helpers import conv, tiny_processor, write_image, write_jsonl

from llavakit.cli import main
from llavakit.train.check import check_data


@pytest.fixture
def planted(tmp_path):
    imgs = tmp_path / "imgs"
    write_image(imgs / "a.png", 30, 40)
    write_image(imgs / "b.png", 60, 20, seed=1)
    (imgs / "trunc.png").write_bytes((imgs / "b.png").read_bytes()[:120])  # truncated PNG
    ok = lambda i, im="a.png": {"id": f"ok{i}", "image": im, "conversations": conv("<image>\nWhat?", f"Thing {i}.")}
    records = [
        ok(0),
        {"id": "missing", "image": "nope.png", "conversations": conv("<image>\nWhat?", "x")},
        '{"id": "broken", "conversations": [',
        {"id": "mismatch", "image": ["a.png", "b.png"], "conversations": conv("<image>\nBoth?", "x")},
        {"id": "empty", "conversations": []},
        {"id": "unreadable", "image": "trunc.png", "conversations": conv("<image>\nWhat?", "x")},
        {"id": "long", "image": "b.png", "conversations": conv("<image>\n" + "word " * 80, "Short.")},
        {"id": "cut", "image": "a.png", "conversations": conv("<image>\nWhat?", "A long answer. " * 20)},
        ok(1, "b.png"),
        {"id": "text", "conversations": conv("Hi", "Hello")},
    ]
    write_jsonl(tmp_path / "d.jsonl", records)
    tiny_processor("llava").save_pretrained(tmp_path / "proc")
    return tmp_path


def test_planted_faults_are_found_with_ids(planted):
    report = check_data(planted / "d.jsonl", planted / "imgs", tiny_processor("llava"), None, 200)
    assert report.records == 10
    assert dict(report.counts) == {
        "missing_image": 1,
        "bad_json": 1,
        "placeholder_mismatch": 1,
        "empty_conversation": 1,
        "unreadable_image": 1,
        "too_long": 1,
        "truncated": 1,
    }
    assert report.examples["missing_image"] == ["missing"]
    assert report.examples["bad_json"] == [f"{planted / 'd.jsonl'}:3"]
    assert report.examples["too_long"] == ["long"] and report.examples["truncated"] == ["cut"]


def test_cli_reports_and_exits_nonzero(planted, capsys):
    argv = ["data", "check", str(planted / "d.jsonl"), "--image-folder", str(planted / "imgs")]
    code = main(argv + ["--model-or-processor", str(planted / "proc"), "--max-length", "200"])
    out = capsys.readouterr().out
    assert code == 1
    assert "checked 10 records" in out and "3 records OK, 7 with problems" in out
    for line in ["missing_image: 1 (missing)", "placeholder_mismatch: 1 (mismatch)", "empty_conversation: 1 (empty)",
                 "unreadable_image: 1 (unreadable)", "too_long: 1 (long)", "d.jsonl:3"]:  # fmt: skip
        assert line in out
    # without a processor the length check is skipped and said so; the other faults are still found
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "not checked: pass --model-or-processor" in out and "too_long" not in out and "missing_image: 1" in out


def test_clean_data_exits_zero(planted, capsys):
    clean = [{"id": f"c{i}", "image": "a.png", "conversations": conv("<image>\nWhat?", "Fine.")} for i in range(12)]
    write_jsonl(planted / "clean.jsonl", clean + [{"id": "t", "conversations": conv("Hi", "Hello")}])
    argv = ["data", "check", str(planted / "clean.jsonl"), "--image-folder", str(planted / "imgs")]
    assert main(argv + ["--model-or-processor", str(planted / "proc"), "--max-length", "200"]) == 0
    assert "all 13 records OK" in capsys.readouterr().out


def test_many_offenders_list_the_first_ten(planted, capsys):
    bad = [{"id": f"m{i}", "image": "nope.png", "conversations": conv("<image>", "x")} for i in range(13)]
    write_jsonl(planted / "bad.jsonl", bad)
    assert main(["data", "check", str(planted / "bad.jsonl"), "--image-folder", str(planted / "imgs")]) == 1
    out = capsys.readouterr().out
    assert "missing_image: 13 (m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, ...)" in out


def test_missing_data_file_is_one_line_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "none.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name,text,said",
    [
        ("llava_v1_5_mix665k.json", "[]\n", "holds no records (an empty JSON list)"),
        ("spaced.json", " [ \n ] ", "holds no records (an empty JSON list)"),
        ("blank.jsonl", "\n  \n", "holds no records (nothing but whitespace)"),
    ],
)
def test_a_file_without_records_is_refused_not_ok(tmp_path, capsys, name, text, said):
    """A placeholder file (a download that never finished, a stub) is no clean dataset: it was "all 0 records OK"."""
    data = tmp_path / name
    data.write_text(text)
    assert main(["data", "check", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{data} {said}" in err and "point DATA (or the mixture entry's path) at the real annotation file" in err
    with pytest.raises(ValueError, match="holds no records"):
        check_data(data, None, workers=2)  # refused before any worker starts


def test_a_mixture_entry_without_records_is_refused(tmp_path, capsys):
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "mix.yaml").write_text(f"datasets:\n  - path: {tmp_path / 'empty.json'}\n")
    assert main(["data", "check", str(tmp_path / "mix.yaml")]) == 2
    assert f"{tmp_path / 'empty.json'} holds no records (an empty JSON list)" in capsys.readouterr().err


def test_parallel_check_gives_the_same_report(planted):
    one = check_data(planted / "d.jsonl", planted / "imgs", tiny_processor("llava"), None, 200)
    two = check_data(planted / "d.jsonl", planted / "imgs", tiny_processor("llava"), None, 200, workers=2)
    assert two.counts == one.counts and two.examples == one.examples and two.records == one.records


@pytest.mark.parametrize(
    "extra,said",
    [
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--max-length", "0"], "--max-length must be >= 1"),
        (["--image-folder", "/nonexistent-folder"], "is not a directory"),
    ],
)
def test_bad_check_flags_are_one_line_errors(planted, capsys, extra, said):
    argv = ["data", "check", str(planted / "d.jsonl"), "--image-folder", str(planted / "imgs")]
    assert main(argv + extra) == 2
    assert said in capsys.readouterr().err


def test_unreadable_data_files_are_named(tmp_path, capsys):
    (tmp_path / "bin.jsonl").write_bytes(b'{"id": "\xef\xff"}\n')
    assert main(["data", "check", str(tmp_path / "bin.jsonl")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "is a directory; pass the data file" in capsys.readouterr().err


def test_plain_multi_turn_records_are_counted_not_fatal(planted, capsys):
    recs = [
        {"id": "two", "image": "a.png", "conversations": conv("<image>", "A cap.", "More?", "No.")},
        {"id": "one", "image": "a.png", "conversations": conv("<image>", "A cap.")},
    ]
    write_jsonl(planted / "p.jsonl", recs)
    argv = ["data", "check", str(planted / "p.jsonl"), "--image-folder", str(planted / "imgs")]
    assert main(argv + ["--model-or-processor", str(planted / "proc"), "--template", "plain"]) == 1
    out = capsys.readouterr().out
    assert "bad_record: 1 (two)" in out and "1 records OK" in out


def test_mixture_yaml_is_checked_dataset_by_dataset(planted, capsys):
    """A mixture YAML (what training reads; LLaVA-NeXT's json_path entries too) is checked per dataset with each
    entry's image folder, then totalled; it used to be read as one broken JSON file."""
    clean = [{"id": f"c{i}", "image": "a.png", "conversations": conv("<image>\nWhat?", "Fine.")} for i in range(3)]
    write_jsonl(planted / "clean.jsonl", clean)
    mix = planted / "mix.yaml"
    mix.write_text(
        "datasets:\n"
        f"  - json_path: {planted / 'clean.jsonl'}\n    sampling_strategy: first:50%\n"
        f"  - path: {planted / 'd.jsonl'}\n    image_folder: {planted / 'imgs'}\n"
    )
    code = main(["data", "check", str(mix), "--image-folder", str(planted / "imgs")])
    out = capsys.readouterr().out
    assert code == 1
    assert "checked 3 records of" in out and "all 3 records OK" in out
    assert (
        "checked 10 records of" in out
        and "missing_image: 1 (missing)" in out
        and "bad_json" not in out.split("checked 10")[0]
    )
    assert "mixture" in out and "2 datasets" in out and "with problems" in out.splitlines()[-1]
    mix.write_text("datasets:\n  - image_folder: imgs\n")
    assert main(["data", "check", str(mix)]) == 2
    assert "datasets[0] needs a 'path'" in capsys.readouterr().err
    for extra, said in (("image_foler: imgs", "unknown keys ['image_foler']"),
                        ("sampling_strategy: first:lots", "sampling_strategy"),
                        ("weight: heavy", "weight must be a number")):  # fmt: skip
        mix.write_text(f"datasets:\n  - path: {planted / 'clean.jsonl'}\n    {extra}\n")
        assert main(["data", "check", str(mix)]) == 2  # what training refuses, refused before checking records
        assert said in capsys.readouterr().err


def test_repeated_ids_and_turn_order_are_noted_not_failed(planted, capsys):
    """Ids used twice and turns out of human/gpt order are notes (training reads them as written), with the ids."""
    ok = {"id": "a", "image": "a.png", "conversations": conv("<image>\nWhat?", "Fine.")}
    twice = [{"from": "human", "value": "<image>\nOne?"}, {"from": "human", "value": "Two?"},
             {"from": "gpt", "value": "Both."}]  # fmt: skip
    records = [ok, dict(ok), {"id": "b", "image": "a.png", "conversations": twice}]
    write_jsonl(planted / "notes.jsonl", records)
    code = main(["data", "check", str(planted / "notes.jsonl"), "--image-folder", str(planted / "imgs")])
    out = capsys.readouterr().out
    assert code == 0 and "all 3 records OK" in out
    assert "note: 1 ids occur more than once (a)" in out
    assert "note: 1 records whose turns do not alternate human, gpt, human, ... (b)" in out


def test_each_kind_shows_what_is_wrong_with_its_first_record(planted, capsys):
    """The kind and ids alone left the reason to guess (training names it): the first message of each kind is shown."""
    argv = ["data", "check", str(planted / "d.jsonl"), "--image-folder", str(planted / "imgs")]
    assert main(argv + ["--model-or-processor", str(planted / "proc"), "--max-length", "200"]) == 1
    lines = capsys.readouterr().out.splitlines()
    first = {lines[i - 1].split(":")[0].strip(): line for i, line in enumerate(lines) if line.startswith("    first: ")}
    assert "nope.png" in first["missing_image"] and "sample 'missing'" in first["missing_image"]
    assert "--max-length" in first["truncated"] and "2 image" in first["placeholder_mismatch"]
    # without --image-folder a missing image says where it was looked for
    main(["data", "check", str(planted / "d.jsonl")])
    assert "no --image-folder given: image paths are read from the working directory" in capsys.readouterr().out


def test_an_unknown_speaker_is_a_problem_not_a_turn_order_note(planted, capsys):
    turns = [{"from": "Human", "value": "<image>\nWhat?"}, {"from": "bot", "value": "x"}]
    write_jsonl(planted / "spk.jsonl", [{"id": "spk", "image": "a.png", "conversations": turns}])
    assert main(["data", "check", str(planted / "spk.jsonl"), "--image-folder", str(planted / "imgs")]) == 1
    out = capsys.readouterr().out
    assert "bad_record: 1 (spk)" in out and "unknown speaker 'bot'" in out and "do not alternate" not in out


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ({"image": 5, "conversations": conv("<image>\nWhat?", "x")}, "'image' must be a path (a string) or a list"),
        ({"image": ["a.png", 3], "conversations": conv("<image>\n<image>\nWhat?", "x")}, "'image' must be a path"),
        ({"images": ["a.png"], "conversations": conv("<image>\nWhat?", "x")}, "the LLaVA format's key is 'image'"),
        ({"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]}, "'value' is missing"),
        ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, "turn 0: 'value' is missing or null"),
    ],
)
def test_records_of_the_wrong_shape_say_what_to_write(planted, capsys, record, said):
    write_jsonl(planted / "shape.jsonl", [{"id": "r", **record}])
    assert main(["data", "check", str(planted / "shape.jsonl"), "--image-folder", str(planted / "imgs")]) == 1
    assert said in capsys.readouterr().out
