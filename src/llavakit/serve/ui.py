"""The chat page at ``/``: one self-contained HTML file (no framework) talking to /v1/chat/completions."""

from __future__ import annotations

import html
import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _template() -> str:
    return (Path(__file__).parent / "chat.html").read_text(encoding="utf-8")


MAX_TOKENS = 128  # the page's max tokens field as it opens, under the server's --max-tokens


def page(model_name: str, *, needs_key: bool, max_tokens: int | None = None) -> str:
    """The page with the served model's name, whether it should ask for an API key, and its max tokens field within
    the server's ``max_tokens`` limit (a default over it would make every question a 400)."""
    limit = f' max="{max_tokens}"' if max_tokens is not None else ""
    return (
        _template()
        .replace("__NEEDS_KEY__", json.dumps(needs_key))
        .replace("__MAX_TOKENS__", f'"{min(MAX_TOKENS, max_tokens or MAX_TOKENS)}"{limit}')
        .replace("__MODEL__", html.escape(model_name))  # last: a name is not read for the other placeholders
    )
