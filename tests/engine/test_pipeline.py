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


@pytest.mark.parametrize("stops", [[""], ["END", ""]])
def test_an_empty_stop_string_is_refused_by_name(stops):
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        StopMatcher(stops)


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


def test_batch_answers_equal_replies_with_stop_strings(pipe):
    """Text, finish reason and token counts: a row ends at its stop string as ``reply`` does (the batch used to
    run on to the limit and cut the text afterwards, counting the tokens past the stop)."""
    convs = [_msg("first?", (80, 50)), _msg("second question?", (40, 160), (10, 200, 10))]
    full = []
    for c in convs:
        pipe.reset()
        full.append(pipe.reply(c, max_new_tokens=16))
    stop = full[0].text[2:4]
    replies = []
    for c in convs:
        pipe.reset()
        replies.append(pipe.reply(c, max_new_tokens=16, stop=stop))
    assert replies[0].finish_reason == "stop" and replies[0].completion_tokens < full[0].completion_tokens
    got = pipe.batch(convs, max_new_tokens=16, stop=stop)
    assert [(a.text, a.finish_reason, a.completion_tokens) for a in got] == [
        (a.text, a.finish_reason, a.completion_tokens) for a in replies
    ]


def test_generation_config_end_ids_end_every_path(tmp_path):
    """An end-of-turn id listed only in generation_config.json (Llama-3's <|eot_id|>) ends answers of ``reply``,
    ``batch`` and ``LlavaModel.generate`` alike."""
    import shutil

    from llavakit.checkpoint.api import load_model

    src = write_tiny_checkpoint(tmp_path / "tiny", "llava_next", seed=3)
    ref = llavakit.load(src)
    inputs, _ = ref._inputs(_msg())
    ids = ref.model.generate(
        inputs["input_ids"], max_new_tokens=8, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
    )[0, inputs["input_ids"].shape[1] :].tolist()
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # the first new id after the first token
    end = ids[k]
    dst = tmp_path / "eot"
    shutil.copytree(src, dst)
    eos = ref.model.config.text.eos_token_id
    (dst / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, end]}))
    pipe = llavakit.load(dst)
    one = pipe.reply(_msg(), max_new_tokens=8)
    two = pipe.batch([_msg(), _msg("other?")], max_new_tokens=8)[0]
    assert (one.completion_tokens, one.finish_reason) == (k + 1, "stop") == (two.completion_tokens, two.finish_reason)
    assert one.text == two.text
    model = load_model(dst)
    out = model.generate(
        inputs["input_ids"], max_new_tokens=8, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
    )[0, inputs["input_ids"].shape[1] :].tolist()
    assert out == ids[: k + 1]  # one row: generation ends at the id


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
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "HTTPS://x/y.png"}}]}], "remote"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}], "ftp://"),
        ([{"role": "user", "content": 5}], "content must be a string or a list of parts"),
        ([{"role": "user", "content": [{"type": "video", "video": "clip"}]}], "a non-empty list of frames"),
        ([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}], "list of frames"),
        ([{"role": "user", "content": [{"type": "image", "image": "file://red.png"}]}], "names the host 'red.png'"),
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
    for src in (str(path), path, "file://" + quote(str(path)), "FILE://" + quote(str(path))):  # schemes: any case
        pipe.reset()
        msgs = [{"role": "user", "content": [{"type": "image", "image": src}, {"type": "text", "text": "Colour?"}]}]
        answers.append(pipe.chat(msgs, max_new_tokens=4))
    assert answers[0] == answers[1] == answers[2] == answers[3]


def test_load_without_a_path_is_the_default_model():
    from llavakit.commands import default_model

    pipe = llavakit.load()
    assert pipe.model.config.model_type == "llava_next" and pipe.processor.family == "llava_next"
    assert (
        pipe.model.config.text.hidden_size
        == json.loads((Path(default_model()) / "config.json").read_text())["text_config"]["hidden_size"]
    )


