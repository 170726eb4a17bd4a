"""A recipe that starts from a base decoder + a separate vision tower + a fresh projector (the original stage 1)."""

import torch
from loop_helpers import ColorDataset, collate_fn, tiny_recipe

from llavakit.tiny import char_tokenizer
from llavakit.train.build import build_model
from llavakit.train.loop import train
from llavakit.train.recipe import ModelSpec
from tiny_models import randomize, text_config, vision_config


def _parts(tmp_path, vocab=128):
    from transformers import CLIPVisionModel, LlamaForCausalLM

    torch.manual_seed(0)
    lm = randomize(LlamaForCausalLM(text_config("llama", vocab_size=vocab)).eval(), seed=1)
    lm.save_pretrained(tmp_path / "decoder")
    char_tokenizer().save(tmp_path / "decoder")
    tower = randomize(CLIPVisionModel(vision_config("clip")).eval(), seed=2)
    tower.save_pretrained(tmp_path / "tower")
    return lm, tower


def test_decoder_plus_vision_tower_plus_fresh_projector(tmp_path):
    lm, tower = _parts(tmp_path)
    t = 56
    spec = ModelSpec(
        decoder=str(tmp_path / "decoder"),
        vision_tower=str(tmp_path / "tower"),
        family="llava_next",
        image_grid_pinpoints=[[t, 2 * t], [2 * t, t], [2 * t, 2 * t]],
    )
    model, processor = build_model(spec)
    assert model.config.model_type == "llava_next" and model.config.image_token_id == 120  # the tokenizer's <image>
    assert processor.image_token_id == 120 and processor.geometry.pinpoints is not None
    # the decoder's weights and logits are the base model's (rows grown for new tokens only)
    ids = torch.tensor([[1, 40, 50, 60, 70, 3]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits[..., :128]
        ref = lm(input_ids=ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    ref_tower = {
        "model.vision_tower.vision_model." + k.removeprefix("vision_model."): v
        for k, v in tower.state_dict().items()
        if "position_ids" not in k
    }
    ours_sd = model.state_dict()
    assert len(ref_tower) > 20
    for k, v in ref_tower.items():
        assert torch.equal(ours_sd[k], v), k
    # and it trains (stage 1: projector only)
    recipe = tiny_recipe(tmp_path, "llava_next", "stage.name=stage1", "train.max_steps=2")
    res = train(recipe, model=model, processor=processor, dataset=ColorDataset(processor, 4), collate_fn=collate_fn)
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))
