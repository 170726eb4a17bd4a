"""Ctrl-C during training: the last completed step is saved as the checkpoint save_every writes, and --resume
continues it bit for bit. Before, every step since the last checkpoint was lost and the CLI said `interrupted`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_run_helpers import write_recipe
from loop_helpers import ColorDataset, collate_fn, tiny_recipe

from llavakit.train.build import build_model
from llavakit.train.checkpointing import TrainingInterrupted
from llavakit.train.loop import train


class Drawing:
    """ColorDataset items, each load drawing from torch's RNG (as random augmentation would); Ctrl-C ("raise
    KeyboardInterrupt") at load number ``stop``."""

    def __init__(self, processor, stop: int | None = None) -> None:
        self.data, self.stop, self.loads = ColorDataset(processor, 12), stop, 0
        self.lengths, self.modalities = [x["length"] for x in self.data.items], [x["modality"] for x in self.data.items]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        self.loads += 1
        torch.rand(3)
        if self.loads == self.stop:
            raise KeyboardInterrupt
        return self.data[i]


def _run(recipe, stop=None, callbacks=()):
    model, processor = build_model(recipe.model)
    return train(recipe, model=model, processor=processor, dataset=Drawing(processor, stop), collate_fn=collate_fn,
                 callbacks=callbacks)  # fmt: skip


def test_ctrl_c_during_a_step_saves_the_last_completed_one_and_resume_matches(tmp_path):
    full = _run(tiny_recipe(tmp_path / "a", "llava", "train.save_every=3"))  # 6 steps; a checkpoint at step 3
    with pytest.raises(TrainingInterrupted) as e:
        _run(tiny_recipe(tmp_path / "b", "llava"), stop=4 * 3 + 2)  # save_every=0; in step 4's data loading
    ckpt = tmp_path / "b" / "run" / "checkpoints" / "step-00000003"
    assert e.value.step == 3 and e.value.checkpoint == ckpt and isinstance(e.value, KeyboardInterrupt)
    assert str(e.value) == f"interrupted after step 3; saved {ckpt}"
    a = torch.load(tmp_path / "a" / "run" / "checkpoints" / "step-00000003" / "trainer_state.pt", weights_only=False)
    b = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])  # the RNG as step 3 left it, not step 4's draws
    assert [json.loads(x)["step"] for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()] == [
        1, 2, 3]  # fmt: skip
    rest = _run(tiny_recipe(tmp_path / "b", "llava", "train.resume=true"))
    assert rest.steps == [4, 5, 6] and rest.losses == full.losses[3:]


def test_ctrl_c_between_steps_and_before_any_step(tmp_path):
    def stop_at_2(step, model):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"interrupted after step 2; saved .*step-00000002$"):
        _run(tiny_recipe(tmp_path, "llava"), callbacks=[stop_at_2])
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.pt").exists()
    with pytest.raises(TrainingInterrupted, match="interrupted after step 0; no step completed, nothing saved"):
        _run(tiny_recipe(tmp_path / "new", "llava"), stop=1)
    assert not (tmp_path / "new" / "run" / "checkpoints").exists()


def test_ctrl_c_in_a_callback_saves_that_steps_counters_and_resume_matches(tmp_path):
    """A KeyboardInterrupt from a callback (after step 2's update) saved step-00000002 with step 1's counters
    (its position in the data, its step number): --resume redid step 2 on the updated weights."""

    def stop_at_2(step, model):
        if step == 2:
            raise KeyboardInterrupt

    full = _run(tiny_recipe(tmp_path / "a", "llava"))
    with pytest.raises(TrainingInterrupted):
        _run(tiny_recipe(tmp_path / "b", "llava"), callbacks=[stop_at_2])
    ckpt = tmp_path / "b" / "run" / "checkpoints" / "step-00000002"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    rest = _run(tiny_recipe(tmp_path / "b", "llava", "train.resume=true"))
    assert rest.steps == [3, 4, 5, 6] and rest.losses == full.losses[2:]


def test_ctrl_c_while_the_final_model_is_written_waits_for_it(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the final model was written cut it in half (no checkpoint with save_every 0: every step lost,
    and a rerun refused as 'already holds a trained model'); the write now completes first, as a checkpoint's does."""
    import llavakit.train.loop as loop
    from llavakit import LlavaModel

    real = loop.write_model

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the final write starts
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "write_model", interrupted)
    try:
        result = _run(tiny_recipe(tmp_path, "llava"))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C cut the final model's write")
    assert result.finished and result.final_step == 6
    assert LlavaModel.from_pretrained(tmp_path / "run").config.model_type == "llava"
    assert "the final model was written whole" in capsys.readouterr().err


def _llava_train(recipe, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "llavakit.cli", "train", str(recipe), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigint_to_llava_train_saves_and_resume_gives_the_uninterrupted_losses(tmp_path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, run, "max_steps: 500")  # save_every: 0, as a fine-tune whose steps < save_every
    proc = _llava_train(recipe)
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").exists() and len(_losses(run)) >= 3) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    done = len(_losses(run))
    ckpt = run / "checkpoints" / f"step-{done:08d}"
    assert (
        f"llava train: interrupted after step {done}; saved {ckpt}; continue with: llava train {recipe} --resume" in err
    )
    assert "Traceback" not in err and (ckpt / "trainer_state.pt").exists()
    again = _llava_train(recipe, "--resume", "train.stop_after=2")
    assert again.wait(timeout=240) == 0, again.communicate()
    ref = _llava_train(recipe, f"train.output_dir={tmp_path / 'ref'}", f"train.stop_after={done + 2}")
    assert ref.wait(timeout=240) == 0, ref.communicate()
    assert _losses(run) == _losses(tmp_path / "ref") and len(_losses(run)) == done + 2
