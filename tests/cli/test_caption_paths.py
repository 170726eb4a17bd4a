"""`llava caption` on image paths that read as globs: a file named with [ ] * ? is that file, not a pattern."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from llavakit.cli import main


def test_caption_takes_an_existing_file_with_glob_characters_as_itself(model, tmp_path, capsys):
    """``photo [1].png`` was read as a glob (a character class matching ``photo 1.png``): "no images found"."""
    d = tmp_path / "my photos"
    d.mkdir()
    for name in ("photo [1].png", "star*.png", "what?.png"):
        Image.new("RGB", (40, 30), (10, 200, 90)).save(d / name)
    out = tmp_path / "caps.jsonl"
    for name in ("photo [1].png", "star*.png", "what?.png"):
        assert main(["caption", "--model", model, str(d / name), "--out", str(out), "--max-new-tokens", "2"]) == 0
        counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert counts == {"images": 1, "skipped": 0, "captioned": 1, "failed": 0}
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [Path(r["image"]).name for r in recs] == ["photo [1].png", "star*.png", "what?.png"]
