"""LLaVA-format records: reading JSON / JSONL, conversion to messages, bad data (raise or counted skip), mixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import conv, tiny_processor, write_image, write_jsonl

from llavakit.train.data import SupervisedDataset
from llavakit.train.labels import SampleError
from llavakit.train.mixture import build_dataset
from llavakit.train.records import read_records, to_messages


@pytest.fixture
def folder(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", 30, 40)
    write_image(tmp_path / "imgs" / "b.png", 50, 20, seed=1)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def good(i, image="a.png"):
    return {"id": f"g{i}", "image": image, "conversations": conv("<image>\nWhat?", f"Answer {i}.")}


def test_json_and_jsonl_files_give_the_same_samples(folder):
    proc = tiny_processor("llava")
    recs = [good(0), {"id": "t", "conversations": conv("Hi", "Hello")}, good(2, "b.png")]
    (folder / "d.json").write_text(json.dumps(recs, indent=1))
    write_jsonl(folder / "d.jsonl", recs)
    a = SupervisedDataset(folder / "d.json", folder / "imgs", proc, None, 512)
    b = SupervisedDataset(str(folder / "d.jsonl"), folder / "imgs", proc, None, 512)
    assert len(a) == len(b) == 3 and a.modalities == ["image", "text", "image"]
    for i in range(3):
        assert a[i]["input_ids"].tolist() == b[i]["input_ids"].tolist() and a[i]["id"] == recs[i]["id"]
    assert a[1]["pixel_values"] is None and a[1]["modality"] == "text"
    assert len(a.lengths) == 3 and a.lengths[0] > a.lengths[1]


def test_messages_from_records():
    rec = {"image": "x", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What is this?\n<image>"},
        {"from": "gpt", "value": "A cat."},
    ]}  # fmt: skip
    assert to_messages(rec) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A cat."},
    ]
    two = {"image": ["x", "y"], "conversations": conv("First <image> then <image>?", "Both.")}
    assert to_messages(two)[0]["content"] == "First <image> then <image>?"  # several images stay in place
    video = {"video": "clip", "conversations": conv("<image>\nWhat happens?", "A dance.")}
    assert to_messages(video)[0]["content"] == "<video>\nWhat happens?"


def test_a_python_record_with_a_non_text_answer_is_a_bad_record_not_a_crash():
    """Records built in Python (from pandas, say) may hold numpy numbers or bytes, which JSON cannot show."""
    import numpy as np

    for value in (np.int64(0), b"two"):
        with pytest.raises(SampleError, match=r"'value' must be the turn's text as a JSON string") as e:
            to_messages({"conversations": [*conv("How many?"), {"from": "gpt", "value": value}]}, "r1")
        assert e.value.reason == "bad_record"


@pytest.mark.parametrize(
    "record,reason",
    [
        ({"id": "e1", "conversations": []}, "empty_conversation"),
        ({"id": "e2", "conversations": conv("Hi", "  ")}, "empty_conversation"),
        ({"id": "e3"}, "empty_conversation"),
        ({"id": "m1", "image": "a.png", "conversations": conv("No placeholder", "x")}, "placeholder_mismatch"),
        ({"id": "m2", "conversations": conv("<image> two <image>", "x")}, "placeholder_mismatch"),
        ({"id": "m3", "image": ["a.png", "b.png"], "conversations": conv("<image>", "x")}, "placeholder_mismatch"),
        ({"id": "f1", "image": "nope.png", "conversations": conv("<image>", "x")}, "missing_image"),
        ({"id": "r1", "conversations": [{"from": "robot", "value": "x"}]}, "bad_record"),
        # a list or object as a turn's text trained on its Python repr ("['A cat.']")
        ({"id": "v1", "conversations": [*conv("Hi"), {"from": "gpt", "value": ["A cat."]}]}, "bad_record"),
        (
            {
                "id": "v2",
                "conversations": [{"from": "human", "value": {"text": "Hi"}}, {"from": "gpt", "value": "Hello"}],
            },
            "bad_record",
        ),
        # a number as the answer: `str(value or "")` trained a 0 as an empty answer (the model learnt to stop)
        ({"id": "n1", "conversations": [*conv("How many?"), {"from": "gpt", "value": 0}]}, "bad_record"),
        ({"id": "n2", "conversations": [*conv("Is it red?"), {"from": "gpt", "value": False}]}, "bad_record"),
    ],
)
def test_bad_records_raise_naming_file_line_and_id_or_are_counted(folder, record, reason):
    proc = tiny_processor("llava")
    path = write_jsonl(folder / "d.jsonl", [good(0), record, good(1)])
    with pytest.raises(SampleError, match=rf"d.jsonl:2: sample '{record['id']}'") as e:
        SupervisedDataset(path, folder / "imgs", proc, None, 512)
    assert e.value.reason == reason
    if record["id"].startswith("n"):  # the fix is named: the answer written as text
        assert "as a JSON string" in str(e.value) and 'a number as "2"' in str(e.value)
    ds = SupervisedDataset(path, folder / "imgs", proc, None, 512, on_error="skip")
    assert len(ds) == 2 and ds.skipped == {reason: 1}
    assert [ds[i]["id"] for i in range(2)] == ["g0", "g1"]


def test_a_huge_frame_is_an_unreadable_image_not_a_traceback(folder, capsys):
    """A header over Pillow's decompression-bomb limit raised DecompressionBombError (not an OSError) from
    ``image_size``, so `llava data check` on a video's frames ended in a traceback; one over our own limit passed."""
    import importlib.util

    from llavakit.cli import main
    from llavakit.train.data import image_size

    helper = Path(__file__).parents[1] / "processing" / "image_bytes.py"
    spec = importlib.util.spec_from_file_location("image_bytes", helper)
    image_bytes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_bytes)
    clip = folder / "clip"
    clip.mkdir()
    (clip / "000.png").write_bytes(image_bytes.png_header(30_000, 30_000))
    (clip / "001.png").write_bytes(image_bytes.png_header(9_000, 8_000))  # 72M pixels: under Pillow's, over ours
    big = r"9000x8000 \(w x h\) = 72000000 pixels is over"  # load_image's own words for it
    for name, said in (("000.png", "900000000 pixels is over the limit"), ("001.png", big)):
        with pytest.raises(SampleError, match=rf"image .*{name}: {said} .*; downscale it first") as e:
            image_size(clip / name, "v1")
        assert e.value.reason == "unreadable_image"
    assert image_size(folder / "imgs" / "a.png", "g0") == (30, 40)  # (height, width) of the fixture's image
    path = write_jsonl(
        folder / "v.jsonl", [{"id": "v1", "video": "clip", "conversations": conv("<video>\nWhat?", "A.")}]
    )
    assert main(["data", "check", str(path), "--image-folder", str(folder)]) == 1
    assert "unreadable_image" in capsys.readouterr().out


