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

from .templates import IMAGE, VIDEO, get_template

MARK = "{#- llavakit conversation template: %s -#}"
IMAGE_PARTS = ("image", "image_url")
VIDEO_PARTS = ("video", "video_url")

# Macros shared by every template. text_of: the text parts joined by a space (a string content as it is);
# count: how many parts of the given types (in a string content: how many times the placeholder occurs).
_MACROS = """\
{%- macro text_of(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable and content is not mapping -%}
{%- for part in content if part is mapping and part['type'] == 'text' and part['text'] -%}
{{ ' ' if not loop.first }}{{ part['text'] }}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro count(content, types, placeholder) -%}
{%- if content is string -%}{{ content.count(placeholder) }}
{%- elif content is iterable and content is not mapping -%}
{{ content | select('mapping') | selectattr('type', 'in', types) | list | length }}
{%- else -%}0{%- endif -%}
{%- endmacro -%}
"""


def _lit(text: str) -> str:
    """A Jinja string literal of ``text`` (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text)


def _wrap(fmt: str, slot: str, value: str) -> str:
    """``fmt`` with ``{slot}`` replaced by the Jinja expression ``value``, as concatenated literals."""
    head, _, tail = fmt.partition("{" + slot + "}")
    return " + ".join(p for p in (_lit(head) if head else "", value, _lit(tail) if tail else "") if p)


def jinja_template(name: str) -> str:
    """A Jinja chat template that renders as the named template ``name`` (see the module docstring)."""
    t = get_template(name)
    img, vid = _lit(IMAGE), _lit(VIDEO)
    n_img = f"(count(m['content'], {list(IMAGE_PARTS)}, {img}) | int)"
    n_vid = f"(count(m['content'], {list(VIDEO_PARTS)}, {vid}) | int)"
    out = [MARK % name, _MACROS]
    out.append(f"{{%- set ns = namespace(system={_lit(t.system)}, first=true) -%}}")
    out.append("{%- set msgs = messages -%}")
    out.append("{%- if messages and messages[0]['role'] == 'system' -%}")
    out.append("{%- set ns.system = text_of(messages[0]['content']) | string -%}")
    out.append("{%- set msgs = messages[1:] -%}")
    out.append("{%- endif -%}")
    if t.system_fmt:
        out.append(f"{{%- if ns.system -%}}{{{{ {_wrap(t.system_fmt, 'system', 'ns.system')} }}}}{{%- endif -%}}")
    out.append("{%- for m in msgs -%}")
    out.append("{%- if m['role'] == 'user' -%}")
    if t.images_only:
        out.append(f"{{%- set body = {img} * {n_img} + {vid} * {n_vid} -%}}")
    else:
        out.append("{%- set body = text_of(m['content']) | string -%}")
        if t.strip:
            out.append("{%- set body = body | trim -%}")
        out.append("{%- if m['content'] is not string -%}")
        out.append(f"{{%- set body = {_lit(IMAGE + chr(10))} * {n_img} + {_lit(VIDEO + chr(10))} * {n_vid} + body -%}}")
        out.append("{%- endif -%}")
    if t.first_user_fmt:
        prefix = _wrap(t.first_user_fmt, "system", "ns.system")
        out.append(f"{{%- if ns.first and ns.system -%}}{{%- set body = {prefix} + body -%}}{{%- endif -%}}")
    out.append("{%- set ns.first = false -%}")
    out.append(f"{{{{ {_wrap(t.user_fmt, 'content', 'body')} }}}}")
    out.append("{%- elif m['role'] == 'assistant' -%}")
    answer = "(text_of(m['content']) | string" + (" | trim)" if t.strip else ")")
    out.append(f"{{{{ {_lit(t.answer_prefix)} + {answer} + {_lit(t.answer_suffix)} }}}}")
    out.append("{%- else -%}")
    out.append(
        "{{- raise_exception('message ' ~ loop.index0 ~ \": role must be 'user' or 'assistant' (one 'system' "
        "message may come first), got \" ~ m['role']) -}}"
    )
    out.append("{%- endif -%}")
    out.append("{%- endfor -%}")
    prompt = t.answer_prefix.rstrip(" ")
    out.append("{%- if add_generation_prompt and (not msgs or msgs[-1]['role'] != 'assistant') -%}")
    if prompt:
        out.append(f"{{{{ {_lit(prompt)} }}}}")
    out.append("{%- endif -%}")
    return "\n".join(out) + "\n"


def template_name(source: str | None) -> str | None:
    """The named template a Jinja template was written from by ``jinja_template``, or None."""
    if not source:
        return None
    first = source.split("\n", 1)[0]
    head, _, tail = MARK.partition("%s")
    if first.startswith(head) and first.endswith(tail):
        return first[len(head) : len(first) - len(tail)]
    return None
