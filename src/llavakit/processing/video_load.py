"""Video files -> frames for OneVision, through PyAV (``pip install 'llavakit[video]'``; the core package decodes
no video formats). Frames are picked as lmms-eval's OneVision runs pick them: ``max_frames`` spread evenly over
the whole video, first and last included (``processing.image.sample_frames``)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MAX_FRAMES = 32  # the max_frames_num lmms-eval's OneVision video runs are usually given


def is_video_file(path: str | Path) -> bool:
    """Whether ``path`` names a video file by its suffix (it need not exist)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _frames_hint(path: str | Path) -> str:
    return (
        f"or decode it into frames (`ffmpeg -i {shlex.quote(str(path))} -vf fps=1 frames/%05d.png`) and pass the folder"
    )


def _av() -> Any:
    try:
        import av
    except ImportError:
        return None
    return av


def _decode(av: Any, path: Path, picks: list[int]) -> tuple[dict[int, Image.Image], int]:
    """The frames at ``picks`` (decode order = presentation order), and how many frames were decoded in all."""
    wanted, got, n = set(picks), {}, 0
    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0), 1):
            if n - 1 in wanted:
                got[n - 1] = frame.to_image().convert("RGB")
            if n - 1 >= picks[-1]:
                break
    return got, n


def read_video(path: str | Path, max_frames: int = MAX_FRAMES) -> list[Image.Image]:
    """At most ``max_frames`` RGB frames of the video file at ``path``, spread evenly over all of its frames.

    The frame count comes from the container's packets (no decoding); frames are then decoded up to the last
    one picked. If fewer frames decode than packets were counted, the picks are made again over the frames
    that do decode. Errors are one line naming the file: a missing file (FileNotFoundError), PyAV not
    installed, a file that is not a readable video, a video without frames.

    Example: 300 frames, max_frames 4 -> frames 0, 99, 199, 299 (``sample_frames(300, 4)``).
    """
    path = Path(path)
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"the number of frames to read (max_frames) must be an integer >= 1, got {max_frames!r}")
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    from .image import sample_frames  # here, not at the top: `llava serve`'s flags read MAX_FRAMES without torch

    av = _av()
    if av is None:
        raise ValueError(f"reading {path} needs PyAV: pip install 'llavakit[video]', {_frames_hint(path)}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} holds no video stream; pass a video file or a folder of frames")
            stream = container.streams.video[0]
            total = sum(1 for packet in container.demux(stream) if packet.size)
        if total == 0:
            raise ValueError(f"{path}: the video holds no frames")
        picks = sample_frames(total, max_frames)
        got, decoded = _decode(av, path, picks)
        if len(got) < len(picks) and decoded > 0:  # fewer frames decode than packets: pick among those that do
            picks = sample_frames(decoded, max_frames)
            got, decoded = _decode(av, path, picks)
    except av.error.FFmpegError as e:
        raise ValueError(f"{path} cannot be read as a video ({e}); pass a video file, {_frames_hint(path)}") from None
    if not got:
        raise ValueError(f"{path}: no frame of the video could be decoded; {_frames_hint(path)}")
    return [got[i] for i in picks if i in got]
