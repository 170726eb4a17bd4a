"""An unknown conversation template name is refused when the processor is built or loaded, not at the first chat."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from llavakit.processing.processor import TEMPLATE_FILE, LlavaProcessor
from llavakit.processing.templates import TEMPLATES, render
from llavakit.tiny import char_tokenizer, tiny_config

KNOWN = ", ".join(sorted(TEMPLATES))
JINJA = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
MSGS = [{"role": "user", "content": "<image>\nhi"}]


def _saved(tmp_path: Path, template: str = "llava_1_5_hf", jinja: str | None = None) -> Path:
    """A processor directory saved by llavakit; ``jinja`` replaces the exported chat template (a checkpoint's own)."""
    out = tmp_path / "proc"
    LlavaProcessor.from_parts(char_tokenizer(), tiny_config("llava"), template=template).save_pretrained(out)
    if jinja is not None:
        (out / "chat_template.jinja").write_text(jinja)
    return out


def test_from_parts_refuses_an_unknown_name_at_once() -> None:
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna_v2'; choose one of ") as err:
        LlavaProcessor.from_parts(char_tokenizer(), tiny_config("llava"), template="vicuna_v2")
    assert KNOWN in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown conversation template 3"):
        LlavaProcessor.from_parts(char_tokenizer(), tiny_config("llava"), template=3)  # type: ignore[arg-type]


def test_from_pretrained_refuses_an_unknown_name_at_once(tmp_path: Path) -> None:
    d = _saved(tmp_path)
    with pytest.raises(ValueError, match=f"unknown conversation template 'vicuna'; choose one of {KNOWN}$"):
        LlavaProcessor.from_pretrained(d, template="vicuna")
    # with a Jinja chat template, "chat_template" is offered too
    d = _saved(tmp_path / "j", jinja=JINJA)
    with pytest.raises(ValueError, match=f"choose one of {KNOWN}, or 'chat_template' \\(the checkpoint's Jinja"):
        LlavaProcessor.from_pretrained(d, template="vicuna")


def test_an_unknown_name_in_the_checkpoint_file_names_the_file(tmp_path: Path) -> None:
    d = _saved(tmp_path, template="mistral_instruct")
    (d / TEMPLATE_FILE).write_text(json.dumps({"template": "mistral_v9"}))
    with pytest.raises(ValueError, match=rf"{TEMPLATE_FILE}: unknown conversation template 'mistral_v9'; choose"):
        LlavaProcessor.from_pretrained(d)
    assert LlavaProcessor.from_pretrained(d, template="vicuna_v1").template == "vicuna_v1"  # the caller's wins


def test_checkpoints_with_a_jinja_chat_template_still_load(tmp_path: Path) -> None:
    d = _saved(tmp_path, jinja=JINJA)
    assert not (d / TEMPLATE_FILE).exists()  # the family's default: no named template in the checkpoint
    proc = LlavaProcessor.from_pretrained(d)
    assert proc.chat_template == JINJA and proc.apply_chat_template(MSGS) == "user: <image>\nhi\n"
    assert LlavaProcessor.from_pretrained(d, template="chat_template").template == "chat_template"
    named = LlavaProcessor.from_pretrained(d, template="llava_v1")  # a name asked for renders that template
    assert named.chat_template is None and named.apply_chat_template(MSGS) == render(MSGS, "llava_v1", True)


def test_chat_template_name_needs_a_jinja_template(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="template 'chat_template' means the checkpoint's Jinja chat template, which"):
        LlavaProcessor.from_parts(char_tokenizer(), tiny_config("llava"), template="chat_template")
    # our own export of a named template stands for that name: "chat_template" renders with it
    d = _saved(tmp_path, template="llava_v1")
    proc = LlavaProcessor.from_pretrained(d, template="chat_template")
    assert proc.template == "llava_v1" and proc.chat_template is None


@pytest.mark.parametrize(
    ("text_config", "want"),
    [
        ({"model_type": "mistral"}, "mistral_instruct"),  # llava-v1.6-mistral-7b-hf before it shipped a template
        ({"model_type": "llama", "vocab_size": 128320}, "llama3"),
        ({"model_type": "llama", "vocab_size": 64064}, "chatml_direct"),
        ({"model_type": "llama", "vocab_size": 32064}, "vicuna_v1"),  # the family's default: kept, no warning
        ({}, "vicuna_v1"),
    ],
)
def test_a_checkpoint_without_any_template_gets_its_decoders(tmp_path: Path, text_config: dict, want: str) -> None:
    out = tmp_path / "next"
    LlavaProcessor.from_parts(char_tokenizer(), tiny_config("llava_next")).save_pretrained(out)
    (out / "chat_template.jinja").unlink()  # as transformers wrote processors before chat templates
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    (out / "config.json").write_text(json.dumps({**config, "model_type": "llava_next", "text_config": text_config}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc = LlavaProcessor.from_pretrained(out)
    assert proc.template == want and proc.chat_template is None
    said = [str(w.message) for w in caught if "ships no chat template" in str(w.message)]
    assert said == ([] if want == "vicuna_v1" else [f"{out} ships no chat template: prompts use {want!r}, guessed "
                    f"from its {text_config['model_type']} decoder; pass template=NAME (from_pretrained) to choose "
                    "another"])  # fmt: skip
    assert LlavaProcessor.from_pretrained(out, template="vicuna_v1").template == "vicuna_v1"  # a name still wins