def test_line_wrapped_base64_data_urls_are_read(pipe):
    """``base64`` and MIME encoders wrap at 76 columns; the server accepted such data URLs, the library did not."""
    msgs = _msg()
    url = msgs[0]["content"][0]["image_url"]["url"]
    head, data = url.split(",", 1)
    wrapped = head + "," + "\n".join(data[i : i + 76] for i in range(0, len(data), 76))
    pipe.reset()
    plain = pipe.chat(msgs, max_new_tokens=4)
    msgs[0]["content"][0]["image_url"]["url"] = wrapped
    pipe.reset()
    assert pipe.chat(msgs, max_new_tokens=4) == plain


@pytest.mark.parametrize(
    "sampling,match",
    [
        ({"max_new_tokens": None}, "max_new_tokens must be a whole number, got None"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
        ({"temperature": None}, "temperature must be a number, got None"),
        ({"top_k": 1.5}, "top_k must be a whole number"),
        ({"seed": 2**70}, "seed must be a whole number from"),
        ({"stop": 5}, "stop must be a string or a list of strings"),
    ],
)
def test_arguments_of_the_wrong_type_are_named(pipe, sampling, match):
    with pytest.raises(ValueError, match=match):
        pipe.chat(_msg(), **sampling)


def test_nothing_to_answer_is_refused(pipe):
    with pytest.raises(ValueError, match="no text and no image"):
        pipe.chat([{"role": "user", "content": "  "}])


def test_numpy_seeds_and_tuple_stops_work_as_ints_and_lists(pipe):
    import numpy as np

    assert pipe.chat(_msg(), max_new_tokens=6, temperature=1.0, seed=np.int64(7)) == pipe.chat(
        _msg(), max_new_tokens=6, temperature=1.0, seed=7
    )
    full = pipe.chat(_msg(), max_new_tokens=12)
    stop = full[2:4]
    assert pipe.chat(_msg(), max_new_tokens=12, stop=(stop,)) == pipe.chat(_msg(), max_new_tokens=12, stop=[stop])


def test_batch_counts_image_tokens_and_refuses_what_reply_refuses(pipe):
    convs = [_msg("first?", (80, 50)), _msg("second?", (40, 160))]
    got = pipe.batch(convs, max_new_tokens=4)
    for c, a in zip(convs, got, strict=True):
        pipe.reset()
        assert a.image_tokens == pipe.reply(c, max_new_tokens=4).image_tokens > 0
    with pytest.raises(ValueError, match="no text and no image"):
        pipe.batch([_msg(), [{"role": "user", "content": " "}]])
    with pytest.raises(ValueError, match="at least one conversation"):
        pipe.batch([])


def test_batch_given_one_conversation_says_it_takes_a_list_of_them(pipe):
    """batch(messages) for batch([messages]) (one conversation, not a list of them) was refused as "messages must be
    a non-empty list of {'role': ..., 'content': ...} dicts", which is what was given; now the error says so."""
    with pytest.raises(ValueError, match=r"conversation 0 is a single message.*batch\(\[messages"):
        pipe.batch(_msg())
    with pytest.raises(ValueError, match="a list of conversations.*conversation 0 is a str"):
        pipe.batch("What is it?")


def test_onevision_video_parts_answer_as_processor_and_generate(pipe, tmp_path):
    """A video part (its frames) in the pipeline: the answer of the processor + generate route; a follow-up turn
    reuses the cache up to the video and equals a fresh prefill; batch equals single."""
    frames = [Image.new("RGB", (50, 40), (40 * i, 100, 200)) for i in range(3)]
    msgs = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "What?"}]}]
    pipe.reset()
    first = pipe.reply(msgs, max_new_tokens=6)
    proc = pipe.processor
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}],
        add_generation_prompt=True,
    )
    inputs = proc(text=prompt, videos=[frames], return_tensors="pt")
    ids = pipe.model.generate(inputs["input_ids"], max_new_tokens=6, pixel_values_videos=inputs["pixel_values_videos"])
    assert first.text == proc.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    follow = msgs + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    again = pipe.chat(follow, max_new_tokens=4)
    assert 0 < pipe.session.stats["reused_tokens"] < inputs["input_ids"].shape[1]
    pipe.reset()
    assert pipe.chat(follow, max_new_tokens=4) == again
    other = [{"role": "user", "content": [{"type": "video", "video": frames[::-1]}, {"type": "text", "text": "x"}]}]
    assert pipe.batch([msgs, other], max_new_tokens=6)[0].text == first.text


