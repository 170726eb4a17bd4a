"""The server's settings (``llava serve`` flags), shared by the app, the handlers and request preparation."""

from __future__ import annotations

from dataclasses import dataclass, field

from .images import ImageLimits
from .videos import VideoLimits

SHUTDOWN_GRACE = 5.0  # seconds the answers being generated get to finish after SIGTERM / Ctrl-C (serve/shutdown.py)


@dataclass
class ServeConfig:
    model_name: str = "llava"
    api_key: str | None = None  # required as 'Authorization: Bearer KEY' on /v1/* (see guard.py)
    max_batch_size: int = 8
    max_concurrency: int = 64  # requests in flight (preparing + queued + running); more -> 429
    timeout: float = 300.0  # seconds per request, queueing included
    max_tokens: int | None = None  # largest max_tokens a request may ask for (None: the context)
    default_max_tokens: int = 256  # max_tokens of a request that sets none (capped by max_tokens and the context)
    max_body_bytes: int = 64 * 1024 * 1024
    prepare_threads: int = 2  # requests whose images / videos are decoded / preprocessed at the same time
    images: ImageLimits = field(default_factory=ImageLimits)
    videos: VideoLimits = field(default_factory=VideoLimits)  # video_url parts (OneVision models)