def test_an_image_folder_that_does_not_exist_is_named_not_its_first_image(folder):
    """With data.image_folder misspelt every image is missing: the error named the first image file (and with
    on_error: skip every record was skipped as a missing image); it now names the folder."""
    proc = tiny_processor("llava")
    path = write_jsonl(folder / "d.jsonl", [good(0), good(1)])
    for on_error in ("raise", "skip"):
        with pytest.raises(ValueError, match=r"image folder not found: .*imgz \(data.image_folder"):
            SupervisedDataset(path, folder / "imgz", proc, None, 512, on_error=on_error)


def test_broken_json_line_names_file_and_line(folder):
    proc = tiny_processor("llava")
    path = write_jsonl(folder / "d.jsonl", [good(0), good(1), '{"id": "x", "conversations": [', good(3)])
    with pytest.raises(SampleError, match=r"d.jsonl:3: broken JSON line"):
        SupervisedDataset(path, folder / "imgs", proc, None, 512)
    ds = SupervisedDataset(path, folder / "imgs", proc, None, 512, on_error="skip")
    assert len(ds) == 3 and ds.skipped == {"bad_json": 1}
    (folder / "d.json").write_text('[\n{"id": 1},\n{"id": 2,,}\n]')
    with pytest.raises(SampleError, match=r"d.json:3: broken JSON"):
        read_records(folder / "d.json")
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_records(folder / "missing.json")


def test_unreadable_image_is_found_when_loading(folder):
    proc = tiny_processor("llava")
    recs = [good(0, "broken.png"), good(1)]
    ds = SupervisedDataset(recs, folder / "imgs", proc, None, 512)
    with pytest.raises(SampleError, match="records.0.: sample 'g0'.*cannot decode") as e:
        ds[0]
    assert e.value.reason == "unreadable_image"
    skip = SupervisedDataset(recs, folder / "imgs", proc, None, 512, on_error="skip")
    assert skip[0]["id"] == "g1" and skip.skipped == {"unreadable_image": 1}  # replaced by the next good sample
    assert skip[0]["id"] == "g1" and skip.skipped == {"unreadable_image": 1}  # known bad: not counted twice
    only_bad = SupervisedDataset([good(0, "broken.png")], folder / "imgs", proc, None, 512, on_error="skip")
    with pytest.raises(ValueError, match=r"all 1 samples failed \(\{'unreadable_image': 1\}\).*fix or remove"):
        only_bad[0]


