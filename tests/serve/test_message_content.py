"""Message content OpenAI refuses: null, missing or an empty list is a 400 naming ``messages[i].content`` (before,
a user message without content got a 200: the model answered an empty prompt). An empty string is accepted."""

from __future__ import annotations

import pytest

USER = {"role": "user", "content": "Hi"}


def _req(*messages: dict) -> dict:
    return {"model": "tiny-llava", "messages": list(messages), "max_tokens": 2, "temperature": 0}


CASES = {
    # name: (messages, index of the message refused, text the error must hold)
    "user null": ([{"role": "user", "content": None}], 0, "is null (or missing): a user message must have content"),
    "user missing": ([{"role": "user"}], 0, "is null (or missing)"),
    "user empty list": ([{"role": "user", "content": []}], 0, "is an empty list: a user message must have content"),
    "a later user null": ([USER, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": None}], 2, ""),
    "system null": ([{"role": "system", "content": None}, USER], 0, "a system message must have content"),
    "developer empty list": ([{"role": "developer", "content": []}, USER], 0, "a developer message must have"),
    "assistant null": (
        [USER, {"role": "assistant", "content": None}, USER],
        1,
        "an assistant message must have content; send the earlier answer as text (tool calls are not supported)",
    ),
    "assistant empty list": ([USER, {"role": "assistant", "content": []}, USER], 1, "is an empty list"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_null_or_empty_content_is_a_400_naming_the_message(server, name: str) -> None:  # noqa: ANN001
    messages, i, text = CASES[name]
    r = server.post(_req(*messages))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == f"messages[{i}].content", err
    assert f"messages[{i}].content is " in err["message"] and text in err["message"], err
    r = server.post(_req(USER))  # the server answers on
    assert r.status_code == 200, r.text


def test_empty_strings_are_accepted_as_openai_accepts_them(server) -> None:  # noqa: ANN001
    turns = [
        {"role": "system", "content": ""},
        USER,
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
    ]
    r = server.post(_req(*turns))
    assert r.status_code == 200, r.text
    parts = [{"type": "text", "text": ""}]  # a list with one (empty) part is content
    assert server.post(_req({"role": "user", "content": parts})).status_code == 200


def test_tool_calls_are_still_named_first(server) -> None:  # noqa: ANN001
    """An assistant message with null content beside tool_calls (OpenAI's form) is refused for its tool_calls."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    r = server.post(_req(USER, {"role": "assistant", "content": None, "tool_calls": [call]}, USER))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].tool_calls", r.text
