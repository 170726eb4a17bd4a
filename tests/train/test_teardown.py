"""train() ends only the process group it started: a script that set one up itself keeps it afterwards."""

from __future__ import annotations

import torch.distributed as dist

from llavakit.train.distributed import Dist, setup, teardown


def test_teardown_leaves_a_group_the_caller_started(tmp_path, monkeypatch):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: setup finds the caller's group already there
        d = setup("cpu")
        assert not d.owns_group
        teardown(d)
        assert dist.is_initialized()  # the caller's group survives train()'s teardown
        teardown(Dist(world=2, owns_group=True))  # a group setup started is ended
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