def test_video_folder_of_frames(folder):
    proc = tiny_processor("llava_onevision")
    for k in range(5):
        write_image(folder / "imgs" / "clip" / f"{k:03d}.png", 30, 40, seed=k)
    rec = {"id": "v", "video": "clip", "conversations": conv("<video>\nWhat happens?", "Nothing.")}
    ds = SupervisedDataset([rec], folder / "imgs", proc, None, 4096, num_frames=3)
    item = ds[0]
    assert item["pixel_values_videos"].shape == (1, 3, 3, 70, 70) and item["modality"] == "image"
    from llavakit.processing.anyres import num_video_tokens

    assert item["input_ids"].eq(proc.video_token_id).sum() == num_video_tokens(3, proc.geometry)
    frames = [folder / "imgs" / "clip" / f"{k:03d}.png" for k in (0, 2, 4)]  # 3 of 5 frames, first and last kept
    ref = proc(text=proc.apply_chat_template(to_messages(rec), add_generation_prompt=False), videos=[frames])
    assert item["input_ids"].tolist() == ref["input_ids"][0].tolist()
    assert torch.equal(item["pixel_values_videos"], ref["pixel_values_videos"])
    with pytest.raises(SampleError, match="missing_image|video folder"):
        SupervisedDataset([{**rec, "video": "none"}], folder / "imgs", proc, None, 4096)


def test_build_dataset_mixes_with_weights(folder):
    proc = tiny_processor("llava")
    a = write_jsonl(folder / "a.jsonl", [good(i) for i in range(4)])
    b = write_jsonl(folder / "b.jsonl", [{"id": f"t{i}", "conversations": conv("Hi", f"Hello {i}")} for i in range(6)])
    single = build_dataset({"path": str(a), "image_folder": str(folder / "imgs")}, proc, None, 512)
    assert len(single) == 4
    spec = {
        "datasets": [
            {"path": str(a), "image_folder": str(folder / "imgs"), "weight": 2.0},
            {"path": str(b), "weight": 0.5, "template": "vicuna_v1"},
        ],
        "seed": 1,
    }
    mix = build_dataset(spec, proc, None, 512)
    assert len(mix) == 8 + 3
    ids = [mix[i]["id"] for i in range(len(mix))]
    assert ids[:8] == [f"g{i}" for i in range(4)] * 2 and len(set(ids[8:])) == 3
    assert mix.modalities == ["image"] * 8 + ["text"] * 3
    assert [mix[i]["id"] for i in range(len(mix))] == [build_dataset(spec, proc, None, 512)[i]["id"] for i in range(11)]
    assert "A chat between" in proc.tokenizer.decode(mix[8]["input_ids"])  # the per-dataset template
    with pytest.raises(ValueError, match="unknown keys"):
        build_dataset({"datasets": [{"path": str(a), "wieght": 1}]}, proc, None, 512)
    with pytest.raises(ValueError, match="'path'"):
        build_dataset({"image_folder": "x"}, proc, None, 512)


def test_non_object_records_are_bad_records(folder):
    proc = tiny_processor("llava")
    (folder / "d.json").write_text(json.dumps([good(0), ["not", "a", "record"], good(1)]))
    with pytest.raises(SampleError, match=r"d.json\[1\]: a record must be a JSON object"):
        SupervisedDataset(folder / "d.json", folder / "imgs", proc, None, 512)
    ds = SupervisedDataset(folder / "d.json", folder / "imgs", proc, None, 512, on_error="skip")
    assert len(ds) == 2 and ds.skipped == {"bad_record": 1}
    with pytest.raises(ValueError, match="no usable training records"):
        SupervisedDataset([["x"]], folder / "imgs", proc, None, 512, on_error="skip")
    # a file without records said "no usable training records (skipped: none)"
    for empty in ("", "[]", "\n\n"):
        (folder / "e.jsonl").write_text(empty)
        with pytest.raises(ValueError, match=r"e.jsonl: holds no records \(an empty file or list\)"):
            SupervisedDataset(folder / "e.jsonl", folder / "imgs", proc, None, 512)


