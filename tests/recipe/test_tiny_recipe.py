"""The whole tiny recipe, scaled down: data -> stage 0 -> stage 1 -> stage 2 through the real YAML recipes."""

import json

import pytest
import torch

from llavakit.data.synth import trained_sides
from llavakit.model.llava import LlavaModel
from llavakit.processing.processor import LlavaProcessor
from script_module import load_script


def test_scaled_down_recipe_runs_all_stages(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--quick", "--out", str(out), "--captions", "48", "--warmup", "32", "--instruct", "64"]
    args += ["--more-instruct", "32", "--more-passes", "2", "--eval-scenes", "0", "--position-passes", "1"]
    args += ["--mix-existence", "--place-passes", "1", "--read-pass", "1", "--bind-pass", "1", "--count-repeats", "2"]
    args += ["--stage0-set", "clip.centre_labels=true", "--stage0-set", "clip.lr=2e-3"]  # YAML reads 2e-3 as a str
    assert load_script("train_default_model").main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s1_start, _ = summary["stage1_loss"]
    _, s2_end = summary["stage2_loss"]
    assert s2_end < s1_start, summary
    # each model of the run says the scene sizes it was trained on, which `llava demo / eval synth --model` read (they
    # asked a run's model about scenes of other sizes); the last one carries the run's whole summary, as shipped
    sides = tuple(summary["scene_long_side"])
    assert trained_sides(out / "stage2_mix") == sides and trained_sides(out / "stage1") == sides
    assert json.loads((out / "stage2_mix" / "training.json").read_text())["samples"] == summary["samples"]
    s0 = json.loads((out / "stage0" / "stage0.json").read_text())
    assert s0["recipe"]["clip"]["centre_labels"] is True  # --stage0-set reached the stage-0 recipe
    assert summary["stage0"]["clip_loss"] == s0["clip_loss"] and summary["stage0"]["lm_loss"] == s0["lm_loss"]
    assert all((out / "stage0" / part / "config.json").exists() for part in ("vision_tower", "decoder"))
    # the grounding pass ran between stages 1 and 2 (its own tests: test_ground_attention.py) and stage 2 began there
    assert summary["ground_steps"] and "ground" in summary["seconds"]
    recipe = json.loads((out / "stage2_warmup" / "recipe.json").read_text())
    assert recipe["model"]["init"] == str(out / "stage1_ground")
    # the passes on 1-8 shapes: each from the one before, on its own fresh scenes
    assert summary["samples"]["more_passes"] == 2
    recipe = json.loads((out / "stage2c" / "recipe.json").read_text())
    assert recipe["model"]["init"] == str(out / "stage2_read")
    assert recipe["data"]["image_folder"] == str(out / "data3")
    # (--bind-pass 1) the first of them a place pass with the attribute heads
    bind = json.loads((out / "stage2b" / "place.json").read_text())
    assert bind["init"] == str(out / "stage2") and bind["data"] == [str(out / "data2")] and bind["attributes"]
    assert summary["samples"]["bind_pass"] == 1 and bind["final"] and not bind["read_head"]
    # (--place-passes 1) the two place passes between the first two, on position questions about 1-2 shapes
    assert summary["samples"]["place_passes"] == 2 and {"stage2_place", "stage2_place2"} <= set(summary["seconds"])
    assert all((out / name / "model.safetensors").exists() for name in ("stage2_place", "stage2_place2"))
    placed = [json.loads(line) for line in (out / "data_place" / "scenes.jsonl").read_text().splitlines()]
    assert placed and all(1 <= len(sc["scene"]["shapes"]) <= 2 for sc in placed)
    records = json.loads((out / "data_place" / "instruct.json").read_text())
    place_asked = [t["value"] for r in records for t in r["conversations"] if t["from"] == "human"]
    assert place_asked and all(" or the " in q for q in place_asked), place_asked[:3]
    # (--count-passes 1, the default) then two count passes on count conversations alone, from the place passes
    counts = json.loads((out / "data_count" / "instruct.json").read_text())
    count_asked = [t["value"] for r in counts for t in r["conversations"] if t["from"] == "human"]
    assert count_asked and all(q.startswith(("<image>\nHow many", "How many")) for q in count_asked), count_asked[:3]
    assert summary["samples"]["count_passes"] == 2 and summary["samples"]["count_repeats"] == 2
    chain = (("stage2_place", "stage2b", ["data_place"] * 2), ("stage2_place2", "stage2_place", ["data_place"] * 2))
    # (--count-repeats 2) the count data twice in each, the place data once more in the second
    chain += (("stage2_count", "stage2_place2", ["data_count"] * 2),)
    chain += (("stage2_count2", "stage2_count", ["data_count"] * 2 + ["data_place"]),)
    # (--read-pass 1) reading questions three times, the place data once more
    chain += (("stage2_read", "stage2_count2", ["data_read"] * 3 + ["data_place"]),)
    for name, init, data in chain:
        record = json.loads((out / name / "place.json").read_text())
        assert record["init"] == str(out / init) and record["data"] == [str(out / d) for d in data], record
    read = json.loads((out / "stage2_read" / "place.json").read_text())
    assert read["read_head"] and read["final"] and summary["samples"]["read_pass"] == 1
    lines = (out / "data_read" / "scenes.jsonl").read_text().splitlines()
    texts = [json.loads(line)["scene"]["text"] for line in lines]
    asked = [r["conversations"][0]["value"] for r in json.loads((out / "data_read" / "instruct.json").read_text())]
    assert asked and sum(t is not None for t in texts) == len(asked) and all(" is written in" in q for q in asked)
    first = lambda d: json.loads((out / d / "instruct.json").read_text())[0]["conversations"]  # noqa: E731
    assert first("data2") != first("data3")
    assert not (out / "stage2d").exists()
    # then (--position-passes 1) lone-object position questions, then a pass on 1-8 shapes with some mixed in
    assert summary["samples"]["position_passes"] == 2
    lone = json.loads((out / "data_pos" / "instruct.json").read_text())
    scenes = [json.loads(line) for line in (out / "data_pos" / "scenes.jsonl").read_text().splitlines()]
    assert lone and all(len(sc["scene"]["shapes"]) == 1 for sc in scenes)
    asked = [t["value"] for r in lone for t in r["conversations"] if t["from"] == "human"]
    assert all(" or the " in q and ("left" in q or "top" in q) for q in asked), asked[:3]
    recipe = json.loads((out / "stage2_pos" / "recipe.json").read_text())
    assert recipe["model"]["init"] == str(out / "stage2c") and recipe["data"]["image_folder"] == str(out / "data_pos")
    recipe = json.loads((out / "stage2_mix" / "recipe.json").read_text())
    assert recipe["model"]["init"] == str(out / "stage2_pos")
    assert [d["image_folder"] for d in recipe["data"]["datasets"]] == [str(out / "data_mix"), str(out / "data_pos2")]
    # --mix-existence: the mixed pass's lone-object conversations ask existence too, the position pass's do not
    mixed = [
        t["value"] for r in json.loads((out / "data_pos2" / "instruct.json").read_text()) for t in r["conversations"]
    ]
    assert any(q.startswith("Is there") for q in mixed) and not any(q.startswith("Is there") for q in asked)
    model = LlavaModel.from_pretrained(out / "stage2")
    proc = LlavaProcessor.from_pretrained(out / "stage2")
    assert model.config.model_type == "llava_next" and proc.template == "vicuna_v1"
    assert model.config.image_token_id == proc.tokenizer.image_token_id == 4
    # stage 1 kept the stage-0 decoder as it was; stage 2 trained it
    from safetensors.torch import load_file

    base = load_file(str(out / "stage0" / "decoder" / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    key = "model.language_model.layers.0.mlp.up_proj.weight"
    s1 = LlavaModel.from_pretrained(out / "stage1").state_dict()[key]
    assert torch.equal(s1, base) and not torch.equal(s1, model.state_dict()[key])
    # --continue refuses a stage 0 trained with other --stage0-set values (compared as the recipe builds them: the
    # run's own clip.lr=2e-3 is kept, as the --continue calls below show)
    with pytest.raises(SystemExit, match="trained with clip.centre_labels=True, but --stage0-set asks for False"):
        load_script("train_default_model").main([*args, "--continue", "--stage0-set", "clip.centre_labels=false"])
    with pytest.raises(SystemExit, match="trained with clip.max_seconds=None, but --stage0-set asks for 60"):
        load_script("train_default_model").main([*args, "--continue", "--stage0-set", "clip.max_seconds=60"])
    record = json.loads((out / "stage0" / "stage0.json").read_text())  # a stage 0 that recorded no recipe
    (out / "stage0" / "stage0.json").write_text(json.dumps({k: v for k, v in record.items() if k != "recipe"}))
    with pytest.raises(SystemExit, match="trained without clip.centre_labels in its stage0.json"):
        load_script("train_default_model").main([*args, "--continue"])
    (out / "stage0" / "stage0.json").write_text(json.dumps(record))
    # --continue refuses a later pass trained in another chain (here stage2c from the place passes, asked without them)
    with pytest.raises(SystemExit, match="stage2c was trained from .*stage2_read"):
        without = ["--place-passes", "0", "--count-passes", "0", "--count-repeats", "1", "--bind-pass", "1"]
        without += ["--read-pass", "0"]
        load_script("train_default_model").main([*args, "--continue", *without])
    # ... a first pass on 1-8 shapes trained as the bind pass, asked as a plain pass
    with pytest.raises(SystemExit, match="stage2b was trained with --bind-pass 1"):
        load_script("train_default_model").main([*args, "--continue", "--bind-pass", "0"])
    # ... and place passes trained on other data (here seen twice for the count passes, asked without them)
    with pytest.raises(SystemExit, match="stage2_place was trained on .*--count-passes 1"):
        load_script("train_default_model").main([*args, "--continue", "--count-passes", "0", "--count-repeats", "1"])
    # a marker written before the pass options existed counts as their old defaults: kept as it is ...
    marker = out / "stage2_place" / "place.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: v for k, v in record.items() if k not in ("attributes", "read_head")}))
    assert load_script("train_default_model").main([*args, "--continue"]) == 0
    # ... and one trained with other options is refused
    marker.write_text(json.dumps({**record, "read_head": True}))
    with pytest.raises(SystemExit, match="stage2_place was trained on .*'read_head': True"):
        load_script("train_default_model").main([*args, "--continue"])
    marker.write_text(json.dumps({**record, "final": True}))  # final: how the second place pass is trained
    with pytest.raises(SystemExit, match="stage2_place was trained on .*'final': True"):
        load_script("train_default_model").main([*args, "--continue"])
    marker.write_text(json.dumps(record))
    # stage2_place2's data are the same with and without the count passes: no --count-passes hint for other options
    marker2 = out / "stage2_place2" / "place.json"
    marker2.write_text(json.dumps({**json.loads(marker2.read_text()), "final": False}))
    with pytest.raises(SystemExit, match="stage2_place2 was trained on .*'final': False") as refused:
        load_script("train_default_model").main([*args, "--continue"])
    assert "--count-passes" not in str(refused.value)


def test_bind_pass_auto_checks_the_plain_pass_and_binds_only_below_the_threshold(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--quick", "--out", str(out), "--captions", "48", "--warmup", "32", "--instruct", "64"]
    args += ["--ground-steps", "0", "--more-instruct", "32", "--more-passes", "2", "--eval-scenes", "0"]
    args += ["--place-passes", "0", "--count-passes", "0"]  # --bind-pass auto is the default
    script = load_script("train_default_model")
    script.BIND_CHECK["below"] = 1.01  # any score is below: the bind pass runs
    assert script.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    check = json.loads((out / "bind_check.json").read_text())
    assert summary["bind_check"] == check and check["bind"] and check["model"] == str(out / "stage2b")
    assert summary["samples"]["bind_pass"] == "auto" and "bind_check" in summary["seconds"]
    # asked on validation scenes (the notebook's validation seed), colour questions only
    asked = [json.loads(line) for line in (out / "data_check" / "eval.jsonl").read_text().splitlines()]
    assert asked and all(r["qtype"] == "color" and r["id"].startswith("s1500000_") for r in asked)
    assert 0 < check["questions"] <= len(asked) and 0.0 <= check["value"] <= 1.0
    # the plain pass stays; the bind pass starts from it, on the same data; the next pass from the bind pass
    assert (out / "stage2b" / "metrics.jsonl").exists() and not (out / "stage2b" / "place.json").exists()
    bind = json.loads((out / "stage2b_bind" / "place.json").read_text())
    assert bind["init"] == str(out / "stage2b") and bind["data"] == [str(out / "data2")] and bind["attributes"]
    assert json.loads((out / "stage2c" / "recipe.json").read_text())["model"]["init"] == str(out / "stage2b_bind")
    # --continue asks again (afresh: the same answers) and keeps every pass
    stamps = lambda: [(out / d / "model.safetensors").stat().st_mtime_ns for d in ("stage2b_bind", "stage2c")]  # noqa: E731
    before = stamps()
    assert script.main([*args, "--continue"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bind_check"] == check
    assert stamps() == before
    # a bind pass of the recipe of session 41 (from the checkpoint before the plain pass) is refused
    marker = out / "stage2b_bind" / "place.json"
    kept = marker.read_text()
    marker.write_text(json.dumps({**json.loads(kept), "init": str(out / "stage2")}) + "\n")
    older = r"stage2b_bind was trained from .*stage2, but this recipe trains it from .*stage2b"
    with pytest.raises(SystemExit, match=older):
        script.main([*args, "--continue"])
    marker.write_text(kept)
    # a check that keeps the plain pass refuses the later pass trained from the bind pass ...
    script.BIND_CHECK["below"] = 0.0  # no score is below
    with pytest.raises(SystemExit, match="stage2c was trained from .*stage2b_bind"):
        script.main([*args, "--continue"])
    # ... and trains it from the plain pass once it is gone, without the bind pass
    for name in ("stage2b_bind", "stage2c"):
        (out / name).rename(out / f"old_{name}")
    assert script.main([*args, "--continue"]) == 0
    assert not json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bind_check"]["bind"]
    assert json.loads((out / "stage2c" / "recipe.json").read_text())["model"]["init"] == str(out / "stage2b")
    assert not (out / "stage2b_bind").exists()
    # a check asking for the bind pass on that chain refuses before it trains
    script.BIND_CHECK["below"] = 1.01
    with pytest.raises(SystemExit, match="stage2c was trained from the plain stage2b, but the colour check asks"):
        script.main([*args, "--continue"])
    assert not (out / "stage2b_bind").exists()
    # a plain first pass asked as the bind pass is refused, naming the options it was trained with
    with pytest.raises(SystemExit, match="stage2b was trained with --bind-pass 0.*rerun with --bind-pass 0 or auto"):
        script.main([*args, "--continue", "--bind-pass", "1"])


def test_position_early_places_the_lone_object_pass_after_the_warm_up(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--quick", "--out", str(out), "--captions", "48", "--warmup", "32", "--instruct", "64"]
    args += ["--ground-steps", "0", "--more-instruct", "32", "--more-passes", "1", "--eval-scenes", "0"]
    args += ["--position-early", "--place-passes", "0"]
    assert load_script("train_default_model").main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"]["position_early"] is True and summary["samples"]["position_passes"] == 0
    # the lone-object position pass starts from the warm-up; the first conversation pass from it
    recipe = json.loads((out / "stage2_pos" / "recipe.json").read_text())
    assert recipe["model"]["init"] == str(out / "stage2_warmup")
    assert recipe["data"]["image_folder"] == str(out / "data_pos")
    assert json.loads((out / "stage2" / "recipe.json").read_text())["model"]["init"] == str(out / "stage2_pos")
    # every conversation pass mixes in its own share of lone-object position and existence conversations
    for name, data, share in (("stage2", "data_easy", "lone0"), ("stage2b", "data2", "lone1")):
        sets = json.loads((out / name / "recipe.json").read_text())["data"]["datasets"]
        assert [d["image_folder"] for d in sets] == [str(out / data), str(out / share)]
    for share, n in (("lone0", 64 // 8), ("lone1", 32 // 8)):
        scenes = (out / share / "scenes.jsonl").read_text().splitlines()
        assert len(scenes) == n and all(len(json.loads(s)["scene"]["shapes"]) == 1 for s in scenes)
        records = json.loads((out / share / "instruct.json").read_text())
        asked = [t["value"] for r in records for t in r["conversations"]]
        assert any(" or the " in q for q in asked) and any(q.startswith("Is there") for q in asked), asked[:4]
    assert (out / "lone0" / "instruct.json").read_text() != (out / "lone1" / "instruct.json").read_text()


def test_fresh_count_passes_then_a_pass_distilling_the_third(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--quick", "--out", str(out), "--captions", "48", "--warmup", "32", "--instruct", "64"]
    args += ["--more-instruct", "32", "--more-passes", "2", "--eval-scenes", "0", "--bind-pass", "0"]
    assert load_script("train_default_model").main([*args, "--fresh-count", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"]["fresh_count"] == 1 and summary["samples"]["count_passes"] == 3
    # three count passes, each on fresh count scenes three times data_count's 12 (32 * 3 // 8), the third with the
    # place data once; no data_count of its own
    chain = (("stage2_count", "stage2_place2", ["data_count1"]), ("stage2_count2", "stage2_count", ["data_count2"]))
    chain += (("stage2_count3", "stage2_count2", ["data_count3", "data_place"]),)
    for name, init, data in chain:
        record = json.loads((out / name / "place.json").read_text())
        assert record["init"] == str(out / init) and record["data"] == [str(out / d) for d in data], record
    assert not (out / "data_count").exists()
    scenes = {d: (out / d / "scenes.jsonl").read_text().splitlines() for d in ("data_count1", "data_count2")}
    assert [len(v) for v in scenes.values()] == [36, 36] and scenes["data_count1"] != scenes["data_count2"]
    from llavakit.data.synth import write_dataset

    script = load_script("train_default_model")
    write_dataset(
        tmp_path / "data_count", 12, script.COUNT_SEED, "instruct", min_side=112, max_side=224, **script.COUNT_DATA
    )
    assert (tmp_path / "data_count" / "scenes.jsonl").read_text().splitlines() == scenes["data_count1"][:12]
    asked = [
        t["value"]
        for r in json.loads((out / "data_count_mix" / "instruct.json").read_text())
        for t in r["conversations"]
    ]
    assert asked[::2] and all("How many" in q for q in asked[::2]), asked[:3]
    # the last plain pass from the third count pass, then the distilled pass from it: its data and a half of the mix,
    # each decoder layer pulled at the count turns to the third count pass's outputs
    assert json.loads((out / "stage2c" / "recipe.json").read_text())["model"]["init"] == str(out / "stage2_count3")
    recipe = json.loads((out / "stage2_distill" / "recipe.json").read_text())
    assert recipe["model"]["init"] == str(out / "stage2c")
    assert recipe["distill"] == {"teacher": str(out / "stage2_count3"), "weight": 2.0, "turns_with": " many"}
    sets = [(d["image_folder"], d["weight"]) for d in recipe["data"]["datasets"]]
    assert sets == [(str(out / "data3"), 1.0), (str(out / "data_count_mix"), 0.5)]
    logged = [json.loads(x) for x in (out / "stage2_distill" / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(r["distill"] >= 0 for r in logged) and any(r["distill"] > 0 for r in logged)
    assert (out / "stage2_distill" / "model.safetensors").exists() and "stage2_distill" in summary["seconds"]
    # --continue keeps the chain, and refuses it under the shipped recipe's count passes
    assert load_script("train_default_model").main([*args, "--continue", "--fresh-count", "1"]) == 0
    with pytest.raises(SystemExit, match="stage2_count was trained on .*data_count1"):
        load_script("train_default_model").main([*args, "--continue"])


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--position-early", "--position-passes", "1"], "choose one"),
        (["--mix-existence"], "pass both"),
        (["--place-passes", "1", "--more-passes", "0"], "--more-passes >= 1"),
        (["--more-instruct", "20"], "--more-instruct >= 64 or --place-passes 0"),
        (["--count-passes", "1", "--place-passes", "0"], "needs --place-passes 1"),
        (["--count-repeats", "0"], "--count-repeats must be >= 1"),
        (["--count-repeats", "3", "--count-passes", "0"], "it needs the count passes"),
        (["--fresh-count", "1", "--count-passes", "0"], "needs --place-passes 1 and --count-passes 1"),
        (["--fresh-count", "1", "--count-repeats", "3"], "choose one"),
        (["--fresh-count", "1", "--more-passes", "1"], "--more-passes >= 2 and no --position-passes"),
        (["--fresh-count", "1", "--position-passes", "1"], "--more-passes >= 2 and no --position-passes"),
        (["--bind-pass", "1", "--position-early", "--place-passes", "0"], "no --position-early"),
        (["--stage0-set", "clip.nonsense=1"], "unknown recipe key 'clip.nonsense'"),
        (["--stage0-set", "clip.steps"], "must look like key=value"),
        (["--stage0-set", "scenes.max_side=300"], "edit them there"),
        (["--stage0-set", "clip={centre_labels: true}"], "clip is a section; set one of its keys"),
        (["--stage0-set", "parts=[decoder]"], "the script trains every part"),
        (["--stage0-set", "clip.steps=10", "--stage0", "runs/x/stage0"], "drop one"),
    ],
)
def test_options_that_do_not_go_together_are_refused(argv, said, capsys):
    with pytest.raises(SystemExit):
        load_script("train_default_model").main(argv)
    assert said in capsys.readouterr().err
