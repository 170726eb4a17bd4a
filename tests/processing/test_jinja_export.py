"""Named templates exported as Jinja chat templates render exactly as the named templates, in our renderer and in
transformers' apply_chat_template; processors save them so transformers / vLLM can chat with our checkpoints."""

from __future__ import annotations

import pytest

from llavakit.processing.hf_messages import hf_messages
from llavakit.processing.jinja_export import exported_name, jinja_template, template_name
from llavakit.processing.templates import TEMPLATES, render, render_chat_template

IMG = {"type": "image"}
URL = {"type": "image_url", "image_url": {"url": "file:///x.png"}}
VID = {"type": "video"}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


CONVERSATIONS = {
    "one image": [{"role": "user", "content": [IMG, _text("What is it?")]}],
    "string with placeholder": [{"role": "user", "content": "<image>\nWhat is it?"}],
    "placeholder mid-string": [{"role": "user", "content": "Compare <image> and <image> please"}],
    "image after text": [{"role": "user", "content": [_text("Look:"), URL, _text("  now ")]}],
    "two images and a video": [{"role": "user", "content": [IMG, VID, URL, _text("Both?")]}],
    "images only": [{"role": "user", "content": [IMG]}],
    "multi-turn": [
        {"role": "user", "content": [IMG, _text("What is it?")]},
        {"role": "assistant", "content": " A cat. "},
        {"role": "user", "content": "Colour?"},
    ],
    "answer last": [
        {"role": "user", "content": [IMG, _text("What is it?")]},
        {"role": "assistant", "content": [_text("A"), _text("cat.")]},
    ],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [IMG, _text("Hi")]}],
    "empty system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
    "system in parts, two turns": [
        {"role": "system", "content": [_text("Answer"), _text("tersely.")]},
        {"role": "user", "content": [IMG, _text("One?")]},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": [_text(" Two? ")]},
    ],
    "none content": [{"role": "user", "content": None}],
    "no messages": [],
}


# plain (stage 1) is one caption per sample: its multi-question conversations are not cases
CASES = [(n, c) for n in sorted(TEMPLATES) for c in sorted(CONVERSATIONS)
         if n != "plain" or sum(m["role"] == "user" for m in CONVERSATIONS[c]) <= 1]  # fmt: skip


@pytest.mark.parametrize(("name", "case"), CASES)
@pytest.mark.parametrize("gen", [True, False])
def test_exported_template_renders_as_the_named_one(name: str, case: str, gen: bool) -> None:
    messages = CONVERSATIONS[case]
    want = render(messages, name, gen)
    assert render_chat_template(jinja_template(name), hf_messages(messages, jinja_template(name)), gen) == want


def _hf_tokenizer():  # noqa: ANN202
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_transformers_renders_the_exported_template_as_we_do(name: str) -> None:
    tok = _hf_tokenizer()
    for case in ("multi-turn", "system", "two images and a video", "string with placeholder"):
        messages = CONVERSATIONS[case]
        if name == "plain" and case == "multi-turn":
            continue
        source = jinja_template(name)
        ref = tok.apply_chat_template(
            hf_messages(messages, source), chat_template=source, tokenize=False, add_generation_prompt=True
        )
        assert ref == render(messages, name, True), (name, case)


def test_other_roles_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="role must be 'user' or 'assistant'.*got tool"):
        render_chat_template(jinja_template("vicuna_v1"), [{"role": "tool", "content": "x"}], True)


def test_the_mark_names_the_template_and_an_edited_export_is_not_ours() -> None:
    assert all(template_name(jinja_template(n)) == n == exported_name(jinja_template(n)) for n in TEMPLATES)
    edited = jinja_template("vicuna_v1").replace('"USER: "', '"Human: "')
    assert template_name(edited) == "vicuna_v1" and exported_name(edited) is None
    assert template_name("{% for m in messages %}{{ m['content'] }}{% endfor %}") is None
    assert template_name(None) is None


@pytest.mark.parametrize(("family", "template"), [("llava", None), ("llava_next", "mistral_instruct"),
                                                  ("llava_onevision", None)])  # fmt: skip
def test_saved_processors_chat_in_transformers_as_in_llavakit(tmp_path, family: str, template: str | None) -> None:
    """A processor without a Jinja template (our trainings, converted originals) saves its named template as
    chat_template.jinja: transformers' AutoProcessor then renders the prompts we render, and our reload renders
    by name again (the same template, not the Jinja copy)."""
    from transformers import AutoProcessor, AutoTokenizer

    from llavakit.processing.processor import LlavaProcessor
    from llavakit.tiny import char_tokenizer, tiny_config

    ours = LlavaProcessor.from_parts(char_tokenizer(), tiny_config(family), template=template)
    assert ours.chat_template is None
    ours.save_pretrained(tmp_path)
    name = ours.template
    assert template_name((tmp_path / "chat_template.jinja").read_text()) == name
    back = LlavaProcessor.from_pretrained(tmp_path)
    assert back.chat_template is None and back.template == name
    edited = tmp_path / "edited"
    ours.save_pretrained(edited)
    jinja = edited / "chat_template.jinja"
    jinja.write_text(jinja.read_text().replace("user", "person"))  # edited by hand, mark kept: rendered as Jinja
    assert LlavaProcessor.from_pretrained(edited).chat_template == jinja.read_text()
    readers = [AutoTokenizer.from_pretrained(tmp_path)]  # what vLLM renders chat prompts with
    if family != "llava_onevision":  # its video processor needs torchvision, which is not installed here
        readers.append(AutoProcessor.from_pretrained(tmp_path))
    for hf in readers:
        for case in ("multi-turn", "system", "one image"):
            messages = CONVERSATIONS[case]
            ref = hf.apply_chat_template(
                hf_messages(messages, jinja_template(name)), add_generation_prompt=True, tokenize=False
            )
            assert ref == back.apply_chat_template(messages) == ours.apply_chat_template(messages), (family, case)