def test_mixture_yaml_in_llava_next_form(folder):
    proc = tiny_processor("llava")
    a = write_jsonl(folder / "a.jsonl", [good(i) for i in range(10)])
    b = write_jsonl(folder / "b.jsonl", [{"id": f"t{i}", "conversations": conv("Hi", f"Hello {i}")} for i in range(8)])
    (folder / "mix.yaml").write_text(
        f"datasets:\n  - json_path: {a}\n    sampling_strategy: first:30%\n"
        f"  - json_path: {b}\n    sampling_strategy: end:2\n  - json_path: {b}\n    sampling_strategy: random:3\n"
    )
    mix = build_dataset({"path": str(folder / "mix.yaml"), "image_folder": str(folder / "imgs")}, proc, None, 512)
    ids = [mix[i]["id"] for i in range(len(mix))]
    assert ids[:5] == ["g0", "g1", "g2", "t6", "t7"] and len(ids) == 8 and len(set(ids[5:])) == 3
    (folder / "bad.yaml").write_text(f"datasets:\n  - json_path: {a}\n    sampling_strategy: middle:3\n")
    with pytest.raises(ValueError, match="sampling_strategy 'middle:3'"):
        build_dataset({"path": str(folder / "bad.yaml")}, proc, None, 512)


def test_path_and_datasets_together_are_refused(folder):
    """data.path next to data.datasets would be silently ignored (the mixture wins): refused in one line."""
    proc = tiny_processor("llava")
    a = write_jsonl(folder / "a.jsonl", [good(i) for i in range(4)])
    spec = {"datasets": [{"path": str(a), "image_folder": str(folder / "imgs")}], "path": str(a)}
    with pytest.raises(ValueError, match=r"^data: give either path \(one dataset\) or datasets \(a mixture\)"):
        build_dataset(spec, proc, None, 512)


@pytest.mark.parametrize("entry", [{"path": 123}, {"path": ["a.json"]}, {"path": "a.json", "image_folder": 5}])
def test_a_datasets_entry_path_that_is_no_string_is_a_value_error(entry):
    key = "image_folder" if "image_folder" in entry else "path"
    with pytest.raises(ValueError, match=rf"^data.datasets\[0\].{key} must be a file path \(a string\), got"):
        build_dataset({"datasets": [entry]}, tiny_processor("llava"), None, 512)


def test_a_mixture_yaml_with_a_key_written_twice_is_refused(folder):
    """YAML keeps the last of two equal keys: a second ``datasets:`` list silently dropped the first dataset."""
    a = write_jsonl(folder / "a.jsonl", [good(i) for i in range(4)])
    mix = folder / "mix.yaml"
    mix.write_text(f"datasets:\n  - json_path: {a}\ndatasets:\n  - json_path: {a}\n    sampling_strategy: first:1\n")
    with pytest.raises(ValueError, match=rf"^{mix}: datasets is given twice \(lines 1 and 3\); keep one of them"):
        build_dataset({"path": str(mix), "image_folder": str(folder / "imgs")}, tiny_processor("llava"), None, 512)


def test_a_mixture_yaml_that_is_not_valid_yaml_is_a_value_error(folder, capsys):
    """The YAML parser's own error is no ValueError: `llava train` / `llava data check` printed a traceback."""
    from llavakit.cli import main

    mix = folder / "mix.yaml"
    mix.write_text("datasets:\n  - json_path: [unclosed\n")
    with pytest.raises(ValueError, match=rf"^mixture file {mix} is not valid YAML: while parsing a flow sequence"):
        build_dataset({"path": str(mix), "image_folder": str(folder / "imgs")}, tiny_processor("llava"), None, 512)
    assert main(["data", "check", str(mix)]) == 2
    assert f"error: mixture file {mix} is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("indent", [None, 1])
def test_a_json_array_saved_as_jsonl_is_read_as_the_array(folder, indent):
    """A .jsonl file holding one JSON array (a common mix-up) was read line by line: "d.jsonl:1: broken JSON line
    (Expecting value, column 2)" for a pretty-printed one, "a record must be a JSON object" for one on one line."""
    recs = [good(0), good(1, "b.png")]
    (folder / "d.jsonl").write_text(json.dumps(recs, indent=indent))
    ds = SupervisedDataset(folder / "d.jsonl", folder / "imgs", tiny_processor("llava"), None, 512)
    assert [r.data for r in ds.records] == recs
