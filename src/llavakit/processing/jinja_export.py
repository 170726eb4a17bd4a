"""Named conversation templates written out as HF Jinja chat templates, for checkpoints we save or convert.

transformers' ``apply_chat_template`` and vLLM's chat endpoint need a Jinja template inside the checkpoint;
original LLaVA checkpoints and our own trainings only name a template (``vicuna_v1``, ``mistral_instruct``...).
``jinja_template(name)`` gives one that renders every conversation exactly as ``templates.render`` does, for
OpenAI-style messages (string contents keep their placeholders where written; content parts put one
``<image>\\n`` per image part, then one ``<video>\\n`` per video part, then the text parts joined by a space).

Example: ``jinja_template("vicuna_v1")`` on ``[{"role": "user", "content": [{"type": "image"}, {"type": "text",
"text": "What is it?"}]}]`` with ``add_generation_prompt=True`` renders ``"A chat between ... questions. USER:
<image>\\nWhat is it? ASSISTANT:"``, as ``render`` does.
"""

from __future__ import annotations

import json

from .templates import IMAGE, TEMPLATES, VIDEO, get_template

MARK = "{#- llavakit conversation template: %s -#}"
IMAGE_PARTS = ("image", "image_url")
VIDEO_PARTS = ("video", "video_url")


def _lit(text: str) -> str:
    """A Jinja string literal of ``text`` (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text)


def _wrap(fmt: str, slot: str, value: str) -> str:
    """``fmt`` with ``{slot}`` replaced by the Jinja expression ``value``, as concatenated literals."""
    head, _, tail = fmt.partition("{" + slot + "}")
    return " + ".join(p for p in (_lit(head) if head else "", value, _lit(tail) if tail else "") if p)


def _read(src: str) -> list[str]:
    """Jinja that reads the content ``src`` into ns.text (text parts joined by a space, or the string itself),
    ns.img and ns.vid (image / video parts, or the placeholders in a string). The parts are iterated directly
    (``for part in message['content']``), the shape by which vLLM recognises templates that take content parts."""
    img, vid = _lit(IMAGE), _lit(VIDEO)
    return [
        "{%- set ns.text = '' -%}{%- set ns.img = 0 -%}{%- set ns.vid = 0 -%}",
        f"{{%- if {src} is string -%}}",
        f"{{%- set ns.text = {src} -%}}",
        f"{{%- set ns.img = {src}.count({img}) -%}}{{%- set ns.vid = {src}.count({vid}) -%}}",
        f"{{%- elif {src} is iterable and {src} is not mapping -%}}",
        f"{{%- for part in {src} if part is mapping -%}}",
        f"{{%- if part['type'] in {list(IMAGE_PARTS)} -%}}{{%- set ns.img = ns.img + 1 -%}}",
        f"{{%- elif part['type'] in {list(VIDEO_PARTS)} -%}}{{%- set ns.vid = ns.vid + 1 -%}}",
        "{%- elif part['type'] == 'text' and part['text'] -%}",
        "{%- set ns.text = ns.text ~ (' ' if ns.text else '') ~ part['text'] -%}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- endif -%}",
    ]


def jinja_template(name: str) -> str:
    """A Jinja chat template that renders as the named template ``name`` (see the module docstring)."""
    t = get_template(name)
    out = [MARK % name]
    out.append(f"{{%- set ns = namespace(system={_lit(t.system)}, first=true, skip=0, text='', img=0, vid=0) -%}}")
    out.append("{%- if messages and messages[0]['role'] == 'system' -%}")
    out += _read("messages[0]['content']")
    trim = " | trim" if t.strip else ""  # Llama-3's template trims every message, the system one too
    out.append("{%- set ns.system = ns.text" + trim + " -%}{%- set ns.skip = 1 -%}")
    out.append("{%- endif -%}")
    if t.system_fmt:
        out.append(f"{{%- if ns.system -%}}{{{{ {_wrap(t.system_fmt, 'system', 'ns.system')} }}}}{{%- endif -%}}")
    out.append("{%- for message in messages -%}")
    out.append("{%- if loop.index0 >= ns.skip -%}")
    out += _read("message['content']")
    out.append("{%- if message['role'] == 'user' -%}")
    img, vid = _lit(IMAGE), _lit(VIDEO)
    if t.images_only:
        out.append(f"{{%- set body = {img} * ns.img + {vid} * ns.vid -%}}")
    else:
        out.append("{%- set body = ns.text" + (" | trim" if t.strip else "") + " -%}")
        out.append("{%- if message['content'] is not string -%}")
        out.append(f"{{%- set body = {_lit(IMAGE + chr(10))} * ns.img + {_lit(VIDEO + chr(10))} * ns.vid + body -%}}")
        out.append("{%- endif -%}")
    if t.first_user_fmt:
        prefix = _wrap(t.first_user_fmt, "system", "ns.system")
        out.append(f"{{%- if ns.first and ns.system -%}}{{%- set body = {prefix} + body -%}}{{%- endif -%}}")
    out.append("{%- set ns.first = false -%}")
    out.append(f"{{{{ {_wrap(t.user_fmt, 'content', 'body')} }}}}")
    out.append("{%- elif message['role'] == 'assistant' -%}")
    answer = "(ns.text | trim)" if t.strip else "ns.text"
    out.append(f"{{{{ {_lit(t.answer_prefix)} + {answer} + {_lit(t.answer_suffix)} }}}}")
    out.append("{%- else -%}")
    out.append(
        "{{- raise_exception('message ' ~ loop.index0 ~ \": role must be 'user' or 'assistant' (one "
        "'system' message may come first), got \" ~ message['role']) -}}"
    )
    out.append("{%- endif -%}")
    out.append("{%- endif -%}")
    out.append("{%- endfor -%}")
    prompt = t.answer_prefix.rstrip(" ")
    out.append("{%- if add_generation_prompt and (not messages or messages[-1]['role'] != 'assistant') -%}")
    if prompt:
        out.append(f"{{{{ {_lit(prompt)} }}}}")
    out.append("{%- endif -%}")
    return "\n".join(out) + "\n"


def exported_name(source: str | None) -> str | None:
    """The named template ``source`` is, unchanged, an export of (``jinja_template``), or None: a template
    edited after export is the checkpoint's own and is rendered as Jinja."""
    name = template_name(source)
    if name is None or name not in TEMPLATES or source is None:
        return None
    return name if source.strip() == jinja_template(name).strip() else None


def template_name(source: str | None) -> str | None:
    """The named template a Jinja template was written from by ``jinja_template``, or None."""
    if not source:
        return None
    first = source.split("\n", 1)[0]
    head, _, tail = MARK.partition("%s")
    if first.startswith(head) and first.endswith(tail):
        return first[len(head) : len(first) - len(tail)]
    return None
