"""Review of the training-data path: ids / labels as the original LLaVA code and the processor produce them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from train_helpers import conv, tiny_processor, write_image

from llavakit.model.llava import IGNORE_INDEX
from llavakit.train.check import check_data
from llavakit.train.data import SupervisedDataset
from llavakit.train.labels import SampleError, encode_sample, render_sample
from llavakit.train.records import to_messages

# an HF-style chat template that writes BOS itself (as Llama-3 / Mistral chat templates do)
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}U: {% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
    "{% else %}A: {% generation %}{{ m['content'][0]['text'] }}{{ eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{% endif %}{% endfor %}"
)


def test_chat_template_writing_bos_gets_one_bos_as_the_processor_does(tmp_path: Path) -> None:
    proc = tiny_processor("llava")
    proc.chat_template = BOS_TEMPLATE
    bos = proc.tokenizer.bos_token_id
    write_image(tmp_path / "a.png", 30, 30)
    rec = {"id": "b1", "image": "a.png", "conversations": conv("<image>\nWhat?", "A cat.")}
    msgs = to_messages(rec)
    enc = encode_sample(msgs, proc, "chat_template", [(30, 30)], sample_id="b1")
    assert enc.input_ids[0] == bos and enc.input_ids[1] != bos  # no second BOS
    text, _ = render_sample(msgs, proc, "chat_template")
    ref = proc(text=text, images=[Image.open(tmp_path / "a.png")])
    assert enc.input_ids == ref["input_ids"][0].tolist()
    assert proc.tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "A cat.</s>"
    item = SupervisedDataset([rec], tmp_path, proc, "chat_template", 4096)[0]
    assert item["input_ids"].tolist() == enc.input_ids


@pytest.mark.parametrize("value", ["<image>", "  <image>\n", "<image>\n"])
def test_an_image_only_turn_is_the_bare_placeholder(value: str) -> None:
    """LLaVA's preprocess_multimodal: "<image>" + "\\n" + text, then strip(): no dangling newline without text."""
    rec = {"image": "a.png", "conversations": conv(value, "A cat.")}
    assert to_messages(rec)[0]["content"] == "<image>"
    proc = tiny_processor("llava")
    enc = encode_sample(to_messages(rec), proc, "vicuna_v1", [(30, 30)], sample_id="i1")
    text = proc.tokenizer.decode(enc.input_ids)
    assert text.endswith("USER: " + "<image>" * 16 + " ASSISTANT: A cat.</s>")
    # with text the placeholder still moves to the front, followed by "\n"
    assert to_messages({"image": "a", "conversations": conv("What? <image>", "x")})[0]["content"] == "<image>\nWhat?"


def _elongated(tmp_path: Path) -> list[dict]:
    write_image(tmp_path / "thin.png", 1, 300)  # 300 x 1: vanishes when padded to a square (llava-1.5)
    write_image(tmp_path / "a.png", 30, 30)
    return [
        {"id": "thin", "image": "thin.png", "conversations": conv("<image>\nWhat?", "A line.")},
        {"id": "ok", "image": "a.png", "conversations": conv("<image>\nWhat?", "A square.")},
    ]


def test_an_image_preprocessing_refuses_is_a_sample_error_naming_the_record(tmp_path: Path) -> None:
    recs = _elongated(tmp_path)
    proc = tiny_processor("llava")
    with pytest.raises(SampleError, match=r"sample 'thin'.*too elongated") as e:
        SupervisedDataset(recs, tmp_path, proc, None, 4096)[0]
    assert e.value.reason == "unreadable_image"
    skip = SupervisedDataset(recs, tmp_path, proc, None, 4096, on_error="skip")
    assert skip[0]["id"] == "ok" and skip.skipped == {"unreadable_image": 1}


def test_data_check_finds_an_image_preprocessing_refuses(tmp_path: Path) -> None:
    from train_helpers import write_jsonl

    write_jsonl(tmp_path / "d.jsonl", _elongated(tmp_path))
    report = check_data(tmp_path / "d.jsonl", tmp_path, tiny_processor("llava"), None, 4096)
    assert dict(report.counts) == {"unreadable_image": 1} and report.examples["unreadable_image"] == ["thin"]


def test_several_images_one_per_turn_move_to_the_front_of_their_turns() -> None:
    """LLaVA-NeXT's preprocess_multimodal: a turn holding exactly one <image> (not already first) gets it moved to
    its front followed by "\\n"; turns holding several keep them in place."""
    turns = conv("What is this? <image>", "A cat.", "<image> And this one?", "A dog.", "Both: <image> <image>", "Pets.")
    msgs = to_messages({"image": ["a", "b", "c", "d"], "conversations": turns})
    assert [m["content"] for m in msgs if m["role"] == "user"] == [
        "<image>\nWhat is this?",
        "<image> And this one?",  # already in front: unchanged, as LLaVA-NeXT leaves it
        "Both: <image> <image>",
    ]
