"""The high-level pipeline: streaming deltas, stop strings, seeds, batch == single, message validation."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

import llavakit
from llavakit.engine.text import StopMatcher
from llavakit.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return llavakit.load(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny", "llava_onevision", seed=1))


def _msg(text="What is it?", size=(80, 50), colour=(200, 40, 40)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}
    ]


def test_stream_deltas_concatenate_to_the_answer(pipe):
    deltas = list(pipe.stream(_msg(), max_new_tokens=16))
    pipe.reset()
    assert "".join(deltas) == pipe.chat(_msg(), max_new_tokens=16)
    assert len(deltas) > 1


def test_stop_strings_cut_the_answer(pipe):
    full = pipe.reply(_msg(), max_new_tokens=24)
    assert len(full.text) > 4
    stop = full.text[3:5]
    cut = pipe.reply(_msg(), max_new_tokens=24, stop=[stop])
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    assert full.finish_reason in ("stop", "length") and full.completion_tokens <= 24


def test_stop_matcher_holds_back_partial_matches():
    m = StopMatcher(["END"])
    assert [m.push(x) for x in ["abc E", "N", "xyz", "EN", "D tail"]] == ["abc ", "", "ENxyz", "", ""]
    assert m.stopped and m.flush() == ""


def test_seeded_sampling_reproducible(pipe):
    a = pipe.chat(_msg(), max_new_tokens=12, temperature=1.0, seed=7)
    b = pipe.chat(_msg(), max_new_tokens=12, temperature=1.0, seed=7)
    assert a == b


def test_batch_equals_single(pipe):
    convs = [_msg("first?", (80, 50)), _msg("second question?", (40, 160), (10, 200, 10)), _msg("x", (300, 300))]
    batch = pipe.batch(convs, max_new_tokens=10)
    single = []
    for c in convs:
        pipe.reset()
        single.append(pipe.chat(c, max_new_tokens=10))
    assert [a.text for a in batch] == single


@pytest.mark.parametrize(
    "messages,match",
    [
        ([], "non-empty list"),
        ([{"content": "hi"}], "role"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unsupported content part type 'audio'"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}],
            "not valid base64",
        ),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}], "remote"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}], "ftp://"),
        ([{"role": "user", "content": 5}], "content must be a string or a list of parts"),
        ([{"role": "user", "content": {"type": "text", "text": "hi"}}], "not dict"),
        ([{"role": "user", "content": ["hi"]}], "message 0, part 0: a content part must be a dict"),
        ([{"role": "user", "content": [{"type": "text", "text": 42}]}], "'text' as a string, got int"),
        ([{"role": "user", "content": [{"type": "text", "text": None}]}], "'text' as a string, got NoneType"),
        ([{"role": "user", "content": "what does the <image> tag do?"}], "reserves as the placeholder"),
        ([{"role": "user", "content": [{"type": "text", "text": "a <video> tag"}]}], "'< video >'"),
    ],
)
def test_malformed_messages(pipe, messages, match):
    with pytest.raises(ValueError, match=match):
        pipe.chat(messages)


def test_file_url_and_path_objects(pipe, tmp_path):
    from urllib.parse import quote

    path = tmp_path / "a photo.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(path)
    answers = []
    for src in (str(path), path, "file://" + quote(str(path))):
        pipe.reset()
        msgs = [{"role": "user", "content": [{"type": "image", "image": src}, {"type": "text", "text": "Colour?"}]}]
        answers.append(pipe.chat(msgs, max_new_tokens=4))
    assert answers[0] == answers[1] == answers[2]


def test_load_without_a_path_is_the_default_model():
    from llavakit.commands import default_model

    pipe = llavakit.load()
    assert pipe.model.config.model_type == "llava_next" and pipe.processor.family == "llava_next"
    assert (
        pipe.model.config.text.hidden_size
        == json.loads((Path(default_model()) / "config.json").read_text())["text_config"]["hidden_size"]
    )
