"""Videos sent to the server (``video_url`` parts, LLaVA-OneVision models): checked, then decoded into frames.

A ``video_url`` part takes what an ``image_url`` part takes, under the same policy: a base64 ``data:`` URL
(``data:video/mp4;base64,...``), or an http(s) URL only when the server runs with ``--allow-remote-images``
(public hosts only, the same time and redirect limits); never a local path or a ``file://`` URL. Every failure is
an ``ImageError`` with its HTTP status: 413 for a video over ``--max-video-bytes`` or frames over
``--max-video-pixels`` (read from the stream's header, before any frame is decoded: the frames kept take
``max_frames x pixels x 3`` bytes), 400 for the rest (not a video, corrupt, PyAV missing on the server).

Frames are picked as the pipeline picks them for ``{"type": "video", "video": "clip.mp4", "max_frames": N}``
(``processing.video_load.read_video``: N frames spread evenly, first and last included), with N the server's
``--max-video-frames``: the server's frames for a file equal the pipeline's for the same file.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..processing.video_load import MAX_FRAMES, VIDEO_SUFFIXES, read_video
from .images import ImageError, ImageLimits, data_url_bytes, fetch_url

# MIME type -> the file suffix the video is decoded under (FFmpeg probes the bytes; the suffix is a hint)
SUFFIXES = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/mpeg": ".mpeg",
    "video/x-m4v": ".m4v",
    "video/ogg": ".ogv",
}
ACCEPTED = "a video file (MP4, WebM, MOV, MKV, AVI, MPEG) as data:video/mp4;base64,<data>"
NEEDS_PYAV = (
    "video input needs PyAV on the server, which is not installed; install the [video] extra "
    "(pip install 'llavakit[video]') and restart the server, or send the frames as image_url parts"
)


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 32 * 1024 * 1024  # encoded size of one video (a data: URL of it must also fit the body limit)
    max_frames: int = MAX_FRAMES  # frames taken from a video, spread evenly over it (the pipeline's default)
    max_pixels: int = 3840 * 2160  # width * height of its frames (4K UHD: 32 frames kept take ~800 MB)
    max_videos: int = 1  # per request


def _mime_ok(mime: str) -> bool:
    return mime.startswith("video/") or mime == "application/octet-stream"


def request_video_bytes(url: str, images: ImageLimits, limits: VideoLimits, what: str) -> tuple[bytes, str]:
    """The encoded bytes of one ``video_url`` part and the suffix to decode them under; the policy of
    ``images.request_image_bytes`` (data: URLs; http(s) only with ``--allow-remote-images``)."""
    if url[:5].lower() == "data:":  # URL schemes are case-insensitive (RFC 3986)
        mime = url[len("data:") :].split(",", 1)[0].split(";", 1)[0].strip().lower()
        data = data_url_bytes(url, what, max_bytes=limits.max_bytes, kind="video", mime_ok=_mime_ok, accepted=ACCEPTED)
        return data, SUFFIXES.get(mime, ".mp4")
    if url[:8].lower().startswith(("http://", "https://")):
        if not images.allow_remote:
            raise ImageError(
                f"{what}: remote video URLs are disabled; send a data: URL "
                "(or start the server with --allow-remote-images)"
            )
        data = fetch_url(url, images, what, kind="video", accept="video/*", max_bytes=limits.max_bytes)
        suffix = Path(url.split("?", 1)[0]).suffix.lower()
        return data, suffix if suffix in VIDEO_SUFFIXES else ".mp4"
    raise ImageError(f"{what}: video_url.url must be a data: URL (or http(s) with --allow-remote-images)")


def _av() -> Any:  # noqa: ANN401 - the PyAV module, or None
    try:
        import av
    except ImportError:
        return None
    return av


def _reason(e: BaseException) -> str:
    """PyAV's error without the file name it carries (a temporary file's name tells the client nothing)."""
    return getattr(e, "strerror", None) or type(e).__name__


def _probe(av: Any, data: bytes, max_pixels: int, what: str) -> None:  # noqa: ANN401
    """Refuse, from the container's header alone, bytes that are no video and frames over ``max_pixels``."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ImageError(
                    f"{what}: cannot decode the video: no video stream (truncated, or audio only); send {ACCEPTED}"
                )
            ctx = container.streams.video[0].codec_context
            w, h = int(ctx.width or 0), int(ctx.height or 0)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many kinds on hostile input; all mean "cannot decode"
        raise ImageError(
            f"{what}: cannot decode the video ({_reason(e)}): corrupt or not a video; send {ACCEPTED}"
        ) from None
    if w * h > max_pixels:
        raise ImageError(
            f"{what}: its frames of {w}x{h} = {w * h} pixels are over the limit of {max_pixels} pixels; "
            "downscale the video",
            413,
        )


def decode_video(data: bytes, suffix: str, limits: VideoLimits, what: str) -> list[Image.Image]:
    """At most ``limits.max_frames`` RGB frames of the encoded video ``data``, as ``read_video`` picks them."""
    if not data:
        raise ImageError(f"{what}: empty video (no bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{what}: {len(data)} bytes is over the limit of {limits.max_bytes} bytes; send a shorter or more "
            "compressed video",
            413,
        )
    av = _av()
    if av is None:
        raise ImageError(f"{what}: {NEEDS_PYAV}")
    _probe(av, data, limits.max_pixels, what)
    with tempfile.TemporaryDirectory(prefix="llava-video-") as tmp:
        path = Path(tmp) / f"video{suffix}"  # read_video reads files: the pipeline's frames for the same bytes
        path.write_bytes(data)
        try:
            return read_video(path, limits.max_frames)
        except Exception as e:  # noqa: BLE001 - read_video's errors name the temporary file: reworded for the client
            detail = str(e).replace(f"{path}: ", "").replace(str(path), "the video").split("; ", 1)[0]
            raise ImageError(f"{what}: cannot decode the video ({detail}); send a playable {ACCEPTED}") from None
