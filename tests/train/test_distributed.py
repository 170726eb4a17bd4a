"""Two processes on gloo (spawned as torchrun would) give the one-process losses for the same global batch;
FSDP2 runs, checkpoints gathered state, and resumes on a different number of processes."""

import json

import pytest
import torch
import torch.multiprocessing as mp
from loop_helpers import ColorDataset, collate_fn, distributed_worker, free_port

from llavakit.train.build import build_model
from llavakit.train.loop import train

BASE = [
    "model.init=tiny:llava",
    "train.global_batch_size=4",
    "train.micro_batch_size=1",
    "train.max_steps=3",
    "train.warmup_ratio=0",
    "train.progress=false",
    "stage.name=stage2",
    "stage.lr=3e-3",
    "train.save_every=0",
]


def _spawn(tmp_path, overrides, n=8):
    out = tmp_path / "losses.json"
    mp.spawn(distributed_worker, args=(2, free_port(), overrides, str(out), n), nprocs=2, join=True)
    return json.loads(out.read_text())


def _single(overrides, n=8):
    from llavakit.train.recipe import load_recipe

    recipe = load_recipe(None, overrides)
    model, processor = build_model(recipe.model)
    return train(recipe, model=model, processor=processor, dataset=ColorDataset(processor, n), collate_fn=collate_fn)


@pytest.fixture(scope="module")
def single_losses(tmp_path_factory):
    return _single(BASE + [f"train.output_dir={tmp_path_factory.mktemp('one') / 'run'}"]).losses


def test_ddp_two_processes_match_one(tmp_path, single_losses):
    # micro-batch 1 x 2 processes x 2 accumulation steps = the same global batch of 4
    got = _spawn(tmp_path, BASE + [f"train.output_dir={tmp_path / 'run'}", "train.distributed=ddp"])
    assert got["steps"] == [1, 2, 3] and got["param_type"] == "Parameter"
    assert got["losses"] == pytest.approx(single_losses, rel=1e-5)


def test_fsdp2_runs_and_resumes_on_another_process_count(tmp_path, single_losses):
    run = [f"train.output_dir={tmp_path / 'run'}", "train.distributed=fsdp", "train.save_every=2"]
    got = _spawn(tmp_path, BASE + run + ["train.stop_after=2"])
    assert got["losses"] == pytest.approx(single_losses[:2], rel=1e-5)
    assert got["param_type"] == "DTensor"  # the decoder blocks really were sharded
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world"] == 2
    # the gathered checkpoint is a plain full model: loads on its own
    from llavakit.model.llava import LlavaModel

    assert sum(p.numel() for p in LlavaModel.from_pretrained(ckpt).parameters()) > 0
    rest = _single(BASE + run + ["train.resume=true"])  # one process continues the two-process run
    assert rest.steps == [3]
    assert rest.losses == pytest.approx(single_losses[2:], rel=1e-5)
    assert torch.isfinite(torch.tensor(rest.losses)).all()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_epochs_short_last_step_matches_one_process(tmp_path, strategy):
    """9 samples in global batches of 4: the third step has one sample; the second process runs a stand-in
    micro-batch with no supervised tokens (the same forward passes everywhere), and the losses are one process's."""
    run = [*BASE, "train.max_steps=null", "train.epochs=1"]
    one = _single([*run, f"train.output_dir={tmp_path / 'one'}"], n=9)
    got = _spawn(tmp_path, [*run, f"train.output_dir={tmp_path / 'two'}", f"train.distributed={strategy}"], n=9)
    assert one.steps == got["steps"] == [1, 2, 3]
    assert got["losses"] == pytest.approx(one.losses, rel=1e-5)
