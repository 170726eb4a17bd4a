"""scripts/align_projector.py: only the projector moves, towards the object words, and the output loads."""

import torch

from llavakit.data.synth import write_dataset
from llavakit.model.llava import LlavaModel
from llavakit.tiny import write_tiny_checkpoint
from script_module import load_script


def test_aligns_the_projector_alone(tmp_path):
    mod = load_script("align_projector")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 8, 3, "instruct", min_side=112, max_side=140)
    losses = mod.main([str(init), str(tmp_path / "d"), str(tmp_path / "out"), "--scenes", "8", "--steps", "30"])
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    before, after = (
        LlavaModel.from_pretrained(init).state_dict(),
        LlavaModel.from_pretrained(tmp_path / "out").state_dict(),
    )
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("model.multi_modal_projector.") for k in moved), moved
