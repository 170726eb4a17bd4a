"""Text that is not valid Unicode (a lone surrogate) is refused by the pipeline with a ValueError naming where it
is, before the tokenizer sees it (whose own error is a bare ``TypeError: TextInputSequence must be str``)."""

from __future__ import annotations

import pytest

import llavakit
from llavakit.pipeline import check_text
from llavakit.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return llavakit.load(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny"))


STRING = [{"role": "user", "content": "hi \udcff there"}]
PART = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "ab\ud800"}]}]


@pytest.mark.parametrize("call", ["chat", "stream", "reply", "batch", "check_request"])
def test_lone_surrogate_is_a_value_error_naming_its_position(pipe, call):
    for messages, where, code, pos in ((STRING, "message 0", "DCFF", 3), (PART, "message 1, part 0", "D800", 2)):
        run = {
            "chat": lambda m: pipe.chat(m, max_new_tokens=2),
            "stream": lambda m: list(pipe.stream(m, max_new_tokens=2)),
            "reply": lambda m: pipe.reply(m, max_new_tokens=2),
            "batch": lambda m: pipe.batch([[{"role": "user", "content": "fine"}], m], max_new_tokens=2),
            "check_request": lambda m: pipe.check_request(m, max_new_tokens=2),
        }[call]
        with pytest.raises(ValueError, match=rf"^{where}: the text is not valid Unicode: lone surrogate U\+{code} "
                                             rf"at position {pos} .*remove it") as info:  # fmt: skip
            run(messages)
        assert "\n" not in str(info.value)
    pipe.reset()
    assert isinstance(pipe.chat([{"role": "user", "content": "hi there \U0001f600"}], max_new_tokens=2), str)


def test_valid_text_passes_unchanged():
    for text in ("", "plain", "caf\u00e9 \U0001f600 \u4e2d\u6587", "\ufffd"):
        assert check_text(text, "x") == text
