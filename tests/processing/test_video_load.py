"""Video files -> frames (PyAV): the frames lmms-eval's OneVision runs pick, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from llavakit.processing import video_load
from llavakit.processing.video_load import read_video
from video_files import write_video

pytest.importorskip("av")


def _reds(frames) -> list[int]:  # noqa: ANN001
    return [round(float(np.asarray(f)[..., 0].mean()) / 20) for f in frames]


def test_frames_spread_evenly_over_the_whole_video(tmp_path):
    clip = write_video(tmp_path / "clip.mp4")
    frames = read_video(clip, 4)
    assert [f.size for f in frames] == [(32, 32)] * 4 and all(f.mode == "RGB" for f in frames)
    assert _reds(frames) == [0, 3, 7, 11]  # np.linspace(0, 11, 4, dtype=int), as lmms-eval picks them
    assert _reds(read_video(clip, 1)) == [0]
    assert _reds(read_video(clip, 50)) == list(range(12))  # fewer frames than asked: all of them


def test_bad_videos_are_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="video file not found"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"bad.mp4 cannot be read as a video .*ffmpeg -i"):
        read_video(bad)
    write_video(tmp_path / "ok.mp4", n=2)
    for bad_count in (0, "3", 2.0, True):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            read_video(tmp_path / "ok.mp4", bad_count)
    monkeypatch.setattr(video_load, "_av", lambda: None)
    with pytest.raises(ValueError, match=r"needs PyAV: pip install 'llavakit\[video\]'"):
        read_video(tmp_path / "ok.mp4")
