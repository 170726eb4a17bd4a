"""Conversation templates of the LLaVA family, and HF chat templates (Jinja) shipped inside checkpoints.

``render_with_spans`` returns the prompt text and the character spans of every assistant answer (including the
end-of-answer marker the model learns to emit), so training labels come from the rendering itself.

Example (``vicuna_v1``, one image, one question)::

    A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
    detailed, and polite answers to the user's questions. USER: <image>\\nWhat is it? ASSISTANT:
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE = "<image>"
VIDEO = "<video>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class Template:
    """How turns are laid out: ``system_fmt`` wraps the system text; user/assistant formats wrap one turn."""

    name: str
    system: str
    system_fmt: str  # "{system}" placeholder
    user_fmt: str  # "{content}" placeholder
    answer_prefix: str  # text before an answer (the generation prompt ends with it)
    answer_suffix: str  # end-of-answer marker, supervised together with the answer
    images_only_user: bool = False  # `plain`: a user turn is just its image placeholders


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template("plain", "", "", "{content}", "", "\n", images_only_user=True),
        Template("vicuna_v1", VICUNA_SYSTEM, "{system} ", "USER: {content} ", "ASSISTANT: ", "</s>"),
        Template("llava_v1", LLAVA_V1_SYSTEM, "{system} ", "USER: {content} ", "ASSISTANT: ", "</s>"),
        Template("llava_1_5_hf", "", "", "USER: {content} ", "ASSISTANT: ", "</s>"),
        Template("mistral_instruct", "", "", "[INST] {content} [/INST]", " ", "</s>"),
        Template(
            "chatml_direct",
            "Answer the questions.",
            "<|im_start|>system\n{system}<|im_end|>",
            "<|im_start|>user\n{content}<|im_end|>",
            "<|im_start|>assistant\n",
            "<|im_end|>",
        ),
        Template(
            "qwen_1_5",
            "You are a helpful assistant.",
            "<|im_start|>system\n{system}<|im_end|>\n",
            "<|im_start|>user\n{content}<|im_end|>\n",
            "<|im_start|>assistant\n",
            "<|im_end|>\n",
        ),
        Template(
            "llama3",
            LLAMA3_SYSTEM,
            "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
    ]
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose one of {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def message_text(content: Any) -> tuple[str, int, int]:
    """(text, images, videos) of a message's content: a string or a list of OpenAI-style parts."""
    if content is None:
        return "", 0, 0
    if isinstance(content, str):
        return content, content.count(IMAGE), content.count(VIDEO)
    texts, n_img, n_vid = [], 0, 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text", ""))
        elif kind in ("image", "image_url"):
            n_img += 1
        elif kind in ("video", "video_url"):
            n_vid += 1
        else:
            raise ValueError(f"unsupported content part {part!r}; use text, image, image_url or video parts")
    return " ".join(t for t in texts if t), n_img, n_vid


def _user_content(content: Any, tpl: Template) -> str:
    """Placeholders first, each followed by a newline, then the text (the original LLaVA layout)."""
    text, n_img, n_vid = message_text(content)
    if isinstance(content, str):  # placeholders already written by the caller: keep them where they are
        return IMAGE * n_img if tpl.images_only_user else text
    marks = (IMAGE + "\n") * n_img + (VIDEO + "\n") * n_vid
    if tpl.images_only_user:
        return IMAGE * n_img + VIDEO * n_vid
    return marks + text


def render_with_spans(
    messages: list[dict[str, Any]], template: str, add_generation_prompt: bool = True
) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text and the [start, end) character spans of each assistant answer (with its end marker)."""
    tpl = get_template(template)
    system = tpl.system
    body = list(messages)
    if body and body[0].get("role") == "system":
        system = message_text(body.pop(0).get("content"))[0]
    out = tpl.system_fmt.format(system=system) if tpl.system_fmt else ""
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(body):
        role = msg.get("role")
        if role == "user":
            out += tpl.user_fmt.format(content=_user_content(msg.get("content"), tpl))
        elif role == "assistant":
            out += tpl.answer_prefix
            start = len(out)
            out += message_text(msg.get("content"))[0] + tpl.answer_suffix
            spans.append((start, len(out)))
        else:
            raise ValueError(f"message {i}: role must be user or assistant (a system message goes first), got {role!r}")
    if add_generation_prompt and (not body or body[-1].get("role") != "assistant"):
        out += tpl.answer_prefix.rstrip(" ")
    return out, spans


def render(messages: list[dict[str, Any]], template: str, add_generation_prompt: bool = True) -> str:
    return render_with_spans(messages, template, add_generation_prompt)[0]


def render_chat_template(
    source: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
) -> str:
    """Render an HF chat template (Jinja) the way transformers does: sandboxed, trim_blocks and lstrip_blocks."""
    import json
    from datetime import datetime

    from jinja2 import StrictUndefined, TemplateError  # noqa: F401
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)
    except TemplateError as e:
        raise ValueError(f"the checkpoint's chat template failed to render: {e}") from e
