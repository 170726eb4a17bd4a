"""scripts/ground_attention.py: the naming word's layer-0 attention moves onto the named object, nothing but the
projector and layer 0's query / key projections changes, and the output loads."""

import pytest
import torch

from llavakit.data.synth import write_dataset
from llavakit.model.llava import LlavaModel
from llavakit.tiny import write_tiny_checkpoint
from script_module import load_script


@pytest.mark.parametrize("family", ["llava_next", "llava"])
def test_layer0_attention_learns_the_named_object(tmp_path, family):
    mod = load_script("ground_attention")
    init = write_tiny_checkpoint(tmp_path / "m", family)
    write_dataset(tmp_path / "d", 24, 3, "instruct", min_side=112, max_side=140)
    args = [str(init), str(tmp_path / "d"), str(tmp_path / "out"), "--steps", "40", "--batch", "4", "--lr", "3e-3"]
    losses = mod.main(args)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    before = LlavaModel.from_pretrained(init).state_dict()
    after = LlavaModel.from_pretrained(tmp_path / "out").state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = ("model.multi_modal_projector.", "model.language_model.layers.0.self_attn.q_proj.",
               "model.language_model.layers.0.self_attn.k_proj.")  # fmt: skip
    assert moved and all(k.startswith(allowed) for k in moved), moved


def test_layer0_mass_equals_transformers_attention(tmp_path):
    from transformers import LlavaNextForConditionalGeneration

    from llavakit.processing.processor import LlavaProcessor
    from llavakit.train.grounding import examples, layer0_log_mass

    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 12, 3, "instruct", min_side=112, max_side=140)
    ex = examples(LlavaProcessor.from_pretrained(init), tmp_path / "d", 2)[0]
    ours = layer0_log_mass(LlavaModel.from_pretrained(init).eval(), ex).exp()  # (H,)
    hf = LlavaNextForConditionalGeneration.from_pretrained(init, attn_implementation="eager").eval()
    with torch.no_grad():
        att = hf(input_ids=ex["ids"], pixel_values=ex["pv"], image_sizes=ex["sizes"], output_attentions=True).attentions
    ref = att[0][0, :, ex["pos"], ex["target"]].sum(-1)  # (H,) layer 0, from the naming word to the named object
    assert ex["target"].any() and float(ref.max()) > 0
    torch.testing.assert_close(ours.detach(), ref, rtol=1e-4, atol=1e-6)
