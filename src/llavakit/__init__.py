"""llavakit: the LLaVA family (1.5, 1.6 / NeXT, OneVision) in plain PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LlavaConfig", "LlavaModel", "LlavaProcessor", "__version__", "load"]

if TYPE_CHECKING:
    from .config import LlavaConfig
    from .model.llava import LlavaModel
    from .pipeline import load
    from .processing.processor import LlavaProcessor


def __getattr__(name: str):  # lazy: `import llavakit` stays cheap for the CLI
    if name == "LlavaModel":
        from .model.llava import LlavaModel

        return LlavaModel
    if name == "LlavaProcessor":
        from .processing.processor import LlavaProcessor

        return LlavaProcessor
    if name == "load":
        from .pipeline import load

        return load
    if name == "LlavaConfig":
        from .config import LlavaConfig

        return LlavaConfig
    raise AttributeError(f"module 'llavakit' has no attribute {name!r}")
