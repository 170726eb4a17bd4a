"""Conversation templates of the LLaVA family, and HF chat templates (Jinja) shipped inside checkpoints.

``render_with_spans`` returns the prompt text and the character spans of every assistant answer (including the
end-of-answer marker the model learns to emit), so training labels come from the rendering itself.

Example (``vicuna_v1``, one image, one question, one answer, a follow-up)::

    A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
    detailed, and polite answers to the user's questions. USER: <image>\\nWhat is it? ASSISTANT: A cat.</s>USER:
    Color? ASSISTANT:

with one span covering ``A cat.</s>``. BOS is not part of any template text: the tokenizer adds it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
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
    """How turns are laid out. ``{system}`` / ``{content}`` are the placeholders.

    system_fmt:      wraps the system text at the very start ("" when the template has no system slot there)
    first_user_fmt:  wraps the system text into the first user turn instead (LLaMA-2 style ``<<SYS>>``)
    user_fmt:        one user turn
    answer_prefix:   text before an answer; the generation prompt is this prefix without its trailing space
    answer_suffix:   end-of-answer marker, supervised together with the answer
    strip:           strip whitespace around message texts (Llama-3's chat template trims)
    images_only:     ``plain``: a user turn is only its placeholders, without newline
    """

    name: str
    system: str
    system_fmt: str
    user_fmt: str
    answer_prefix: str
    answer_suffix: str
    first_user_fmt: str = ""
    strip: bool = False
    images_only: bool = False


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template("plain", "", "", "{content}", "", "\n", images_only=True),
        Template("vicuna_v1", VICUNA_SYSTEM, "{system} ", "USER: {content} ", "ASSISTANT: ", "</s>"),
        Template("llava_v1", LLAVA_V1_SYSTEM, "{system} ", "USER: {content} ", "ASSISTANT: ", "</s>"),
        Template("llava_1_5_hf", "", "{system} ", "USER: {content} ", "ASSISTANT: ", "</s>"),
        # as llava-compat.md writes it: " {a}</s>" (LLaVA's LLAMA_2 style code itself renders " {a} </s>")
        Template(
            "mistral_instruct",
            "",
            "",
            "[INST] {content} [/INST]",
            " ",
            "</s>",
            first_user_fmt="<<SYS>>\n{system}\n<</SYS>>\n\n",
        ),
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
        # LLaVA-NeXT conv_llava_llama_3 as its training code renders it (Llama-3-Instruct's chat template)
        Template(
            "llama3",
            LLAMA3_SYSTEM,
            "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
            strip=True,
        ),
    ]
}


# the template name meaning "the checkpoint's own Jinja chat template" (train.labels renders with it)
CHAT_TEMPLATE = "chat_template"


def get_template(name: str) -> Template:
    if not isinstance(name, str) or name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose one of {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def check_template_name(name: str, has_chat_template: bool) -> str:
    """``name`` if a processor can render with it: a named template, or ``chat_template`` when the processor has
    a Jinja chat template; else one clear ValueError listing the known names."""
    if isinstance(name, str) and (name in TEMPLATES or (name == CHAT_TEMPLATE and has_chat_template)):
        return name
    known = ", ".join(sorted(TEMPLATES))
    if name == CHAT_TEMPLATE:
        raise ValueError(
            f"template {name!r} means the checkpoint's Jinja chat template, which it lacks; choose one of {known}"
        )
    jinja = f", or {CHAT_TEMPLATE!r} (the checkpoint's Jinja chat template)" if has_chat_template else ""
    raise ValueError(f"unknown conversation template {name!r}; choose one of {known}{jinja}")


def message_text(content: Any) -> tuple[str, int, int]:
    """(text, images, videos) of a message's content: a string or a list of OpenAI-style parts.

    Text parts are joined with a space; ``image`` / ``image_url`` parts count as images, ``video`` /
    ``video_url`` parts as videos. In a plain string, ``<image>`` / ``<video>`` placeholders are counted.
    """
    if content is None:
        return "", 0, 0
    if isinstance(content, str):
        return content, content.count(IMAGE), content.count(VIDEO)
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"message content must be a string or a list of parts, got {content!r:.80}")
    texts, n_img, n_vid = [], 0, 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind in ("image", "image_url"):
            n_img += 1
        elif kind in ("video", "video_url"):
            n_vid += 1
        else:
            raise ValueError(f"unsupported content part {part!r}; use text, image, image_url or video parts")
    return " ".join(t for t in texts if t), n_img, n_vid


def _user_content(content: Any, tpl: Template) -> str:
    """Placeholders first, each followed by "\\n", then the text (the original LLaVA layout).

    A string content keeps its placeholders where the caller wrote them.
    """
    text, n_img, n_vid = message_text(content)
    if tpl.images_only:
        return IMAGE * n_img + VIDEO * n_vid
    if tpl.strip:
        text = text.strip()
    if isinstance(content, str):
        return text
    return (IMAGE + "\n") * n_img + (VIDEO + "\n") * n_vid + text


def render_with_spans(
    messages: list[dict[str, Any]], template: str, add_generation_prompt: bool = True
) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text and the [start, end) character spans of each assistant answer (with its end marker).

    A leading ``system`` message replaces the template's default system text. With
    ``add_generation_prompt`` the text ends where the model's next answer starts (e.g. "ASSISTANT:"),
    unless the last message is already an assistant answer.
    """
    tpl = get_template(template)
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {messages!r:.80}")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {msg!r:.80}")
    system, body, skip = tpl.system, list(messages), 0
    if body and body[0].get("role") == "system":
        skip = 1  # message numbers in errors count it
        system = message_text(body.pop(0).get("content"))[0]
        system = system.strip() if tpl.strip else system
    out = tpl.system_fmt.format(system=system) if tpl.system_fmt and system else ""
    spans: list[tuple[int, int]] = []
    first_user = True
    for i, msg in enumerate(body):
        role = msg.get("role")
        if role == "user":
            content = _user_content(msg.get("content"), tpl)
            if first_user and tpl.first_user_fmt and system:
                content = tpl.first_user_fmt.format(system=system) + content
            out += tpl.user_fmt.format(content=content)
            first_user = False
        elif role == "assistant":
            answer = message_text(msg.get("content"))[0]
            out += tpl.answer_prefix
            # The answer starts where the generation prompt ends: "ASSISTANT:" is the prompt, " 4</s>" is what the
            # model must write, space included (a tokenizer without a "Ġ4" token gives "Ġ" + "4"; leaving that
            # "Ġ" out of the labels teaches the model never to start an answer with it).
            start = len(out) - (len(tpl.answer_prefix) - len(tpl.answer_prefix.rstrip(" ")))
            out += (answer.strip() if tpl.strip else answer) + tpl.answer_suffix
            spans.append((start, len(out)))
        else:
            raise ValueError(
                f"message {i + skip}: role must be 'user' or 'assistant' (one 'system' message may come first), "
                f"got {role!r}"
            )
    if add_generation_prompt and (not body or body[-1].get("role") != "assistant"):
        out += tpl.answer_prefix.rstrip(" ")
    return out, spans


