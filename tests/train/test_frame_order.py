"""A record's video folder is read in natural frame order: frame_2 before frame_10."""

from __future__ import annotations

from pathlib import Path

from llavakit.train.records import frame_files


def test_frame_files_natural_order(tmp_path: Path) -> None:
    for name in ["frame_10.png", "frame_2.png", "frame_1.png", "Frame_3.JPG", "notes.txt", "frame_20.png"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in frame_files(tmp_path)] == [
        "frame_1.png", "frame_2.png", "Frame_3.JPG", "frame_10.png", "frame_20.png",
    ]  # fmt: skip


def test_zero_padded_frames_keep_name_order(tmp_path: Path) -> None:
    names = [f"{i:05d}.png" for i in (3, 1, 12, 2)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in frame_files(tmp_path)] == sorted(names)
