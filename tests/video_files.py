"""Small video files for the tests (PyAV: the `video` extra, in `dev`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, n: int = 12, size: int = 32) -> Path:
    """An mpeg4 clip of ``n`` frames whose frame i is flat with red = 20 * i."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(n):
            img = np.zeros((size, size, 3), np.uint8)
            img[..., 0], img[..., 1] = 20 * i, 100
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
