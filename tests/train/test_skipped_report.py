"""Records left out of training are reported (the README said "dropped and counted"; the count was kept in the
dataset and never shown): ``TrainResult.skipped`` and one line from ``llava train``."""

from __future__ import annotations

import json
from pathlib import Path

from train_helpers import conv, write_image

from llavakit.train.commands import train_command


def test_llava_train_says_how_many_records_it_left_out_and_why(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    write_image(tmp_path / "a.png", 30, 30)
    ok = [
        {"id": f"ok{i}", "image": "a.png", "conversations": conv("<image>\nWhat colour?", f"red {i}")} for i in range(8)
    ]
    long = {"id": "long", "image": "a.png", "conversations": conv("x " * 200 + "<image>", "red")}
    (tmp_path / "data.json").write_text(json.dumps([*ok[:3], long, *ok[3:]]))
    (tmp_path / "recipe.yaml").write_text("stage: {name: stage2, lr: 1.0e-3}\n")
    overrides = [
        "model.init=tiny:llava",
        f"data.path={tmp_path / 'data.json'}",
        f"data.image_folder={tmp_path}",
        "data.template=llava_1_5_hf",
        "data.max_length=100",  # the long record cannot be cut without cutting its image tokens
        f"train.output_dir={tmp_path / 'run'}",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.max_steps=3",  # 12 samples: every record is met
        "train.save_every=0",
        "train.progress=false",
    ]
    assert train_command(str(tmp_path / "recipe.yaml"), overrides) == 0
    out = capsys.readouterr().out
    assert "left out 1 record (too_long 1): each that failed while training was replaced by the next" in out, out
