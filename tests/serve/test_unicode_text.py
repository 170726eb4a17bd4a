"""A lone surrogate in a message's text (JSON "\\udcff" without its pair) is a one-line 400 naming the field and
the position, streaming or not; the server answers the next request as usual."""

from __future__ import annotations

import json

import pytest

from conftest import MODEL


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "content,param,code,pos",
    [
        ('"hi \\udcff there"', "messages[0].content", "DCFF", 3),
        ('[{"type": "text", "text": "ab\\ud800"}]', "messages[0].content[0].text", "D800", 2),
    ],
)
def test_lone_surrogate_is_a_400_naming_it(server, stream, content, param, code, pos) -> None:  # noqa: ANN001
    body = f'{{"model": "{MODEL}", "max_tokens": 2, "stream": {json.dumps(stream)}, '
    body += f'"messages": [{{"role": "user", "content": {content}}}]}}'
    r = server.post(body.encode())
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert f"not valid Unicode: lone surrogate U+{code} at position {pos}" in err["message"], err
    assert "\n" not in err["message"]
    ok = server.post({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi \U0001f600"}]})
    assert ok.status_code == 200, ok.text
