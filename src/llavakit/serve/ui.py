"""The chat page at ``/``: one self-contained HTML file (no framework) talking to /v1/chat/completions."""

from __future__ import annotations

import html
import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _template() -> str:
    return (Path(__file__).parent / "chat.html").read_text(encoding="utf-8")


def page(model_name: str, *, needs_key: bool) -> str:
    """The page with the served model's name and whether it should ask for an API key."""
    return _template().replace("__MODEL__", html.escape(model_name)).replace("__NEEDS_KEY__", json.dumps(needs_key))