def test_video_parts_on_a_model_without_video_are_refused(tmp_path):
    pipe = llavakit.load(write_tiny_checkpoint(tmp_path / "next", "llava_next", seed=1))
    frames = [Image.new("RGB", (20, 20))] * 2
    with pytest.raises(ValueError, match="videos are supported by llava_onevision models only"):
        pipe.chat([{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "?"}]}])


def test_a_bad_quantize_mode_is_refused_before_the_model_is_read():
    with pytest.raises(ValueError, match="quantize must be one of"):
        llavakit.load("/nonexistent/model", quantize="int3")


def test_video_file_part_is_its_decoded_frames(pipe, tmp_path):
    """``{"type": "video", "video": "clip.mp4", "max_frames": 3}`` answers as the 3 frames ``read_video`` picks."""
    pytest.importorskip("av")
    from llavakit.processing.video_load import read_video
    from video_files import write_video

    clip = write_video(tmp_path / "clip.mp4", n=7)
    text = {"type": "text", "text": "What?"}
    pipe.reset()
    part = {"type": "video", "video": str(clip), "max_frames": 3}
    by_path = pipe.reply([{"role": "user", "content": [part, text]}], max_new_tokens=4)
    pipe.reset()
    frames = read_video(clip, 3)
    by_frames = pipe.reply([{"role": "user", "content": [{"type": "video", "video": frames}, text]}], max_new_tokens=4)
    assert (by_path.text, by_path.prompt_tokens) == (by_frames.text, by_frames.prompt_tokens)
    pipe.reset()
    every = pipe.reply([{"role": "user", "content": [{"type": "video", "video": clip}, text]}], max_new_tokens=4)
    assert every.prompt_tokens > by_path.prompt_tokens  # a Path too; all 7 frames (32 at most)


def test_stream_stops_on_the_pipelines_eos_ids_as_batch_does(pipe):
    """An id the model config calls EOS but the tokenizer's EOS list lacks: the session stopped there while the
    answer text did not know it as an end (finish "length" after a few tokens); batch went on. Both go on now."""
    msgs = _msg("Say something")
    pipe.reset()
    inputs, _ = pipe._inputs(msgs)
    toks = list(pipe.session.generate(inputs["input_ids"], max_new_tokens=8, pixel_values=inputs["pixel_values"],
                                      image_sizes=inputs["image_sizes"]))  # fmt: skip
    pipe.reset()
    fake = next(t for t in toks[1:] if t not in toks[:1] and t not in pipe._eos())
    cfg = pipe.model.config.text
    old, old_gen = cfg.eos_token_id, getattr(pipe.model, "generation_eos_ids", None)
    try:
        cfg.eos_token_id, pipe.model.generation_eos_ids = fake, [fake]
        single = pipe.reply(msgs, max_new_tokens=8)
        pipe.reset()
        batched = pipe.batch([msgs], max_new_tokens=8)[0]
    finally:
        cfg.eos_token_id, pipe.model.generation_eos_ids = old, old_gen
        pipe.reset()
    assert (single.text, single.completion_tokens) == (batched.text, batched.completion_tokens)
    assert single.completion_tokens == len(toks)


def test_a_stop_string_completed_by_the_final_flush_ends_with_stop():
    """An incomplete character at the end decodes to U+FFFD only when the decoder is flushed; a stop string it
    completes still cuts the text and makes the finish reason "stop" (it stayed "length")."""
    from llavakit.engine.text import AnswerText

    class Stream:
        def push(self, token: int) -> str:
            return "ok x" if token == 1 else ""  # token 2: a character's first byte, held back

        def flush(self) -> str:
            return "\ufffd"

    class Tok:
        def decode_stream(self, skip_special_tokens: bool = True) -> Stream:
            return Stream()

    answer = AnswerText(Tok(), ["x\ufffd"])
    assert answer.push(1) == "ok " and answer.push(2) == ""
    assert answer.finish() == "" and answer.text == "ok " and answer.reason == "stop"
