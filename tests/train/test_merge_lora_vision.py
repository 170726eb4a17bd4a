"""A PEFT adapter whose target_modules also match the vision tower (LoraConfig(target_modules=["q_proj",
"v_proj"]) adapts CLIP's attention too) merges like PEFT's merge_and_unload; it was refused, naming
model.vision_tower.encoder.* (transformers 5's in-memory tower names) as tensors the model lacks."""

from __future__ import annotations

import torch

from llavakit.cli import main
from llavakit.train.build import build_model
from llavakit.train.recipe import ModelSpec


def test_peft_adapter_on_the_vision_tower_too_merges_as_peft_does(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaNextForConditionalGeneration

    model, processor = build_model(ModelSpec(init="tiny:llava_next"))
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "base")
    peft = get_peft_model(
        hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    assert any(".vision_tower." in n and n.endswith("q_proj.lora_A") for n, _ in peft.named_modules())
    peft.save_pretrained(tmp_path / "adapter")
    want = peft.merge_and_unload().state_dict()

    args = ["--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "out")]
    assert main(["merge-lora", *args]) == 0
    got = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "out").state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    base = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "base").state_dict()
    vision_q = next(k for k in want if ".vision_tower." in k and k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.equal(got[vision_q], base[vision_q])  # the tower's layers were merged, not skipped
