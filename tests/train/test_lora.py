import json

import pytest
import torch
from loop_helpers import ColorDataset, collate_fn, tiny_recipe
from PIL import Image

from llavakit.cli import main
from llavakit.model.llava import LlavaModel
from llavakit.train.build import build_model
from llavakit.train.loop import train
from llavakit.train.lora import LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
from llavakit.train.recipe import ModelSpec
from llavakit.train.stages import LoraSpec


def _inputs(processor):
    img = Image.new("RGB", (90, 150), (10, 200, 90))
    return processor(text="<image>\nWhat is it? It is", images=[img])


@pytest.fixture
def lora_model(tmp_path):
    model, processor = build_model(ModelSpec(init="tiny:llava_next"))
    model.eval()
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    spec = LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    names = apply_lora(model, spec)
    assert len(names) == 2 * 3
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n or "multi_modal_projector" in n:  # a trained-looking adapter: B != 0
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model, processor, spec


def test_merge_gives_the_same_logits(lora_model):
    model, processor, _ = lora_model
    inputs = _inputs(processor)
    with torch.no_grad():
        before = model(**inputs).logits
        assert merge_lora(model) == 6
        after = model(**inputs).logits
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(".lora_" in k for k in model.state_dict())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_adapter_is_in_peft_format_and_peft_loads_it_onto_transformers(lora_model, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlavaNextForConditionalGeneration

    model, processor, spec = lora_model
    save_adapter(model, tmp_path / "adapter", spec, base_model=str(tmp_path / "base"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert "base_model.model.model.multi_modal_projector.linear_1.weight" in keys
    assert len([k for k in keys if ".lora_" in k]) == 12

    inputs = _inputs(processor)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    wrapped = [n for n, _ in peft_model.named_modules() if n.endswith("q_proj.lora_A")]
    assert len(wrapped) == 2  # decoder layers only, not the vision tower's q_proj
    with torch.no_grad():
        ref = peft_model(**inputs).logits
        ours = model(**inputs).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)

    # and back: our loader reads the adapter onto a fresh base
    fresh = LlavaModel.from_pretrained(tmp_path / "base")
    assert load_adapter(fresh, tmp_path / "adapter").rank == 4
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, ours, rtol=1e-6, atol=1e-6)

    # llava merge-lora: a plain HF checkpoint (config, weights, processor) with the same logits in transformers
    assert (
        main(
            [
                "merge-lora",
                "--base",
                str(tmp_path / "base"),
                "--adapter",
                str(tmp_path / "adapter"),
                "--out",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    assert (tmp_path / "merged" / "tokenizer.json").exists() and (tmp_path / "merged" / "config.json").exists()
    merged_hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged_hf(**inputs).logits, ours, rtol=1e-4, atol=1e-4)


def test_merge_lora_errors(tmp_path, capsys):
    assert main(["merge-lora", "--base", str(tmp_path), "--adapter", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_lora_run_resumes_exactly_and_writes_merged_output(tmp_path):
    def run(sub, *extra):
        r = tiny_recipe(
            tmp_path / sub,
            "llava",
            "stage.name=lora",
            "stage.lr=5e-3",
            "stage.lora.rank=4",
            "stage.lora.dropout=0.1",
            "train.max_steps=4",
            *extra,
        )
        model, processor = build_model(r.model)
        return train(r, model=model, processor=processor, dataset=ColorDataset(processor, 8), collate_fn=collate_fn)

    full = run("a")
    part = run("b", "train.save_every=2", "train.stop_after=3")
    rest = run("b", "train.save_every=2", "train.resume=true")
    # the stop saved step 3 (save_every=2 alone would have left step 2); dropout RNG restored too
    assert part.losses == full.losses[:3] and rest.steps == [4] and rest.losses == full.losses[3:]
    out = tmp_path / "b" / "run"
    ckpt = out / "checkpoints" / "step-00000002"
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    merged = LlavaModel.from_pretrained(out)  # a plain checkpoint: no LoRA keys
    assert not any(".lora_" in k for k in merged.state_dict())


def test_trained_checkpoint_loads_in_transformers_with_the_same_logits(tmp_path):
    from transformers import LlavaNextForConditionalGeneration

    r = tiny_recipe(tmp_path, "llava_next", "train.max_steps=2")
    model, processor = build_model(r.model)
    train(r, model=model, processor=processor, dataset=ColorDataset(processor, 4), collate_fn=collate_fn)
    out = tmp_path / "run"
    hf = LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    ours = LlavaModel.from_pretrained(out).eval()
    inputs = _inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, hf(**inputs).logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.eval()(**inputs).logits, hf(**inputs).logits, rtol=1e-4, atol=1e-4)


def test_adapter_loaded_onto_an_eval_model_keeps_dropout_off(lora_model, tmp_path):
    """LoRALinear modules take the mode of the model they join: with dropout in the adapter, an eval-mode model
    gives the same logits twice (they had stayed in training mode)."""
    model, processor, _ = lora_model
    spec = LoraSpec(rank=4, alpha=8, dropout=0.5, target_modules=["q_proj", "v_proj", "down_proj"])
    save_adapter(model, tmp_path / "adapter", spec, base_model=str(tmp_path / "base"))
    fresh = LlavaModel.from_pretrained(tmp_path / "base")
    assert not fresh.training
    load_adapter(fresh, tmp_path / "adapter")
    assert not any(m.training for m in fresh.modules())
    inputs = _inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, fresh(**inputs).logits, rtol=0, atol=0)


def test_a_target_that_matches_nothing_is_named():
    model, _ = build_model(ModelSpec(init="tiny:llava"))
    with pytest.raises(ValueError, match=r"\['qproj'\] match no Linear layer of the decoder \(a typo\?\)"):
        apply_lora(model, LoraSpec(rank=2, alpha=4, dropout=0.0, target_modules=["v_proj", "qproj"]))


def test_merge_lora_gives_the_template_the_adapter_trained_with(tmp_path, capsys):
    """A LoRA run on a stage-1 (`plain`) base trained with vicuna_v1: merge-lora's output prompts like the run's
    own merged output; an adapter without processor files (older llavakit) keeps the base's processor."""
    from loop_helpers import plain_base

    from llavakit.processing.processor import LlavaProcessor

    base = plain_base(tmp_path / "base")
    r = tiny_recipe(tmp_path, "llava", f"model.init={base}", "data.template=vicuna_v1", "stage.name=lora")
    r.train.max_steps, r.stage.lora.rank = 1, 4
    model, processor = build_model(r.model)
    train(r, model=model, processor=processor, dataset=ColorDataset(processor, 4), collate_fn=collate_fn)
    adapter, run = tmp_path / "run" / "adapter", tmp_path / "run"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())

    def merged_template(out):
        assert main(["merge-lora", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]) == 0
        return LlavaProcessor.from_pretrained(out).template

    assert merged_template(tmp_path / "m1") == LlavaProcessor.from_pretrained(run).template == "vicuna_v1"
    assert (tmp_path / "m1" / "chat_template.jinja").read_text() == (run / "chat_template.jinja").read_text()
    for f in adapter.iterdir():
        if f.name not in ("adapter_config.json", "adapter_model.safetensors"):
            f.unlink()
    assert merged_template(tmp_path / "m2") == "plain"


def test_merge_lora_keeps_the_base_checkpoints_dtype(tmp_path):
    """A bfloat16 base merges into a bfloat16 checkpoint (as `llava convert` keeps the stored dtype; it came out
    float32, twice the size); --dtype still picks another; the merge itself is computed in float32."""
    from safetensors import safe_open

    model, processor = build_model(ModelSpec(init="tiny:llava"))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    spec = LoraSpec(rank=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model.float()
    apply_lora(model, spec)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.3)
    save_adapter(model, tmp_path / "adapter", spec)

    def stored(out, *extra):
        args = ["merge-lora", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter")]
        assert main([*args, "--out", str(out), *extra]) == 0
        with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
            return {f.get_tensor(k).dtype for k in f.keys()}

    assert stored(tmp_path / "m1") == {torch.bfloat16}
    assert stored(tmp_path / "m2", "--dtype", "float32") == {torch.float32}
    merged = LlavaModel.from_pretrained(tmp_path / "m2")
    layer = model.model.language_model.layers[0].self_attn.q_proj
    torch.testing.assert_close(merged.model.language_model.layers[0].self_attn.q_proj.weight, layer.merged().weight)


@pytest.mark.parametrize(
    "change,said",
    [
        (lambda c: c.pop("r"), "lacks 'r'"),
        (lambda c: c.pop("lora_alpha"), "lacks 'lora_alpha'"),
        (lambda c: c.update(r="four"), "bad r / lora_alpha"),
        (None, "is not valid JSON"),
    ],
)
def test_a_broken_adapter_config_is_one_clear_line(lora_model, tmp_path, capsys, change, said):
    """merge-lora on an adapter_config.json without r (or not JSON) ended in a KeyError traceback."""
    model, _, spec = lora_model
    save_adapter(model, tmp_path / "adapter", spec)
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    if change is None:
        cfg_path.write_text('{"peft_type": "LORA", ')
    else:
        cfg = json.loads(cfg_path.read_text())
        change(cfg)
        cfg_path.write_text(json.dumps(cfg))
    args = ["merge-lora", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter")]
    assert main([*args, "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert said in err and "adapter_config.json" in err and "Traceback" not in err


def test_load_adapter_onto_lora_layers_with_another_scaling_is_refused(lora_model, tmp_path):
    """A model that already has LoRA layers kept their alpha / rank: an adapter trained with alpha 32 loaded
    onto alpha-8 layers gave other outputs with no word. Now refused unless the settings agree."""
    model, _, spec = lora_model
    other = LoraSpec(rank=4, alpha=32, dropout=0.0, target_modules=spec.target_modules)
    save_adapter(model, tmp_path / "adapter", other)
    fresh = LlavaModel.from_pretrained(tmp_path / "base")
    apply_lora(fresh, spec)  # alpha 8
    with pytest.raises(ValueError, match=r"alpha 32.0.*LoRA layers have rank 4, alpha 8"):
        load_adapter(fresh, tmp_path / "adapter")
    save_adapter(model, tmp_path / "same", spec)
    assert load_adapter(fresh, tmp_path / "same").alpha == 8  # the same settings still load


def test_base_model_id_names_local_dirs_absolutely_and_hub_ids_as_they_are(tmp_path, monkeypatch):
    from llavakit.train.loop import base_model_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    assert base_model_id("base") == str((tmp_path / "base").resolve())
    assert base_model_id("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert base_model_id("tiny:llava") is None and base_model_id(None) is None


def test_a_cut_short_adapter_weights_file_is_one_clear_line(lora_model, tmp_path, capsys):
    """merge-lora on an adapter_model.safetensors cut short (a copy or a save interrupted) ended in a
    SafetensorError traceback (no ValueError): now one line naming the file."""
    model, _, spec = lora_model
    save_adapter(model, tmp_path / "adapter", spec)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    args = ["merge-lora", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter")]
    assert main([*args, "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert f"{weights} is not a readable safetensors file" in err and "Traceback" not in err
