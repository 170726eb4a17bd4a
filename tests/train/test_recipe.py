from pathlib import Path

import pytest
import yaml

from llavakit.cli import main
from llavakit.train.recipe import load_recipe

# recipes for `llava train` (other tools keep their own YAML files in recipes/ too, e.g. tiny-synth-stage0)
RECIPES = [
    p
    for p in sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))
    if set(yaml.safe_load(p.read_text())) <= {"model", "stage", "data", "train"}
]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_parses(path):
    r = load_recipe(path)
    assert r.train.global_batch_size % r.train.micro_batch_size == 0
    assert r.model.init or (r.model.decoder and r.model.vision_tower)


def test_published_hyperparameters():
    pre = load_recipe(RECIPES[0].parent / "llava-v1.5-pretrain.yaml")
    ft = load_recipe(RECIPES[0].parent / "llava-v1.5-finetune.yaml")
    assert (pre.stage.name, pre.stage.lr, pre.train.global_batch_size) == ("stage1", 1e-3, 256)
    assert (ft.stage.name, ft.stage.lr, ft.train.global_batch_size) == ("stage2", 2e-5, 128)
    assert pre.train.warmup_ratio == ft.train.warmup_ratio == 0.03 and ft.data.max_length == 2048


def test_overrides_are_typed_and_nested():
    r = load_recipe(
        None,
        [
            "train.max_steps=10",
            "stage.lr=1e-4",
            "stage.lora.rank=4",
            "stage.name=lora",  # after the lora keys: the recipe is checked whole
            "train.bf16=true",
            "train.adam_betas=[0.9, 0.95]",
            "stage.lora.target_modules=[q_proj]",
            "train.epochs=2",
        ],
    )
    assert r.train.max_steps == 10 and r.stage.lr == 1e-4 and r.stage.lora.rank == 4 and r.train.bf16 is True
    assert r.train.adam_betas == [0.9, 0.95] and r.stage.lora.target_modules == ["q_proj"]
    assert r.train.epochs == 2.0 and isinstance(r.train.epochs, float)
    assert load_recipe(None, ["train.max_steps=null"]).train.max_steps is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_stpes=3", r"unknown recipe key 'train.max_stpes'; did you mean train.max_steps"),
        ("trian.max_steps=3", r"unknown recipe key 'trian'"),
        ("train.max_steps=abc", r"train.max_steps must be int, got 'abc'"),
        ("train.bf16=2", r"train.bf16 must be bool"),
        ("stage.lora.rank=1.5", r"stage.lora.rank must be int"),
        ("stage.name=stage3", r"unknown stage 'stage3'"),
        ("train.max_steps", r"must look like section.key=value"),
        ("train.adam_betas=0.9", r"train.adam_betas must be a list"),
        # a value that is not YAML ended in PyYAML's traceback
        ("stage.lr=[1e-4", r"override 'stage.lr=\[1e-4': the value is not valid YAML \(.*\); close what is left"),
        ("data.path=@x.json", r"override 'data.path=@x.json': the value is not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(None, [override])


def test_the_stage0_recipe_is_read_with_the_same_checks(tmp_path):
    """The stage-0 loader had none: broken YAML, a section given twice and a value that is not YAML each ended in a
    traceback or (twice) silently kept the last."""
    from llavakit.train.stage0.run import load_stage0_recipe

    bad = tmp_path / "s0.yaml"
    bad.write_text("clip:\n  steps: [1\n")
    with pytest.raises(ValueError, match=r"stage 0 recipe .*s0.yaml is not valid YAML"):
        load_stage0_recipe(bad)
    bad.write_text("clip:\n  steps: 10\nclip:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match=r"s0.yaml: clip is given twice \(lines 1 and 3\)"):
        load_stage0_recipe(bad)
    with pytest.raises(ValueError, match=r"override 'clip.steps=\[1': the value is not valid YAML"):
        load_stage0_recipe(None, ["clip.steps=[1"])
    assert load_stage0_recipe(None, ["clip.steps=7"]).clip.steps == 7


def test_cli_errors_are_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_step: 3\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.max_step" in err and "max_steps" in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    capsys.readouterr()
    assert main(["train", str(recipe), "data.path='runs/a.json"]) == 2  # not YAML: one line, not a traceback
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not valid YAML" in err and "quote a text value whole" in err


def test_cli_trains_on_synth_data_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--out", "data/synth", "--n", "8", "--kind", "instruct"]) == 0
    recipe = Path(__file__).parents[2] / "recipes" / "tiny-finetune.yaml"
    common = [
        str(recipe),
        "model.init=tiny:llava_next",
        "train.max_steps=3",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.save_every=1",
        "train.progress=false",
        "data.max_length=1024",
    ]
    assert main(["train", *common, "train.stop_after=2"]) == 0
    said = "stopped after step 2 (train.stop_after), saved runs/tiny-finetune/checkpoints/step-00000002; continue"
    assert said in capsys.readouterr().out
    # overrides may also follow the flag (`llava train R.yaml --resume key=value`)
    assert main(["train", *common[:-2], "--resume", *common[-2:]]) == 0
    assert "trained to step 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # anything else after a flag is still an error
        main(["train", *common, "--resume", "--bogus"])
    out = tmp_path / "runs" / "tiny-finetune"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  max_steps: 3\n  seed: 1\n  max_steps: 5\n", "train.max_steps"),
        # a second section replaced the first whole: output_dir, batch sizes ... silently back to the defaults
        ("train:\n  output_dir: runs/mine\n  max_steps: 3\nstage:\n  lr: 1.0e-4\ntrain:\n  seed: 1\n", "train"),
    ],
)
def test_a_key_written_twice_in_the_yaml_is_refused_by_name(tmp_path, text, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(ValueError, match=rf"recipe {recipe}: {key} is given twice \(lines \d and \d\)"):
        load_recipe(recipe)