def render(messages: list[dict[str, Any]], template: str, add_generation_prompt: bool = True) -> str:
    """The prompt text of ``messages`` in a named template (see ``render_with_spans``)."""
    return render_with_spans(messages, template, add_generation_prompt)[0]


# -- HF chat templates ---------------------------------------------------------------------------------------------


def plain_data(value: Any) -> Any:
    """``value`` rebuilt from JSON-like types only, as transformers hands data to chat templates.

    Templates come from checkpoints (untrusted) and the sandbox lets them call methods of whatever they are
    given: a PIL image inside a content part has a ``save``. So anything that is not a str / number / bool /
    None / dict / list / tuple (numpy scalars, dataclasses and pydantic models are unwrapped) becomes an inert
    placeholder naming its type: ``{"type": "image", "image": <PIL image>}`` -> ``{"type": "image", "image":
    "<PngImageFile>"}``.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, str, int, float):  # subclasses (enums, numpy scalars) back to the base type
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy / torch scalar
        return plain_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _jinja_env() -> Any:
    """A sandboxed Jinja environment with what HF chat templates expect (as transformers sets it up)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text; we record its character spans."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller: Any) -> str:
            text = caller()
            self.environment.generation_marks.append(text)  # type: ignore[attr-defined]
            return f"\x00gen{len(self.environment.generation_marks) - 1}\x00"  # type: ignore[attr-defined]

    def check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")

    class Namespace(jinja2.utils.Namespace):
        """``namespace(...)`` that refuses underscore names (no way to reach Python internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            check_name(name)
            super().__setitem__(name, value)

    class Dict:
        """``dict(...)`` and ``dict.fromkeys(...)`` without exposing the dict type itself."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.generation_marks = []  # type: ignore[attr-defined]
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = Namespace
    env.globals["dict"] = Dict()
    return env


def render_chat_template_with_spans(
    source: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    *,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """Render an HF chat template; spans are the ``{% generation %}`` blocks (empty if the template has none).

    Like transformers, the template sees ``messages``, ``tools`` and ``documents`` (None unless given),
    ``add_generation_prompt`` and the ``extra`` variables (special tokens such as ``bos_token``), all as plain
    data (see ``plain_data``).
    """
    from jinja2 import TemplateError

    env = _jinja_env()
    variables = plain_data({**extra, "tools": tools, "documents": documents, "messages": messages})
    for i, msg in enumerate(variables["messages"]):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
    try:
        raw = env.from_string(source).render(add_generation_prompt=add_generation_prompt, **variables)
    except TemplateError as e:
        raise ValueError(f"the checkpoint's chat template failed to render: {e}") from e
    out, spans, rest = "", [], raw
    while "\x00gen" in rest:  # replace each marker by its text, remembering where it landed
        head, _, tail = rest.partition("\x00gen")
        idx, _, rest = tail.partition("\x00")
        out += head
        text = env.generation_marks[int(idx)]
        spans.append((len(out), len(out) + len(text)))
        out += text
    return out + rest, spans


def render_chat_template(
    source: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
) -> str:
    """Render an HF chat template (Jinja) the way transformers does: sandboxed, trim_blocks and lstrip_blocks,
    ``raise_exception`` / ``strftime_now`` / ``namespace`` / ``dict`` globals and a ``tojson`` that keeps
    non-ASCII characters; ``extra`` may hold ``tools`` / ``documents`` and the special tokens."""
    return render_chat_template_with_spans(source, messages, add_generation_prompt, **extra)[0]
