"""SIGTERM (`kill`, SLURM preemption, `docker stop`, systemd, Kubernetes) stops `llava train` as Ctrl-C does: the
last completed step is saved and the resume command printed. Before, the process died at once (exit 143, nothing
printed) and every step since the last save_every checkpoint was lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_run_helpers import write_recipe
from loop_helpers import ColorDataset, collate_fn, tiny_recipe

from llavakit.train.build import build_model
from llavakit.train.checkpointing import InterruptGuard, TrainingInterrupted
from llavakit.train.loop import train


def test_sigterm_saves_the_last_completed_step_and_restores_the_handlers(tmp_path):
    def sigterm_at_2(step, model):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    def mine(signum, frame):
        raise AssertionError("the previous SIGTERM handler ran during training")

    recipe = tiny_recipe(tmp_path, "llava")
    model, processor = build_model(recipe.model)
    before = signal.signal(signal.SIGTERM, mine)
    before_int = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job (`cmd &`)
    try:
        with pytest.raises(TrainingInterrupted, match=r"^stopped by SIGTERM after step 2; saved .*step-00000002$") as e:
            train(recipe, model=model, processor=processor, dataset=ColorDataset(processor, 12), collate_fn=collate_fn,
                  callbacks=[sigterm_at_2])  # fmt: skip
        assert e.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is before_int
    finally:
        signal.signal(signal.SIGTERM, before)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.pt").exists()


def test_an_ignored_sigterm_stays_ignored_and_several_processes_keep_the_defaults():
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with InterruptGuard(True):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with InterruptGuard(False):  # torchrun with several processes: Python's defaults, as for Ctrl-C
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_to_llava_train_saves_prints_the_resume_command_and_exits_143(tmp_path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, run, "max_steps: 500")  # save_every: 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "llavakit.cli", "train", str(recipe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").exists() and len(_losses(run)) >= 2) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.terminate()  # SIGTERM
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    done = len(_losses(run))
    ckpt = run / "checkpoints" / f"step-{done:08d}"
    said = f"llava train: stopped by SIGTERM after step {done}; saved {ckpt}; continue with: llava train {recipe}"
    assert said + " --resume" in err and "Traceback" not in err and (ckpt / "trainer_state.pt").exists()
    again = subprocess.run([*cmd, "--resume", "train.stop_after=1"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()][-2:] == [done, done + 1]
