"""Conversation templates: exact golden strings, answer spans, and HF chat templates rendered like transformers."""

from __future__ import annotations

import pytest

from llavakit.processing.templates import (
    TEMPLATES,
    render,
    render_chat_template,
    render_chat_template_with_spans,
    render_with_spans,
)

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
LLAVA_V1 = VICUNA.replace("curious user", "curious human").replace("user's", "human's")
LLAMA3 = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
MSGS = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "Color?"},
]
GOLDEN = {
    "vicuna_v1": f"{VICUNA} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:",
    "llava_v1": f"{LLAVA_V1} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:",
    "llava_1_5_hf": "USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:",
    "mistral_instruct": "[INST] <image>\nWhat is it? [/INST] A cat.</s>[INST] Color? [/INST]",
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?"
    "<|im_end|><|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nColor?<|im_end|><|im_start|>assistant\n",
    "qwen_1_5": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?"
    "<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nColor?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama3": f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3}<|eot_id|><|start_header_id|>user"
    "<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA cat."
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nColor?<|eot_id|><|start_header_id|>assistant"
    "<|end_header_id|>\n\n",
}
ANSWER = {
    "vicuna_v1": " A cat.</s>",
    "llava_v1": " A cat.</s>",
    "llava_1_5_hf": " A cat.</s>",
    "mistral_instruct": " A cat.</s>",
    "chatml_direct": "A cat.<|im_end|>",
    "qwen_1_5": "A cat.<|im_end|>\n",
    "llama3": "A cat.<|eot_id|>",
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_strings_and_answer_spans(name):
    text, spans = render_with_spans(MSGS, name)
    assert text == GOLDEN[name]
    assert [text[a:b] for a, b in spans] == [ANSWER[name]]
    # a single question: the generation prompt ends the text
    single = render(MSGS[:1], name)
    assert GOLDEN[name].startswith(single) and "<image>\nWhat is it?" in single
    # the answer span starts exactly where the generation prompt ends: training supervises what inference generates
    assert text[: spans[0][0]] == single


def test_every_template_has_a_golden():
    assert set(TEMPLATES) == set(GOLDEN) | {"plain"}


def test_spans_cover_exactly_the_answers_in_long_chats():
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "Compare."},
            ],
        },  # fmt: skip
        {"role": "assistant", "content": [{"type": "text", "text": "Left is red."}]},
        {"role": "user", "content": "And right?"},
        {"role": "assistant", "content": "Blue."},
    ]
    for name in GOLDEN:
        text, spans = render_with_spans(msgs, name, add_generation_prompt=True)
        got = [text[a:b] for a, b in spans]
        lead, suffix = ANSWER[name].split("A cat.")
        assert got == [lead + "Left is red." + suffix, lead + "Blue." + suffix], name
        assert text.endswith(suffix)  # the last message is an answer: no generation prompt
        assert text.count("<image>\n") == 2
        assert [a for a, _ in spans] == sorted(a for a, _ in spans) and spans[0][1] <= spans[1][0]


def test_vicuna_two_images_and_a_video_first_then_text():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image"}, {"type": "video"}]}]
    assert render(msgs, "qwen_1_5").endswith("user\n<image>\n<video>\nWhat?<|im_end|>\n<|im_start|>assistant\n")
    # a string content keeps the placeholders where the caller wrote them
    assert (
        render([{"role": "user", "content": "Look: <image> ok"}], "llava_1_5_hf") == "USER: Look: <image> ok ASSISTANT:"
    )


def test_system_message_replaces_the_default():
    msgs = [{"role": "system", "content": "Be brief."}, MSGS[0]]
    assert render(msgs, "vicuna_v1") == "Be brief. USER: <image>\nWhat is it? ASSISTANT:"
    assert render(msgs, "qwen_1_5").startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert render(msgs, "mistral_instruct") == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nWhat is it? [/INST]"
    assert render(msgs, "llava_1_5_hf") == "Be brief. USER: <image>\nWhat is it? ASSISTANT:"


def test_plain_template_is_image_then_caption():
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ignored"}]},
            {"role": "assistant", "content": "a red circle"}]  # fmt: skip
    text, spans = render_with_spans(msgs, "plain", add_generation_prompt=False)
    assert text == "<image>a red circle\n" and [text[a:b] for a, b in spans] == ["a red circle\n"]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna'.*llama3.*vicuna_v1"):
        render(MSGS, "vicuna")
    with pytest.raises(ValueError, match="role must be 'user' or 'assistant'"):
        render([{"role": "tool", "content": "x"}], "vicuna_v1")
    with pytest.raises(ValueError, match="unsupported content part"):
        render([{"role": "user", "content": [{"type": "audio"}]}], "vicuna_v1")


# the llava-1.5-hf chat template (as shipped in llava-hf/llava-1.5-7b-hf), with its {% generation %} block
LLAVA15_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
CHAT = [
    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]},
]
# exercises the sandbox helpers: namespace, loop controls, tojson (non-ASCII kept), raise_exception, bos_token
FANCY_TEMPLATE = """{{ bos_token }}{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}
    {% set ns.n = ns.n + 1 %}
    {% if m['role'] == 'system' %}{% continue %}{% endif %}
<{{ m['role'] }}>{{ m['content'] | tojson }}
{% endfor %}
{% if add_generation_prompt %}<assistant>{{ ns.n }}{% endif %}"""


def _hf_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("gen", [True, False])
def test_hf_chat_templates_render_like_transformers(gen):
    tok = _hf_tokenizer()
    ref = tok.apply_chat_template(CHAT, chat_template=LLAVA15_HF_TEMPLATE, tokenize=False, add_generation_prompt=gen)
    assert render_chat_template(LLAVA15_HF_TEMPLATE, CHAT, gen) == ref
    msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": 'café ☕ "q"'}]
    ref = tok.apply_chat_template(msgs, chat_template=FANCY_TEMPLATE, tokenize=False, add_generation_prompt=gen)
    assert render_chat_template(FANCY_TEMPLATE, msgs, gen, bos_token="<s>") == ref
    assert '"café ☕ \\"q\\""' in ref


def test_hf_template_generation_spans_and_errors():
    text, spans = render_chat_template_with_spans(LLAVA15_HF_TEMPLATE, CHAT, True)
    assert text == "Be brief. USER: <image>\nWhat is it? ASSISTANT: A cat. USER: <image>\nAnd this? ASSISTANT:"
    assert [text[a:b] for a, b in spans] == ["A cat. "]
    with pytest.raises(ValueError, match="chat template failed to render: no tools here"):
        render_chat_template(FANCY_TEMPLATE, [{"role": "tool", "content": "x"}], True, bos_token="")
    with pytest.raises(ValueError, match="chat template failed"):  # sandboxed: no attribute escapes
        render_chat_template("{{ messages.__class__.__mro__ }}", [], True)
