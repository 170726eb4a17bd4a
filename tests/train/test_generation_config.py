"""Trained, LoRA and merged outputs carry their source's generation_config.json (the init checkpoint's, the base
decoder's for a model built from parts): its extra end-of-sequence ids (Llama-3's <|eot_id|>) were lost before, so
the tokenizer read back from an output stopped on the config's end-of-sequence id only."""

import json

import torch
from loop_helpers import ColorDataset, collate_fn, tiny_recipe

from llavakit.cli import main
from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import char_tokenizer, write_tiny_checkpoint
from llavakit.train.build import build_model
from llavakit.train.loop import train
from tiny_models import randomize, text_config, vision_config

GEN = {"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": 0}


def _eos(path):
    return LlavaProcessor.from_pretrained(path).tokenizer.eos_token_ids


def _run(recipe):
    model, processor = build_model(recipe.model)
    train(recipe, model=model, processor=processor, dataset=ColorDataset(processor, 4), collate_fn=collate_fn)
    return recipe.train.output_dir


def _init(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", "llava")
    (base / "generation_config.json").write_text(json.dumps(GEN))
    assert _eos(base) == [2, 7]
    return base


def test_full_fine_tune_outputs_and_checkpoints_keep_the_inits_eos_ids(tmp_path):
    from transformers import LlavaForConditionalGeneration

    base = _init(tmp_path)
    out = _run(tiny_recipe(tmp_path, "llava", f"model.init={base}", "train.max_steps=2", "train.save_every=1"))
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "step-00000001"):
        assert _eos(path) == [2, 7], path
    assert LlavaForConditionalGeneration.from_pretrained(out).generation_config.eos_token_id == [2, 7]


def test_lora_adapter_merged_output_and_merge_lora_keep_the_eos_ids(tmp_path):
    base = _init(tmp_path)
    r = tiny_recipe(tmp_path, "llava", f"model.init={base}", "stage.name=lora", "train.save_every=1")
    r.train.max_steps, r.stage.lora.rank = 2, 4
    run = _run(r)
    adapter = tmp_path / "run" / "adapter"
    for path in (run, adapter, tmp_path / "run" / "checkpoints" / "step-00000001"):
        assert _eos(path) == [2, 7], path
    assert main(["merge-lora", "--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "m1")]) == 0
    assert _eos(tmp_path / "m1") == [2, 7]
    (adapter / "generation_config.json").unlink()  # an adapter without one (older llavakit): the base's
    assert main(["merge-lora", "--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "m2")]) == 0
    assert json.loads((tmp_path / "m2" / "generation_config.json").read_text()) == GEN


def test_a_model_built_from_parts_keeps_the_decoders_eos_ids(tmp_path):
    from transformers import CLIPVisionModel, LlamaForCausalLM

    torch.manual_seed(0)
    randomize(LlamaForCausalLM(text_config("llama", vocab_size=128)), seed=1).save_pretrained(tmp_path / "decoder")
    char_tokenizer().save(tmp_path / "decoder")
    (tmp_path / "decoder" / "generation_config.json").write_text(json.dumps(GEN))
    randomize(CLIPVisionModel(vision_config("clip")), seed=2).save_pretrained(tmp_path / "tower")
    r = tiny_recipe(tmp_path, "llava", "stage.name=stage1", "train.max_steps=1")
    r.model.init, r.model.decoder, r.model.vision_tower = None, str(tmp_path / "decoder"), str(tmp_path / "tower")
    assert _eos(_run(r)) == [2, 7]


def test_a_source_without_one_writes_none(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", "llava")
    out = _run(tiny_recipe(tmp_path, "llava", f"model.init={base}", "train.max_steps=1"))
    assert not (tmp_path / "run" / "generation_config.json").exists() and _eos(out) == [2]
