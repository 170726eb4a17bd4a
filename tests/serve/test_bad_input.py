"""Every kind of bad input gets its 4xx status, a message naming the problem, and the server keeps answering."""

from __future__ import annotations

import json
import socket
import struct
import zlib

import httpx
import pytest
from PIL import Image
from serve_helpers import API_KEY, data_url, image_bytes

from conftest import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGES, MAX_TOKENS


def _bomb_png(w: int, h: int) -> bytes:
    """A small PNG whose header claims ``w x h`` pixels (IHDR patched, CRC fixed)."""
    data = bytearray(image_bytes(8, 8))
    ihdr = 8 + 8  # signature, then length + type of the first chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _solid_png(w: int, h: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _bmp() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, "BMP")
    return buf.getvalue()


def _img(url: str, text: str = "What is it?") -> dict:
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
    }


def _req(**kw) -> dict:  # noqa: ANN003
    body = {"model": "tiny-llava", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    body.update(kw)
    return body


PNG = image_bytes(40, 30)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
CASES = {
    # name: (body or raw bytes, status, text the message must hold, param)
    "malformed JSON": (b'{"model": "tiny-llava", "messages": [', 400, "malformed JSON", "body"),
    "not UTF-8": (b"\xff\xfe{\x00", 400, "", None),
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply", "body"),
    "a 5000-digit number": (  # was "There was an error parsing the body"
        b'{"model": "tiny-llava", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}",
        400,
        "a number in the JSON body has 5000 digits, over the 4300 a number may have",
        "body",
    ),
    "not UTF-8 inside a string": (b'{"model": "tiny-\xff"}', 400, "not UTF-8 text", "body"),
    "JSON array body": (b"[1, 2]", 400, "", None),
    "missing messages": ({"model": "tiny-llava"}, 400, "messages", "messages"),
    "missing model": ({"messages": [{"role": "user", "content": "Hi"}]}, 400, "model", "model"),
    "empty messages": (_req(messages=[]), 400, "messages", "messages"),
    "unknown role": (_req(messages=[{"role": "robot", "content": "x"}]), 400, "role", "messages[0].role"),
    "unknown part type": (
        _req(messages=[{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]),
        400,
        "messages[0].content",
        None,
    ),
    "image_url without url": (
        _req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        400,
        "url",
        "messages[0].content[0].image_url.url",
    ),
    "temperature not a number": (_req(temperature="hot"), 400, "temperature", "temperature"),
    "temperature negative": (_req(temperature=-1), 400, "temperature", "temperature"),
    "top_p zero": (_req(top_p=0), 400, "top_p", "top_p"),
    "max_tokens zero": (_req(max_tokens=0), 400, "max_tokens", "max_tokens"),
    "n = 2": (_req(n=2), 400, "n", "n"),
    "seed over int64": (_req(seed=2**63), 400, "seed", "seed"),
    "seed under int64": (_req(seed=-(2**63) - 1), 400, "seed", "seed"),
    "stop not a string": (_req(stop=5), 400, "stop", "stop"),
    "too many stop strings": (_req(stop=["a", "b", "c", "d", "e"]), 400, "at most 4", "stop"),
    "stop string too long": (_req(stop="z" * 300), 400, "256", "stop"),
    "empty stop string": (_req(stop=""), 400, "empty stop string", "stop"),
    "empty stop string in a list": (_req(stop=["done", ""]), 400, "empty stop string", "stop[1]"),
    "<image> in the text": (
        _req(messages=[{"role": "user", "content": "what does <image> mean in HTML?"}]),
        400,
        "reserves as the placeholder",
        "messages[0].content",
    ),
    "logprobs": (_req(logprobs=True, top_logprobs=2), 400, "not supported", "logprobs"),
    "top_k below -1": (_req(top_k=-2), 400, "top_k", "top_k"),
    # OpenAI fields the server cannot honour: refused by name rather than ignored (which would change the meaning)
    "tools": (_req(tools=[TOOL]), 400, "tools is not supported", "tools"),
    "tool_choice required": (_req(tools=[TOOL], tool_choice="required"), 400, "tool_choice 'required' is not", None),
    "tool_choice a function": (
        _req(tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        400,
        "tool_choice is not supported",
        "tool_choice",
    ),
    "functions": (_req(functions=[TOOL["function"]]), 400, "functions is not supported", "functions"),
    "function_call": (_req(function_call={"name": "get_weather"}), 400, "function_call is not", "function_call"),
    "response_format json_object": (
        _req(response_format={"type": "json_object"}),
        400,
        "response_format 'json_object' is not supported",
        "response_format",
    ),
    "response_format json_schema": (
        _req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
        400,
        "response_format 'json_schema' is not supported",
        "response_format",
    ),
    "presence_penalty": (_req(presence_penalty=1.5), 400, "presence_penalty is not supported", "presence_penalty"),
    "frequency_penalty": (_req(frequency_penalty=-0.5), 400, "frequency_penalty is not", "frequency_penalty"),
    "logit_bias": (_req(logit_bias={"5": -100}), 400, "logit_bias is not supported", "logit_bias"),
    "an assistant message with tool_calls": (
        _req(messages=[{"role": "user", "content": "Weather?"}, TOOL_CALL, {"role": "user", "content": "And?"}]),
        400,
        "tool_calls in a message is not supported",
        "messages[1].tool_calls",
    ),
    "a tool message": (
        _req(messages=[{"role": "user", "content": "Weather?"}, TOOL_RESULT]),
        400,
        "role 'tool'",
        "messages[1].role",
    ),
    "stream_options without stream": (_req(stream_options={"include_usage": True}), 400, "stream: true", None),
    "max_tokens and max_completion_tokens differ": (
        _req(max_tokens=3, max_completion_tokens=5),
        400,
        "max_tokens (3) and max_completion_tokens (5) differ",
        None,
    ),
    "image in a system message": (
        _req(
            messages=[
                {"role": "system", "content": [{"type": "image_url", "image_url": {"url": data_url(PNG)}}]},
                {"role": "user", "content": "hi"},
            ]
        ),
        400,
        "only be sent in user messages",
        "messages[0].content[0].image_url",
    ),
    "megabytes of text": (
        _req(messages=[{"role": "user", "content": "red circle " * 500_000}]),
        400,
        "characters of text",
        "messages",
    ),
    "unknown model": (_req(model="gpt-4o"), 404, "gpt-4o", "model"),
    "max_tokens over the server limit": (_req(max_tokens=MAX_TOKENS + 1), 400, f"limit of {MAX_TOKENS}", "max_tokens"),
    "max_completion_tokens over the limit": (
        _req(max_tokens=None, max_completion_tokens=10_000),
        400,
        "10000",
        "max_completion_tokens",
    ),
    "prompt + max_tokens over the context": (
        _req(messages=[{"role": "user", "content": "a" * 3913}], max_tokens=20),  # 4086 prompt tokens
        400,
        "context of 4096 tokens",
        "max_tokens",
    ),
    "bad base64": (
        _req(messages=[_img("data:image/png;base64,@@@@")]),
        400,
        "base64",
        "messages[0].content[0].image_url",
    ),
    "not base64 encoded": (_req(messages=[_img("data:image/png,abc")]), 400, "base64", None),
    "empty image": (_req(messages=[_img("data:image/png;base64,")]), 400, "empty", None),
    "not an image": (_req(messages=[_img(data_url(b"hello world" * 10))]), 400, "cannot decode", None),
    "truncated PNG": (_req(messages=[_img(data_url(image_bytes(64, 64)[:500]))]), 400, "cannot decode", None),
    "unsupported mime": (_req(messages=[_img(data_url(PNG, "text/plain"))]), 400, "unsupported image type", None),
    "unsupported format (BMP)": (_req(messages=[_img(data_url(_bmp(), "image/png"))]), 400, "BMP", None),
    "decompression bomb": (
        _req(messages=[_img(data_url(_bomb_png(30_000, 30_000)))]),
        413,
        f"900000000 pixels is over the limit of {MAX_IMAGE_PIXELS} pixels; downscale it first",  # ours, not Pillow's
        "messages[0].content[0].image_url",
    ),
    "over the pixel limit": (
        _req(messages=[_img(data_url(_solid_png(1100, 1000)))]),
        413,
        f"limit of {MAX_IMAGE_PIXELS} pixels",
        None,
    ),
    "over the byte limit": (
        _req(messages=[_img(data_url(image_bytes(400, 400)))]),
        413,
        f"limit of {MAX_IMAGE_BYTES} bytes",
        None,
    ),
    "too many images": (
        _req(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(PNG)}}] * (MAX_IMAGES + 1),
                }
            ]
        ),
        400,
        f"at most {MAX_IMAGES}",
        "messages",
    ),
    "file URL": (_req(messages=[_img("file:///etc/passwd")]), 400, "data: URL", None),
    "remote URL to loopback": (_req(messages=[_img("http://127.0.0.1:1/x.png")]), 400, "non-public", None),
    "remote URL to localhost": (_req(messages=[_img("http://localhost/x.png")]), 400, "non-public", None),
    "remote URL to IPv6 loopback": (_req(messages=[_img("http://[::1]/x.png")]), 400, "non-public", None),
    "remote URL to cloud metadata": (
        _req(messages=[_img("http://169.254.169.254/latest/meta-data")]),
        400,
        "non-public",
        None,
    ),
    "remote URL to a private network": (_req(messages=[_img("https://10.1.2.3/x.png")]), 400, "non-public", None),
    # urlsplit's ValueErrors (a port out of range, an unclosed IPv6 bracket) were 500s
    "remote URL with a port out of range": (
        _req(messages=[_img("http://example.com:99999/x.png")]),
        400,
        "not a valid URL",
        "messages[0].content[0].image_url",
    ),
    "remote URL with an unclosed IPv6 bracket": (_req(messages=[_img("http://[::1/x.png")]), 400, "not a valid", None),
    "remote URL with an empty host label": (_req(messages=[_img("http://a..b/x.png")]), 400, "cannot resolve", None),
    "roles out of order for the template": (_req(messages=[{"role": "assistant", "content": "x"}] * 3), None, "", None),
    # a trailing assistant message was rendered as a finished answer with no generation prompt after it: the model
    # wrote on past its end-of-sequence token
    "the last message an assistant's": (
        _req(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A small"}]),
        400,
        "the last message must be the user's",
        "messages",
    ),
    "the last message a developer's": (  # named as sent (it said "message 1 has role 'system'")
        _req(messages=[{"role": "user", "content": "Hi"}, {"role": "developer", "content": "Be brief."}]),
        400,
        "message 1 has role 'developer'",
        "messages",
    ),
    "no user message": (
        _req(messages=[{"role": "system", "content": "Be brief."}]),
        400,
        "no user message",
        "messages",
    ),
    "two system messages": (
        _req(messages=[{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, _img(data_url(PNG))]),
        400,
        "message 1: role must be",  # the second one (it said "message 0")
        "messages",
    ),
    # strict types, as OpenAI's API: no guessing what "5", 5.0, true or "yes" meant
    "max_tokens a string": (_req(max_tokens="5"), 400, "integer", "max_tokens"),
    "max_tokens a float": (_req(max_tokens=5.0), 400, "integer", "max_tokens"),
    "max_tokens a boolean": (_req(max_tokens=True), 400, "integer", "max_tokens"),
    "stream a string": (_req(stream="yes"), 400, "boolean", "stream"),
    "stream a number": (_req(stream=1), 400, "boolean", "stream"),
}


def _good(server) -> None:  # noqa: ANN001
    r = server.post(_req(messages=[_img(data_url(PNG), "ok?")], max_tokens=2, temperature=0))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_then_good(server, name: str) -> None:  # noqa: ANN001
    body, status, text, param = CASES[name]
    r = server.post(body)
    if status is None:  # whatever the template makes of it, never a 5xx
        assert r.status_code < 500, r.text
    else:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert text in err["message"], err
        assert err["type"] in ("invalid_request_error", "not_found_error")
        if param is not None:
            assert err["param"] == param, err
    _good(server)


def test_numbers_and_upper_case_data_urls_are_fine(server) -> None:  # noqa: ANN001
    """Strict types still take an integer where a number is asked; URL schemes are case-insensitive."""
    r = server.post(_req(temperature=1, top_p=1, repetition_penalty=1, max_tokens=2, seed=0))
    assert r.status_code == 200, r.text
    r = server.post(_req(messages=[_img("DATA" + data_url(PNG)[4:])], max_tokens=2))
    assert r.status_code == 200, r.text


def test_a_prompt_over_the_context_is_not_blamed_on_max_tokens(server) -> None:  # noqa: ANN001
    r = server.post(_req(messages=[{"role": "user", "content": "b" * 5000}], max_tokens=20))
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "messages" and "leaves no room" in err["message"], err


def test_no_body_is_read_outside_the_api(server) -> None:  # noqa: ANN001
    """Outside /v1/ (no key needed there) a body is never read: the 405 comes before the 60 MB announced arrive
    (before, the guard read up to 64 MiB into memory first)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000000\r\n\r\n{"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 405")
    _good(server)


def test_context_error_names_both_numbers(server) -> None:  # noqa: ANN001
    r = server.post(_req(messages=[{"role": "user", "content": "b" * 3913}], max_tokens=20))
    msg = r.json()["error"]["message"]
    prompt = int(msg.split("prompt of ")[1].split()[0])
    assert 4096 - 20 < prompt < 4096 and "max_tokens 20" in msg and "at most 10" in msg, msg


def test_http_level_errors(server) -> None:  # noqa: ANN001
    h = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{server.url}/v1/chat/completions", headers=h).status_code == 405
    r = httpx.get(f"{server.url}/v1/nothing-here", headers=h)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(
        f"{server.url}/v1/chat/completions", content=json.dumps(_req()), headers={**h, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"], r.text
    assert httpx.head(f"{server.url}/health").status_code == 200
    r = httpx.get(f"{server.url}/v1/models/{server.model}", headers=h)
    assert r.status_code == 200 and r.json()["id"] == server.model, r.text
    r = httpx.get(f"{server.url}/v1/models/gpt-4o", headers=h)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    # a body announced over the limit is refused before it is read
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + API_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    _good(server)


@pytest.mark.parametrize(
    "extreme",
    [
        {"temperature": 1e-300},  # logits / temperature would overflow: greedy, like 0
        {"temperature": 1.0, "top_p": 1e-300},  # below float32's resolution: the top token stays
        {"temperature": 1.0, "repetition_penalty": 1e-300},  # seen logits would become +-inf
        {"temperature": 1.0, "repetition_penalty": 10.0, "top_k": 1},
    ],
)
def test_extreme_sampling_values_answer(server, extreme: dict) -> None:  # noqa: ANN001
    r = server.post(_req(max_tokens=8, seed=0, **extreme))
    assert r.status_code == 200, r.text
    _good(server)


def test_tiny_temperature_is_greedy(server) -> None:  # noqa: ANN001
    replies = [server.post(_req(max_tokens=8, temperature=t)).json() for t in (0, 1e-9)]
    assert replies[0]["choices"][0]["message"]["content"] == replies[1]["choices"][0]["message"]["content"]


def test_nulls_mean_the_defaults(server) -> None:  # noqa: ANN001
    nulls = {k: None for k in ("temperature", "top_p", "n", "stream", "top_k", "repetition_penalty", "logprobs")}
    r = server.post(_req(**nulls, seed=0))
    assert r.status_code == 200, r.text
    r = server.post(_req(stream=True, stream_options={"include_usage": None}))
    assert r.status_code == 200 and "data: [DONE]" in r.text, r.text


def _answer(server, **kw) -> str:  # noqa: ANN001, ANN003
    r = server.post(_req(max_tokens=8, **kw))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_harmless_values_of_unsupported_fields_are_accepted(server) -> None:  # noqa: ANN001
    """The defaults of the refused fields (and fields the server does not know) change nothing: same answer."""
    harmless = {
        "tools": [TOOL],
        "tool_choice": "none",  # tools offered but not to be called: a plain answer is what was asked for
        "functions": [],
        "function_call": "none",
        "response_format": {"type": "text"},
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "parallel_tool_calls": True,  # unknown to this server: ignored
        "user": "someone",
        "metadata": {"a": "b"},
    }
    plain = _answer(server, temperature=0)
    assert _answer(server, temperature=0, **harmless) == plain
    nulls = dict.fromkeys(harmless, None)
    assert _answer(server, temperature=0, **nulls) == plain
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "tool_calls": []}]
    assert server.post(_req(messages=[*turns, {"role": "user", "content": "Bye"}])).status_code == 200
    # top_k -1 means no top-k filtering (vLLM's convention), as 0 does
    assert _answer(server, temperature=1.0, seed=3, top_k=-1) == _answer(server, temperature=1.0, seed=3, top_k=0)
    # a negative seed is a seed (int64, as vLLM and the CLI take it; it was refused): the same draw each time
    assert _answer(server, temperature=1.0, seed=-1) == _answer(server, temperature=1.0, seed=-1)


def test_error_codes(server) -> None:  # noqa: ANN001
    """OpenAI's error codes for a prompt over the context and an unknown model; none for the other errors."""
    too_long = [
        _req(messages=[{"role": "user", "content": "a" * 3913}], max_tokens=20),  # 4086 prompt tokens + max_tokens
        _req(messages=[{"role": "user", "content": "a " * 4200}], max_tokens=None),  # the prompt alone
        _req(messages=[{"role": "user", "content": "red circle " * 500_000}]),  # too many characters to tokenize
    ]
    for body in too_long:
        r = server.post(body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    r = server.post(_req(model="gpt-4o"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    r = httpx.get(f"{server.url}/v1/models/gpt-4o", headers=server.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    r = server.post(_req(max_tokens=MAX_TOKENS + 1))  # over the server's limit, not the context's
    assert r.status_code == 400 and r.json()["error"]["code"] is None, r.text


def test_text_only_max_tokens_over_the_context_names_max_tokens(pipe) -> None:  # noqa: ANN001
    from llavakit.serve.config import ServeConfig
    from llavakit.serve.prepare import ApiError, prepare
    from llavakit.serve.schemas import ChatCompletionRequest

    context = pipe.model.config.text.context_length
    body = ChatCompletionRequest.model_validate(_req(max_tokens=context + 1))
    with pytest.raises(ApiError) as e:
        prepare(body, pipe, ServeConfig(model_name="tiny-llava"))
    assert e.value.param == "max_tokens" and "image" not in str(e.value) and str(context) in str(e.value)


def test_usage_is_null_in_every_chunk_but_the_last(server) -> None:  # noqa: ANN001
    r = server.post(_req(stream=True, stream_options={"include_usage": True}, max_tokens=4))
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert len(chunks) >= 3 and all("usage" in c for c in chunks), chunks
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_an_image_the_model_cannot_preprocess_is_a_400(tmp_path) -> None:
    """LLaVA-1.5 pads to a square: a 1 x 3000 image would vanish into the padding (refused by name, not a 500)."""
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.serve.config import ServeConfig
    from llavakit.serve.prepare import ApiError, _open
    from llavakit.tiny import write_tiny_checkpoint

    proc = LlavaProcessor.from_pretrained(write_tiny_checkpoint(tmp_path / "m", "llava"))
    where = "messages[0].content[0].image_url"
    assert _open([(where, _solid_png(30, 20))], ServeConfig(), proc)[0].size == (30, 20)
    with pytest.raises(ApiError) as e:
        _open([(where, _solid_png(1, 3000))], ServeConfig(), proc)
    assert e.value.status == 400 and e.value.param == where and "vanish" in str(e.value)


def test_images_plus_max_tokens_over_the_context_names_max_tokens(pipe) -> None:  # noqa: ANN001
    from llavakit.serve.config import ServeConfig
    from llavakit.serve.prepare import ApiError, prepare
    from llavakit.serve.schemas import ChatCompletionRequest

    context = pipe.model.config.text.context_length
    body = ChatCompletionRequest.model_validate(_req(messages=[_img(data_url(PNG))], max_tokens=context - 2))
    with pytest.raises(ApiError) as e:
        prepare(body, pipe, ServeConfig(model_name="tiny-llava"))
    assert e.value.param == "max_tokens" and "lower max_tokens to at most" in str(e.value), str(e.value)


def test_the_openapi_schema_builds_without_warnings(pipe) -> None:  # noqa: ANN001
    """/docs logged "Duplicate Operation ID health_health_head" (one route for GET and HEAD)."""
    import warnings

    from fastapi.testclient import TestClient

    from llavakit.serve.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TestClient(create_app(pipe)).get("/openapi.json").status_code == 200
