"""OpenAI-style messages prepared for a checkpoint's Jinja chat template.

Two kinds of templates ship with LLaVA checkpoints: those that print ``message['content']`` as a string (ours,
Vicuna-style) and those that walk it as a list of typed parts (llava-hf's: ``message['content'] |
selectattr('type', 'equalto', 'text')``). Given a plain string, the second kind prints nothing at all, in
transformers too, so "What is this?" sent as a string would silently vanish from the prompt. Which kind a template
is gets tested by rendering one probe message each way (as vLLM detects a template's "content format"), and string
content is handed to a list-walking template as one text part.
"""

from __future__ import annotations

import functools
from typing import Any

from .templates import render_chat_template

_PROBE = "llavakit-content-probe"


@functools.lru_cache(maxsize=16)
def takes_string_content(source: str) -> bool:
    """True when the template prints a message whose content is a plain string; False when it prints only list
    content (typed parts).

    Example: llava-hf's llava-1.5 template renders ``[{"role": "user", "content": "hi"}]`` as ``"USER: "`` and
    ``[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]`` as ``"USER: hi "`` -> False.
    """

    def shows(content: Any) -> bool:
        try:
            return _PROBE in render_chat_template(source, [{"role": "user", "content": content}], True)
        except ValueError:  # the template raised (e.g. it wants list content): not this form
            return False

    return shows(_PROBE) or not shows([{"type": "text", "text": _PROBE}])


def hf_messages(messages: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Messages as transformers' processors hand them to a chat template (see ``apply_chat_template``): keys whose
    value is None dropped, OpenAI ``image_url`` parts as ``{"type": "image", "url": u}``; string content as one
    text part when the template ``source`` prints list content only (:func:`takes_string_content`)."""
    wrap = not takes_string_content(source)
    out = []
    for msg in messages:
        msg = {k: v for k, v in msg.items() if v is not None}
        content = msg.get("content")
        if isinstance(content, str) and wrap:
            msg["content"] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url" and "image_url" in part:
                    url = part["image_url"]
                    parts.append({"type": "image", "url": url.get("url", "") if isinstance(url, dict) else url})
                else:
                    parts.append(part)
            msg["content"] = parts
        out.append(msg)
    return out
