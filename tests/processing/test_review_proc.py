"""Review of the processor and templates: round trips, Llama-3 system trimming and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llavakit.config import LlavaConfig
from llavakit.processing.jinja_export import jinja_template
from llavakit.processing.processor import LlavaProcessor
from llavakit.processing.templates import render, render_chat_template
from llavakit.tiny import char_tokenizer, tiny_config

# Llama-3-Instruct's chat template (what LLaVA-NeXT's conv_llava_llama_3 renders with), BOS left to the tokenizer
LLAMA3_CHAT = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_onevision_without_downsampling_saves_and_reloads(tmp_path: Path) -> None:
    """vision_aspect_ratio "anyres" (no max): save_pretrained wrote "anyres_max_None", which from_pretrained
    could not parse (int("None"))."""
    d = tiny_config("llava_onevision").to_hf()
    d["vision_aspect_ratio"] = "anyres"
    config = LlavaConfig.from_hf(d)
    assert config.max_tiles is None
    ours = LlavaProcessor.from_parts(char_tokenizer(), config)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["vision_aspect_ratio"] == "anyres"
    again = LlavaProcessor.from_pretrained(tmp_path)
    assert again.geometry == ours.geometry and again.geometry.max_tiles is None


def test_llama3_trims_the_system_message_as_its_chat_template_does() -> None:
    msgs = [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": " <image>\nWhat? "}]
    want = render_chat_template(LLAMA3_CHAT, msgs, True)
    assert want.startswith("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert render(msgs, "llama3") == want
    assert render_chat_template(jinja_template("llama3"), msgs, True) == want


@pytest.mark.parametrize("text", [None, [], [1], 5])
def test_bad_text_is_one_clear_error(text: object) -> None:
    proc = LlavaProcessor.from_parts(char_tokenizer(), tiny_config("llava"))
    with pytest.raises(ValueError, match="text must be a prompt string or a non-empty list"):
        proc(text=text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hello", "messages must be a list"),
        (["hello"], "message 0 must be a dict"),
        ([{"role": "user", "content": 5}], "content must be a string or a list of parts"),
        ([{"role": "user", "content": {"type": "text", "text": "x"}}], "content must be a string or a list of parts"),
    ],
)
def test_bad_messages_are_one_clear_error(messages: object, message: str) -> None:
    proc = LlavaProcessor.from_parts(char_tokenizer(), tiny_config("llava"))
    with pytest.raises(ValueError, match=message):
        proc.apply_chat_template(messages)  # type: ignore[arg-type]
