"""What the pipeline answers and what it refuses: the conversation's shape, image parts' sources, the answer's
leading whitespace, empty paths and unusable devices (each said plainly, never a wrong answer)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

import llavakit
from llavakit.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("turns") / "tiny")


@pytest.fixture(scope="module")
def pipe(model_dir: Path):  # noqa: ANN201
    return llavakit.load(model_dir)


def _png(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


USER = {"role": "user", "content": "What is it?"}


@pytest.mark.parametrize(
    ("messages", "said"),
    [
        (
            [USER, {"role": "assistant", "content": "A small"}],
            "the last message must be the user's .*message 1 has role 'assistant'",
        ),
        ([{"role": "assistant", "content": "hello"}], "no user message"),
        ([{"role": "system", "content": "Be brief."}], "no user message"),
    ],
)
def test_a_conversation_must_end_with_the_users_message(pipe, messages: list[dict], said: str) -> None:  # noqa: ANN001
    """Before, a trailing assistant message was rendered as a finished answer ("ASSISTANT: A small</s>") with no
    generation prompt after it, and the model wrote on past its end-of-sequence; a system message alone was
    answered as if it were the user's."""
    for call in (pipe.chat, lambda m, **kw: pipe.batch([m], **kw)):
        with pytest.raises(ValueError, match=said):
            call(messages, max_new_tokens=2)


@pytest.mark.parametrize("role", ["system", "assistant"])
def test_an_image_outside_a_user_message_is_refused_by_name(pipe, role: str) -> None:  # noqa: ANN001
    messages = [{"role": role, "content": [{"type": "image", "image": _png()}]}, USER]
    if role == "assistant":
        messages = [USER, *messages]
    with pytest.raises(ValueError, match=f"an image in a {role} message; images and videos go in user messages"):
        pipe.chat(messages, max_new_tokens=2)


def test_the_second_system_message_is_the_one_named(pipe) -> None:  # noqa: ANN001
    sys_a, sys_b = {"role": "system", "content": "a"}, {"role": "system", "content": "b"}
    with pytest.raises(ValueError, match="message 1: role must be 'user' or 'assistant'"):
        pipe.chat([sys_a, sys_b, USER], max_new_tokens=2)


def test_answers_start_without_whitespace_in_every_form(pipe) -> None:  # noqa: ANN001
    """After "ASSISTANT:" a byte-level tokenizer's first answer token is often " red"; as original LLaVA strips its
    outputs, the answer does not start with the space (the CLI stripped it, the Python API did not)."""
    from llavakit.engine.text import AnswerText

    tok = pipe.processor.tokenizer
    ids = tok.encode("  red, then  blue ", add_special_tokens=False)
    row = AnswerText(tok, stop=None)
    deltas = [row.push(t) for t in ids] + [row.finish()]
    assert row.text == "".join(deltas) == "red, then  blue "  # leading whitespace only
    row = AnswerText(tok, stop=["red"])  # stop strings are matched on the text as the user gets it
    for t in ids:
        row.push(t)
    assert row.text == "" and row.reason == "stop"
    messages = [{"role": "user", "content": [{"type": "image", "image": _png()}, {"type": "text", "text": "Hi"}]}]
    pipe.reset()
    text = "".join(pipe.stream(messages, max_new_tokens=8))
    assert text == text.lstrip()
    pipe.reset()
    assert pipe.chat(messages, max_new_tokens=8) == text == pipe.reply(messages, max_new_tokens=8).text
    assert pipe.batch([messages], max_new_tokens=8)[0].text == text


def test_image_sources_none_keys_and_empty_paths(pipe) -> None:  # noqa: ANN001
    """A key set to None is absent (as transformers drops them), so the path under the next key is used; an empty
    path is said to be empty (it was taken for the working directory: "() (.) is a directory")."""
    ok = [
        {"role": "user", "content": [{"type": "image", "image": None, "path": _png()}, {"type": "text", "text": "?"}]}
    ]
    assert isinstance(pipe.chat(ok, max_new_tokens=2), str)
    empty = [{"role": "user", "content": [{"type": "image", "image": ""}, {"type": "text", "text": "?"}]}]
    with pytest.raises(ValueError, match="the image path is empty"):
        pipe.chat(empty, max_new_tokens=2)


def test_an_empty_model_path_and_unusable_devices_are_refused(model_dir: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(model_dir)  # a loadable checkpoint in the working directory: "" must not load it
    with pytest.raises(ValueError, match="the model path is empty"):
        llavakit.load("")
    with pytest.raises(ValueError, match="'bogus' is not a device name"):
        llavakit.load(model_dir, device="bogus")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' is not available in this torch build or machine"):
            llavakit.load(model_dir, device="cuda")


def test_a_developer_message_is_the_system_message(pipe) -> None:  # noqa: ANN001
    """OpenAI's newer name for the system message: the server maps it, and the Python API took it for an unknown
    role ("role must be 'user' or 'assistant'")."""
    said = "Answer in one word."
    for role_content in (said, [{"type": "text", "text": said}]):
        dev = pipe.chat([{"role": "developer", "content": role_content}, USER], max_new_tokens=3)
        sys_ = pipe.chat([{"role": "system", "content": role_content}, USER], max_new_tokens=3)
        assert dev == sys_
