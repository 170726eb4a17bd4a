"""The official openai client against ``llava serve``: answers equal ``llava generate`` under greedy decoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest
from serve_helpers import API_KEY, data_url, env, image_bytes

from llavakit.processing.anyres import num_image_tokens
from llavakit.processing.processor import LlavaProcessor

QUESTION = "What is in the picture?"
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    path.write_bytes(image_bytes(150, 90, seed=3))
    return path


@pytest.fixture(scope="module")
def cli_answer(tiny_model: Path, photo: Path) -> str:
    cmd = [
        sys.executable,
        "-m",
        "llavakit.cli",
        "generate",
        "--model",
        str(tiny_model),
        "--image",
        str(photo),
        "--prompt",
        QUESTION,
        "--max-new-tokens",
        str(NEW_TOKENS),
    ]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n")
    return out.stdout[:-1]  # generate ends the answer with one newline


def _messages(photo: Path) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(photo.read_bytes())}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]


def _expected_prompt_tokens(tiny_model: Path, photo: Path) -> tuple[int, int]:
    proc = LlavaProcessor.from_pretrained(tiny_model)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    ids = proc(text=proc.apply_chat_template(msgs, add_generation_prompt=True), images=[photo.read_bytes()])
    return int(ids["input_ids"].shape[1]), num_image_tokens(90, 150, proc.geometry)


def test_models(client: openai.OpenAI, server) -> None:  # noqa: ANN001
    assert [m.id for m in client.models.list().data] == [server.model]


def test_non_streaming_equals_generate(client, server, tiny_model, photo, cli_answer) -> None:  # noqa: ANN001
    r = client.chat.completions.create(
        model=server.model, messages=_messages(photo), max_tokens=NEW_TOKENS, temperature=0
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == server.model
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == cli_answer
    assert choice.finish_reason in ("stop", "length")
    prompt_tokens, image_tokens = _expected_prompt_tokens(tiny_model, photo)
    assert image_tokens > 0 and prompt_tokens > image_tokens
    assert r.usage.prompt_tokens == prompt_tokens
    assert 1 <= r.usage.completion_tokens <= NEW_TOKENS
    assert r.usage.total_tokens == prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == NEW_TOKENS


def test_ignore_eos_answers_max_tokens(client, server, photo) -> None:  # noqa: ANN001
    """vLLM's ``ignore_eos`` extension through the client's ``extra_body``: the answer runs to ``max_tokens``
    (the worker's side, an EOS passed by, is tested in ``test_batcher``)."""
    r = client.chat.completions.create(
        model=server.model,
        messages=_messages(photo),
        max_tokens=NEW_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == NEW_TOKENS


def test_streaming_equals_generate(client, server, tiny_model, photo, cli_answer) -> None:  # noqa: ANN001
    stream = client.chat.completions.create(
        model=server.model,
        messages=_messages(photo),
        max_tokens=NEW_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1  # streamed piece by piece, not in one block
    assert "".join(content) == cli_answer
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert client.models.retrieve(server.model).id == server.model
    assert usage.prompt_tokens == _expected_prompt_tokens(tiny_model, photo)[0]


def test_multi_turn_several_images_and_sampling(client, server, tiny_model) -> None:  # noqa: ANN001
    a, b = image_bytes(64, 64, seed=1), image_bytes(200, 80, seed=2, fmt="JPEG")
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(a)}},
                {"type": "image_url", "image_url": {"url": data_url(b, "image/jpeg")}},
                {"type": "text", "text": "Compare them."},
            ],
        },
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": "How?"},
    ]
    r = client.chat.completions.create(model=server.model, messages=messages, max_tokens=8, temperature=0)
    proc = LlavaProcessor.from_pretrained(tiny_model)
    plain = [
        {**m, "content": [{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]}
        if isinstance(m["content"], list)
        else m
        for m in messages
    ]
    ids = proc(text=proc.apply_chat_template(plain, add_generation_prompt=True), images=[a, b])["input_ids"]
    assert r.usage.prompt_tokens == ids.shape[1]
    # sampling with a seed is reproducible; stop strings end the answer early
    kw = dict(model=server.model, messages=messages, max_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    first, again = (client.chat.completions.create(**kw).choices[0].message.content for _ in range(2))
    assert first == again
    full = client.chat.completions.create(model=server.model, messages=messages, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    if len(text) > 3:
        cut = client.chat.completions.create(
            model=server.model, messages=messages, max_tokens=16, temperature=0, stop=[text[2:4]]
        )
        assert cut.choices[0].message.content == text[: text.index(text[2:4])]
        assert cut.choices[0].finish_reason == "stop"


def test_fields_the_server_cannot_honour_are_refused(client, server) -> None:  # noqa: ANN001
    """What the client offers that the server cannot do (tool calls, JSON mode, penalties, logit bias) ends in a
    400 naming the field, not in an answer that silently ignored it."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "Describe a cat."}]
    for kw, param in [
        ({"tools": tools, "tool_choice": "required"}, "tool_choice"),
        ({"tools": tools}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 2.0}, "presence_penalty"),
        ({"frequency_penalty": 2.0}, "frequency_penalty"),
        ({"logit_bias": {"5": -100}}, "logit_bias"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=server.model, messages=msgs, max_tokens=4, **kw)
        assert e.value.param == param and f"{param}" in e.value.message and "not supported" in e.value.message
    r = client.chat.completions.create(model=server.model, messages=msgs, max_tokens=4, tools=tools, tool_choice="none")
    assert r.choices[0].message.tool_calls is None
