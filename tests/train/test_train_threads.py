"""``llava train --threads N``: torch's thread count for the run (two threads per process beside other jobs ran
8-10x slower than one); refused below 1 before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llavakit.cli import main
from llavakit.train import loop


def test_threads_are_set_for_the_run(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    seen = []

    def fake_train(recipe):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        return loop.TrainResult(losses=[1.0], final_step=1, output_dir=tmp_path, finished=True)

    monkeypatch.setattr(loop, "train", fake_train)
    (tmp_path / "recipe.yaml").write_text("stage: {name: stage2, lr: 1.0e-3}\nmodel: {init: 'tiny:llava'}\n")
    before = torch.get_num_threads()
    try:
        want = 1 if before != 1 else 2
        assert main(["train", str(tmp_path / "recipe.yaml"), "--threads", str(want)]) == 0
        assert seen == [want]
    finally:
        torch.set_num_threads(before)
    assert "trained to step 1" in capsys.readouterr().out


@pytest.mark.parametrize("n", ["0", "-2"])
def test_threads_below_one_are_refused(tmp_path: Path, capsys, n: str) -> None:  # noqa: ANN001
    assert main(["train", str(tmp_path / "missing.yaml"), "--threads", n]) == 2
    assert f"llava train: error: --threads must be >= 1, got {n}" in capsys.readouterr().err
