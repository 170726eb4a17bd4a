"""`llava merge-lora` refuses an adapter trained on another model (family or shapes) before writing anything, and
still merges an adapter onto the same model under another path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llavakit.cli import main
from llavakit.train.build import build_model
from llavakit.train.lora import apply_lora, save_adapter
from llavakit.train.recipe import ModelSpec
from llavakit.train.stages import LoraSpec


def _base(path, family: str):  # noqa: ANN001, ANN202
    model, processor = build_model(ModelSpec(init=f"tiny:{family}"))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


def _our_adapter(tmp_path, family: str = "llava_next"):  # noqa: ANN001, ANN202
    """A llavakit run's adapter/ (adapter + the run's processor) trained on tmp_path / family."""
    model, processor = _base(tmp_path / family, family)
    spec = LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    apply_lora(model, spec)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.3)
    save_adapter(model, tmp_path / "adapter", spec, base_model=str(tmp_path / family))
    processor.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _merge(base, adapter, out) -> int:  # noqa: ANN001
    return main(["merge-lora", "--base", str(base), "--adapter", str(adapter), "--out", str(out)])


def test_peft_adapter_of_another_family_is_refused(tmp_path, capsys, monkeypatch):
    """A PEFT adapter made on transformers' LlavaNextForConditionalGeneration merged into a llava base: the
    language models have the same shapes, so it merged, and transformers could not run the result."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaNextForConditionalGeneration

    _base(tmp_path / "llava_next", "llava_next")
    _base(tmp_path / "llava", "llava")
    monkeypatch.chdir(tmp_path)  # PEFT records the base path as given: relative here
    hf = LlavaNextForConditionalGeneration.from_pretrained("llava_next")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    get_peft_model(hf, cfg).save_pretrained("peft")
    assert _merge("llava", "peft", "out") == 2
    err = capsys.readouterr().err
    assert "trained on a llava_next model" in err and "LlavaNextForConditionalGeneration" in err
    assert "--base llava is a llava model" in err
    assert not (tmp_path / "out").exists()
    shutil.copytree(tmp_path / "llava_next", tmp_path / "elsewhere")  # the same model under another path merges
    assert _merge("elsewhere", "peft", "out") == 0


def test_our_adapter_of_another_family_is_refused(tmp_path, capsys):
    adapter = _our_adapter(tmp_path, "llava_next")
    _base(tmp_path / "llava", "llava")
    assert _merge(tmp_path / "llava", adapter, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "trained on a llava_next model (the processor beside it is a LlavaNextProcessor)" in err
    assert str(tmp_path / "llava_next") in err  # the base it names
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("moved", [False, True])
def test_the_same_model_under_another_path_merges(tmp_path, moved):
    """Paths are not compared: a copy of the base merges, and so does the base after the recorded one is gone."""
    adapter = _our_adapter(tmp_path)
    shutil.copytree(tmp_path / "llava_next", tmp_path / "copy")
    if moved:
        shutil.rmtree(tmp_path / "llava_next")
    assert _merge(tmp_path / "copy", adapter, tmp_path / "out") == 0
    assert (tmp_path / "out" / "config.json").exists()


def test_a_recorded_base_of_other_shapes_is_refused(tmp_path, capsys):
    """The recorded base has a deeper vision tower than --base: the adapter's tensors (the language model's) fit
    both, the model it was trained on is not --base."""
    adapter = _our_adapter(tmp_path)
    shutil.copytree(tmp_path / "llava_next", tmp_path / "other")
    cfg_path = tmp_path / "llava_next" / "config.json"  # the recorded base now differs from the copy
    cfg = json.loads(cfg_path.read_text())
    cfg["vision_config"]["num_hidden_layers"] += 1
    cfg_path.write_text(json.dumps(cfg))
    assert _merge(tmp_path / "other", adapter, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"trained on {tmp_path / 'llava_next'}, which differs from --base" in err and "vision layers" in err
    assert not (tmp_path / "out").exists()
