"""Recipe values outside their range are refused when the recipe is built, naming the key as written in the YAML;
``llava train`` reports them (and data that no sample survives) in one line with exit code 2."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from train_helpers import conv, tiny_processor, write_image

from llavakit.cli import main
from llavakit.train.data import DataExhausted, SupervisedDataset
from llavakit.train.loop import train
from llavakit.train.recipe import DataSpec, ModelSpec, RecipeError, TrainSpec, load_recipe
from llavakit.train.stages import LoraSpec, StageSpec


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.micro_batch_size=0", r"^train.micro_batch_size must be >= 1, got 0$"),
        ("train.global_batch_size=0", r"^train.global_batch_size must be >= 1, got 0$"),
        ("train.global_batch_size=6", r"train.global_batch_size \(6\) must be a multiple of train.micro_batch"),
        ("stage.lr=-1", r"^stage.lr must be > 0 \(a learning rate such as 2e-5\), got -1.0$"),
        ("stage.lr=0", r"^stage.lr must be > 0"),
        ("stage.projector_lr=-1e-4", r"^stage.projector_lr must be > 0"),
        ("stage.vision_lr=0", r"^stage.vision_lr must be > 0"),
        ("train.max_steps=0", r"^train.max_steps must be >= 1 \(or null / -1 to let train.epochs decide\), got 0$"),
        ("train.max_steps=-2", r"^train.max_steps must be >= 1"),
        ("train.warmup_ratio=5", r"^train.warmup_ratio must be in \[0, 1\) .*got 5.0$"),
        ("train.warmup_ratio=1", r"^train.warmup_ratio must be in \[0, 1\)"),
        ("train.warmup_ratio=-0.1", r"^train.warmup_ratio must be in \[0, 1\)"),
        ("data.max_length=0", r"^data.max_length must be >= 1 .*got 0$"),
        ("data.num_frames=0", r"^data.num_frames must be >= 1"),
        ("data.on_error=ignore", r"^data.on_error must be one of raise, skip"),
        ("data.background_drop=[0.5, 2]", r"^data.background_drop must be \[start, end\] probabilities in"),
        ("stage.weight_decay=-0.1", r"^stage.weight_decay must be >= 0"),
        ("train.epochs=0", r"^train.epochs must be > 0"),
        ("train.epochs=.nan", r"^train.epochs must be a finite number, got nan$"),
        ("train.max_grad_norm=-1", r"^train.max_grad_norm must be >= 0 \(0 turns clipping off\)"),
        ("train.adam_betas=[0.9, 1.0]", r"^train.adam_betas must be in \[0, 1\)"),
        ("train.adam_betas=[0.9]", r"^train.adam_betas must be two values"),
        ("train.adam_eps=0", r"^train.adam_eps must be > 0"),
        ("train.seed=-1", r"^train.seed must be in \[0, 4294967296\)"),
        ("train.log_every=0", r"^train.log_every must be >= 1"),
        ("train.save_every=-1", r"^train.save_every must be >= 0"),
        ("train.keep_last=0", r"^train.keep_last must be >= 1"),
        ("train.stop_after=0", r"^train.stop_after must be >= 1"),
        ("train.schedule=linear", r"^train.schedule must be one of cosine, constant"),
        ("train.device=cuda:0", r"^train.device must be one of auto, cpu, cuda, got 'cuda:0'$"),
        ("train.output_dir=''", r"^train.output_dir must not be empty"),
        ("stage.lora.rank=0", r"^stage.lora.rank must be >= 1"),
        ("stage.lora.alpha=0", r"^stage.lora.alpha must be > 0"),
        ("stage.lora.dropout=1", r"^stage.lora.dropout must be in \[0, 1\)"),
        ("stage.lora.target_modules=[]", r"^stage.lora.target_modules must name at least one module"),
        ("model.seed=-3", r"^model.seed must be in \[0, "),
        ("model.image_grid_pinpoints=[[80, 0]]", r"^model.image_grid_pinpoints\[0\] must be >= 1"),
        # the original LLaVA's spelling built a model that kept the CLS token ("full") without a word
        ("model.vision_feature_select_strategy=patch", r"^model.vision_feature_select_strategy must be one of default"),
        # a template name was checked only at the first step, after the model loaded and the data were scanned
        ("data.template=vicuna", r"^data.template: unknown conversation template 'vicuna'; choose one of"),
        ("model.template=chatml2", r"^model.template: unknown conversation template 'chatml2'"),
        ("data.datasets=[{path: a.json, template: vicunna}]", r"^data.datasets\[0\].template: unknown conversation"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(override, message):
    overrides = ["train.micro_batch_size=4", override]
    if override.startswith("stage.vision_lr"):
        overrides.append("stage.name=stage2")
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides)


def test_edge_values_inside_the_ranges_are_accepted():
    r = load_recipe(
        None,
        [
            "train.warmup_ratio=0",
            "train.max_grad_norm=0",
            "train.save_every=0",
            "train.max_steps=null",
            "train.stop_after=1",
            "train.global_batch_size=1",
            "train.micro_batch_size=1",
            "stage.weight_decay=0",
            "stage.name=lora",
            "stage.lora.dropout=0",
            "data.max_length=1",
            "data.background_drop=[0, 1]",
            "train.seed=0",
        ],
    )
    assert r.train.max_steps is None and r.train.warmup_ratio == 0.0 and r.data.background_drop == [0, 1]
    assert load_recipe(None, ["train.max_steps=1", "train.warmup_ratio=0.99"]).train.max_steps == 1
    assert load_recipe(None, ["train.max_steps=-1"]).train.max_steps is None  # transformers' "epochs decide"


def test_specs_built_in_python_are_checked_too():
    with pytest.raises(RecipeError, match="^train.micro_batch_size must be >= 1, got 0$"):
        TrainSpec(micro_batch_size=0)
    with pytest.raises(RecipeError, match="^stage.lr must be > 0"):
        StageSpec(lr=-1.0)
    with pytest.raises(RecipeError, match="^data.max_length must be >= 1"):
        DataSpec(max_length=0)
    with pytest.raises(RecipeError, match="^stage.lora.rank must be >= 1"):
        LoraSpec(rank=0)
    with pytest.raises(RecipeError, match="^model.seed must be in"):
        ModelSpec(seed=-1)
    with pytest.raises(RecipeError, match="^train.warmup_ratio must be in"):
        dataclasses.replace(TrainSpec(), warmup_ratio=5.0)


@pytest.mark.parametrize(
    "overrides, keys",
    [
        (["model.vision_feature_layer=0"], "model.vision_feature_layer"),
        (["model.projector_type=linear", "model.image_grid_pinpoints=[[64, 64]]"], "model.projector_type, model.image"),
        (["model.vision_feature_select_strategy=full"], "model.vision_feature_select_strategy"),
        (["model.vision_aspect_ratio=anyres_max_4"], "model.vision_aspect_ratio"),
        (["model.family=llava_next"], "model.family"),
    ],
)
@pytest.mark.parametrize("init", ["runs/stage1", "tiny:llava"])
def test_model_settings_that_an_init_checkpoint_ignores_are_refused(init, overrides, keys):
    """They shape a model built from decoder + vision_tower; an init checkpoint brings its own."""
    with pytest.raises(RecipeError, match=rf"^{re.escape(keys)}.*: these apply only when building from decoder"):
        load_recipe(None, [f"model.init={init}", *overrides])
    assert load_recipe(None, ["model.decoder=d", "model.vision_tower=t", *overrides]).model.decoder == "d"
    assert load_recipe(None, [f"model.init={init}", "model.template=vicuna_v1"]).model.init == init


def test_path_next_to_datasets_and_disagreeing_templates_are_refused():
    with pytest.raises(RecipeError, match=r"^data: give either path \(one dataset\) or datasets"):
        load_recipe(None, ["data.datasets=[{path: a.json}]", "data.path=b.json"])
    with pytest.raises(RecipeError, match="^model.template 'plain' and data.template 'vicuna_v1' disagree"):
        load_recipe(None, ["model.template=plain", "data.template=vicuna_v1"])
    r = load_recipe(None, ["model.template=vicuna_v1", "data.template=vicuna_v1"])
    r.model.template = "plain"
    with pytest.raises(RecipeError, match="disagree"):
        r.check()


def test_cli_refuses_a_datasets_path_that_is_no_string_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model:\n  init: tiny:llava\ntrain:\n  output_dir: {tmp_path / 'run'}\n  max_steps: 2\n")
    assert main(["train", str(recipe), "data.datasets=[{path: 123}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "llava train: error: data.datasets[0].path must be a file path (a string), got 123"


def test_train_refuses_a_recipe_changed_after_loading(tmp_path):
    out = tmp_path / "run"
    r = load_recipe(None, ["model.init=tiny:llava", f"train.output_dir={out}", "train.max_steps=2"])
    r.train.max_steps = 0
    with pytest.raises(RecipeError, match="^train.max_steps must be >= 1"):
        train(r)
    r.train.max_steps, r.stage.lr = 2, -1.0
    with pytest.raises(RecipeError, match="^stage.lr must be > 0"):
        train(r)
    assert not out.exists()  # nothing written, no untrained "output"


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.micro_batch_size=0", "train.micro_batch_size"),
        ("train.global_batch_size=0", "train.global_batch_size"),
        ("stage.lr=-1", "stage.lr"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.warmup_ratio=5", "train.warmup_ratio"),
        ("data.max_length=0", "data.max_length"),
    ],
)
def test_cli_refuses_bad_values_in_one_line_with_exit_2(tmp_path, capsys, override, key):
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "run"
    recipe.write_text(f"model:\n  init: tiny:llava\ntrain:\n  output_dir: {out}\n  max_steps: 2\n")
    assert main(["train", str(recipe), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"llava train: error: {key} must be") and "Traceback" not in err
    assert not out.exists()


def _too_long_data(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", 30, 40)
    recs = [{"id": f"r{i}", "image": "a.png", "conversations": conv("<image>\nWhat?", f"A{i}.")} for i in range(4)]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    return tmp_path / "d.json", tmp_path / "imgs"


def test_max_length_that_no_sample_fits_is_a_value_error_naming_the_fix(tmp_path):
    path, images = _too_long_data(tmp_path)
    ds = SupervisedDataset(path, images, tiny_processor("llava"), None, 10)
    expected = r"all 4 samples failed \(\{'too_long': 4\}\).*raise data.max_length \(now 10\)"
    with pytest.raises(DataExhausted, match=expected):
        ds[0]
    assert issubclass(DataExhausted, ValueError)
    with pytest.raises(ValueError, match="data.max_length must be an int >= 1"):
        SupervisedDataset(path, images, tiny_processor("llava"), None, 0)


def test_cli_reports_too_small_max_length_in_one_line(tmp_path, capsys):
    path, images = _too_long_data(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model:\n  init: tiny:llava\n"
        f"data:\n  path: {path}\n  image_folder: {images}\n  max_length: 10\n"
        f"train:\n  output_dir: {tmp_path / 'run'}\n  max_steps: 2\n  global_batch_size: 2\n  micro_batch_size: 1\n"
        "  save_every: 0\n  progress: false\n"
    )
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "too_long" in err and "raise data.max_length (now 10)" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()
