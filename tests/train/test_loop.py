import json
import re
import shutil

import pytest
import torch
from loop_helpers import ColorDataset, collate_fn, tiny_recipe

from llavakit.model.llava import LlavaModel
from llavakit.train.build import build_model
from llavakit.train.loop import TrainingDiverged, train
from llavakit.train.schedule import lr_lambda


def _run(recipe, **kw):
    model, processor = build_model(recipe.model)
    ds = kw.pop("dataset", None) or ColorDataset(processor, 12)
    return train(recipe, model=model, processor=processor, dataset=ds, collate_fn=collate_fn, **kw), processor


def test_overfits_ten_samples(tmp_path):
    recipe = tiny_recipe(
        tmp_path,
        "llava",
        "train.max_steps=20",
        "train.global_batch_size=10",
        "train.micro_batch_size=10",
        "train.warmup_ratio=0.05",
        "stage.lr=1e-2",
    )
    model, processor = build_model(recipe.model)
    res = train(recipe, model=model, processor=processor, dataset=ColorDataset(processor, 10), collate_fn=collate_fn)
    assert res.losses[0] > 2.0
    assert max(res.losses[-3:]) < 0.15, res.losses  # only the image tells the answer: it must be read
    out = tmp_path / "run"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 21))
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(recs[0])
    assert (out / "loss.png").stat().st_size > 1000
    # the output is an HF checkpoint with processor files that reloads to the trained weights
    again = LlavaModel.from_pretrained(out)
    for (n, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n
    assert (out / "tokenizer.json").exists() and (out / "preprocessor_config.json").exists()


def test_resume_gives_the_same_losses(tmp_path):
    full, _ = _run(tiny_recipe(tmp_path / "a", "llava", "train.max_steps=5"))
    # "killed" after 3 steps; the last checkpoint is at step 2, so step 3 is run again after the resume
    r = tiny_recipe(
        tmp_path / "b",
        "llava",
        "train.max_steps=5",
        "train.save_every=1",
        "train.keep_last=2",
        "train.stop_after=3",
    )
    first, _ = _run(r)
    assert first.steps == [1, 2, 3] and not first.finished
    ck = tmp_path / "b" / "run" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000002", "step-00000003"]  # keep_last=2
    shutil.rmtree(ck / "step-00000003")  # as if the kill came before step 3's checkpoint was complete
    (ck / ".tmp-step-00000003").mkdir()  # a half-written checkpoint is ignored
    r2 = tiny_recipe(tmp_path / "b", "llava", "train.max_steps=5", "train.save_every=1", "train.resume=true")
    second, _ = _run(r2)
    assert second.steps == [3, 4, 5] and second.finished
    assert first.losses == full.losses[:3]
    assert second.losses == full.losses[2:]  # bit for bit on CPU float32
    recs = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 6))


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(step, model):
        if step == 3:
            with torch.no_grad():
                model.model.multi_modal_projector.linear_1.weight.fill_(float("nan"))

    r = tiny_recipe(tmp_path, "llava", "train.save_every=2")
    with pytest.raises(TrainingDiverged, match="loss is nan at step 4.*step-00000002"):
        _run(r, callbacks=[poison])
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    m = LlavaModel.from_pretrained(ckpt)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_bf16_autocast_and_gradient_checkpointing_match_plain_losses(tmp_path):
    plain, _ = _run(tiny_recipe(tmp_path / "a", "llava", "train.max_steps=3"))
    ckpt, _ = _run(tiny_recipe(tmp_path / "b", "llava", "train.max_steps=3", "train.gradient_checkpointing=true"))
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5)
    bf16, _ = _run(tiny_recipe(tmp_path / "c", "llava", "train.max_steps=3", "train.bf16=true"))
    assert bf16.losses == pytest.approx(plain.losses, rel=0.05)
    assert bf16.losses != plain.losses


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    a, _ = _run(tiny_recipe(tmp_path / "a", "llava", "train.micro_batch_size=4", "train.max_steps=2"))
    b, _ = _run(tiny_recipe(tmp_path / "b", "llava", "train.micro_batch_size=1", "train.max_steps=2"))
    assert b.losses == pytest.approx(a.losses, rel=1e-5)


def test_cosine_schedule_with_warmup():
    f = lr_lambda(100, 0.03, "cosine")
    assert [f(0), f(1), f(2), f(3)] == pytest.approx([0, 1 / 3, 2 / 3, 1.0])
    assert f(100) == pytest.approx(0.0)
    assert f(50) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 47 / 97)).item()))


def test_logits_mask_computes_exactly_the_supervised_rows(tmp_path):
    from llavakit.train.loss import supervised_ce_sum, supervised_positions

    model, processor = build_model(tiny_recipe(tmp_path, "llava_next").model)
    batch = collate_fn([ColorDataset(processor, 3)[i] for i in (0, 2)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    keep = supervised_positions(batch["labels"])
    with torch.no_grad():
        full = model(**inputs).logits
        rows = model(**inputs, logits_mask=keep).logits
        torch.testing.assert_close(rows, full[keep], rtol=1e-6, atol=1e-6)
        ref = model(**inputs, labels=batch["labels"]).loss  # the model's own mean over supervised tokens
        n = int((batch["labels"][:, 1:] != -100).sum())
        torch.testing.assert_close(supervised_ce_sum(rows, batch["labels"]) / n, ref)
        torch.testing.assert_close(supervised_ce_sum(full, batch["labels"]) / n, ref)
    with pytest.raises(ValueError, match="labels or logits_mask"):
        model(**inputs, labels=batch["labels"], logits_mask=keep)


def test_resume_with_another_stage_is_refused_clearly(tmp_path):
    _run(tiny_recipe(tmp_path, "llava", "train.max_steps=3", "train.save_every=1", "train.stop_after=1"))
    with pytest.raises(ValueError, match="stage.name 'stage2' there, 'stage1' now"):
        _run(tiny_recipe(tmp_path, "llava", "train.max_steps=3", "stage.name=stage1", "train.resume=true"))
    (tmp_path / "run" / "recipe.json").unlink()  # a run without its recipe record: the checkpoint's recipe tells
    with pytest.raises(ValueError, match="differs from the one that wrote .*stage.name 'stage2' there, 'stage1' now"):
        _run(tiny_recipe(tmp_path, "llava", "train.max_steps=3", "stage.name=stage1", "train.resume=true"))
    state = tmp_path / "run" / "checkpoints" / "step-00000001" / "trainer_state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "recipe"}))
    with pytest.raises(ValueError, match="does not fit this run's model or stage"):  # nor that: its optimizer's
        _run(tiny_recipe(tmp_path, "llava", "train.max_steps=3", "stage.name=stage1", "train.resume=true"))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        _run(tiny_recipe(tmp_path / "empty", "llava", "train.resume=true"))


@pytest.mark.parametrize(
    "change,said",
    [
        ("stage.lr=0.05", "stage.lr 0.003 there, 0.05 now"),
        ("train.global_batch_size=8", "train.global_batch_size 4 there, 8 now"),
        ("train.seed=7", "train.seed 42 there, 7 now"),
        ("train.max_steps=5", "train.max_steps 3 there, 5 now"),
    ],
)
def test_resume_under_another_recipe_is_refused(tmp_path, change, said):
    """The optimizer and scheduler states carry the old settings and the data order the old batch size: new
    values would be ignored or skip data while recipe.json claimed them."""
    base = ("train.max_steps=3", "train.save_every=1", "train.stop_after=1")
    _run(tiny_recipe(tmp_path, "llava", *base))
    record = (tmp_path / "run" / "recipe.json").read_text()
    with pytest.raises(ValueError, match=re.escape(said)):
        _run(tiny_recipe(tmp_path, "llava", *base, change, "train.resume=true"))
    assert (tmp_path / "run" / "recipe.json").read_text() == record
    # how a run is watched and saved may change
    _run(tiny_recipe(tmp_path, "llava", "train.max_steps=3", "train.save_every=2", "train.resume=true"))


def test_a_new_run_does_not_overwrite_another_runs_checkpoints(tmp_path):
    _run(tiny_recipe(tmp_path, "llava", "train.max_steps=2", "train.save_every=1"))
    with pytest.raises(FileExistsError, match="already holds checkpoints of an earlier run"):
        _run(tiny_recipe(tmp_path, "llava", "train.max_steps=2", "train.save_every=1"))


def test_stop_after_saves_a_checkpoint_at_the_stop_step(tmp_path):
    """train.stop_after=3 with save_every=2: the run resumes from step 3 (not 2), with the same losses."""
    full, _ = _run(tiny_recipe(tmp_path / "a", "llava", "train.max_steps=5"))
    args = ("train.max_steps=5", "train.save_every=2")
    first, _ = _run(tiny_recipe(tmp_path / "b", "llava", *args, "train.stop_after=3"))
    ck = tmp_path / "b" / "run" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000002", "step-00000003"]
    second, _ = _run(tiny_recipe(tmp_path / "b", "llava", *args, "train.resume=true"))
    assert second.steps == [4, 5] and first.losses + second.losses == full.losses
    # save_every=0 (only the final output) still leaves the stop step to resume from
    _run(tiny_recipe(tmp_path / "c", "llava", "train.max_steps=5", "train.stop_after=1"))
    assert [p.name for p in (tmp_path / "c" / "run" / "checkpoints").iterdir()] == ["step-00000001"]


def test_the_logged_lr_is_the_main_groups_and_differing_rates_are_named(tmp_path):
    import torch.nn as nn

    from llavakit.train.schedule import logged_lrs

    p = [nn.Parameter(torch.zeros(2, 2)) for _ in range(4)]
    named = [("projector", 1e-5, p[0]), ("projector_no_decay", 1e-5, p[1]), ("lora", 2e-3, p[2])]
    opt = torch.optim.AdamW([{"name": n, "lr": lr, "params": [q]} for n, lr, q in named])
    assert logged_lrs(opt) == {"lr": 2e-3, "lr_projector": 1e-5, "lr_lora": 2e-3}
    assert logged_lrs(torch.optim.AdamW([{"name": "projector", "lr": 1e-3, "params": [p[3]]}])) == {"lr": 1e-3}
    base = ("train.max_steps=1", "train.warmup_ratio=0", "stage.lr=1e-3")
    _run(tiny_recipe(tmp_path / "two", "llava", *base, "stage.projector_lr=1e-5"))
    rec = json.loads((tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert (rec["lr"], rec["lr_decoder"], rec["lr_projector"]) == (1e-3, 1e-3, 1e-5)
    _run(tiny_recipe(tmp_path / "one", "llava", *base))
    rec = json.loads((tmp_path / "one" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["lr"] == 1e-3 and not [k for k in rec if k.startswith("lr_")]
    # with warm-up every rate is 0 at the first step: the row still names each part (same keys on every row)
    warm = ("train.max_steps=3", "train.warmup_ratio=0.5", "stage.lr=1e-3", "stage.projector_lr=1e-5")
    _run(tiny_recipe(tmp_path / "warm", "llava", *warm))
    rows = [json.loads(x) for x in (tmp_path / "warm" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == 0.0 and len({tuple(sorted(k for k in r if k.startswith("lr"))) for r in rows}) == 1
    assert "lr_projector" in rows[0]


def test_the_saved_processor_carries_the_template_the_run_trained_with(tmp_path):
    """data.template alone on a `plain` init: the output (and its checkpoints) render prompts with vicuna_v1."""
    from loop_helpers import plain_base

    from llavakit.processing.jinja_export import exported_name
    from llavakit.processing.processor import LlavaProcessor

    base = plain_base(tmp_path / "base")
    args = (f"model.init={base}", "data.template=vicuna_v1", "train.max_steps=2", "train.save_every=1")
    _, processor = _run(tiny_recipe(tmp_path, "llava", *args))
    assert processor.template == "plain"  # what build_model gave (the init's): not what the run saves
    for d in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "step-00000001"):
        assert LlavaProcessor.from_pretrained(d).template == "vicuna_v1"
        assert exported_name((d / "chat_template.jinja").read_text()) == "vicuna_v1"


def test_a_stage2_run_does_not_silently_inherit_stage1s_plain_template(tmp_path):
    """A stage-1 output carries plain; a stage-2 recipe naming no template trained with it (every question
    dropped). Refused before the data is read; named (either way), or in stage 1, it is the run's choice."""
    from loop_helpers import plain_base

    from llavakit.train.loop import _dataset, check_inherited_template

    base = plain_base(tmp_path / "base")

    def recipe(*more):
        r = tiny_recipe(tmp_path, "llava", f"model.init={base}", *more)
        return r, build_model(r.model)[1]

    with pytest.raises(ValueError, match="carries the 'plain' template .* data.template=vicuna_v1"):
        _dataset(*recipe("data.path=nowhere.json"))
    for more in (["data.template=plain"], ["data.template=vicuna_v1"], ["stage.name=stage1"]):
        check_inherited_template(*recipe(*more))


def test_a_cut_short_trainer_state_is_named_with_the_fix(tmp_path):
    """A checkpoint whose trainer_state.pt is corrupt (a machine crash before it reached the disk) ended the
    resume in a RuntimeError traceback from deep in torch.load; now one ValueError naming it and what to do."""
    args = ("train.max_steps=4", "train.save_every=1")
    _run(tiny_recipe(tmp_path, "llava", *args, "train.stop_after=2"))
    state = tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    said = "step-00000002 is unreadable.*delete that directory to resume from step-00000001, the checkpoint before"
    with pytest.raises(ValueError, match=said):
        _run(tiny_recipe(tmp_path, "llava", *args, "train.resume=true"))
    shutil.rmtree(state.parent)  # as the message says: the run resumes from step 1
    assert _run(tiny_recipe(tmp_path, "llava", *args, "train.resume=true"))[0].steps == [2, 3, 4]


def test_an_unreadable_only_checkpoint_says_the_run_starts_over(tmp_path):
    """With one checkpoint, and that one unreadable, the advice was still to resume "from the checkpoint before
    it", which does not exist (and a resume with no checkpoint is refused); it now says to delete it and run
    without resume, which starts the run over."""
    args = ("train.max_steps=4", "train.save_every=2")
    _run(tiny_recipe(tmp_path, "llava", *args, "train.stop_after=2"))
    state = tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    said = r"only checkpoint: delete that directory and run again without --resume \(train.resume\) to start over"
    with pytest.raises(ValueError, match=said) as e:
        _run(tiny_recipe(tmp_path, "llava", *args, "train.resume=true"))
    assert "before it" not in str(e.value)
    shutil.rmtree(state.parent)
    assert _run(tiny_recipe(tmp_path, "llava", *args))[0].steps == [1, 2, 3, 4]  # all of it, from the start


@pytest.mark.parametrize(
    "stage, weights",
    [((), "model.safetensors"), (("stage.name=lora", "stage.lora.rank=4"), "adapter_model.safetensors")],
)
def test_a_checkpoint_with_cut_short_weights_is_named_with_the_fix(tmp_path, stage, weights):
    """A checkpoint whose weights were cut short: the resume said "re-download it" (the advice for a downloaded
    model), and for LoRA's adapter it ended in a SafetensorError traceback; now the checkpoint and the fix."""
    args = ("train.max_steps=4", "train.save_every=1", *stage)
    _run(tiny_recipe(tmp_path, "llava", *args, "train.stop_after=2"))
    path = tmp_path / "run" / "checkpoints" / "step-00000002" / weights
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=f"step-00000002 is unreadable: {weights}.*; delete that directory") as e:
        _run(tiny_recipe(tmp_path, "llava", *args, "train.resume=true"))
    assert "re-download" not in str(e.value)


def test_a_checkpoint_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """trainer_state.pt marks a checkpoint complete; it (and every other file) was never fsynced, so after a power
    loss the renamed directory could hold empty files and resuming failed. Every file and the directory are synced
    before the rename."""
    import os

    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _run(tiny_recipe(tmp_path, "llava", "train.max_steps=2", "train.save_every=1", "train.stop_after=1"))
    tmp = tmp_path / "run" / "checkpoints" / ".tmp-step-00000001"
    final = tmp_path / "run" / "checkpoints" / "step-00000001"
    for f in final.iterdir():
        assert str(tmp / f.name) in synced, f.name
    assert str(tmp) in synced and str(final.parent) in synced


@pytest.mark.parametrize(
    "more, text_every",
    [
        # the vision tower's last layer and post-layernorm feed nothing (features come from layer -2): no gradient,
        # no optimizer state, and a resume of the published llava-v1.6 / OneVision recipes was refused
        (("stage.vision_lr=1e-3",), 0),
        # every sample of the first steps text-only: the projector has no optimizer state yet at the checkpoint
        ((), 1),
    ],
)
def test_resume_with_parameters_that_had_no_gradient_yet(tmp_path, more, text_every):
    def run(where, *extra):
        recipe = tiny_recipe(tmp_path / where, "llava", "train.max_steps=4", "train.save_every=1", *more, *extra)
        model, processor = build_model(recipe.model)
        data = ColorDataset(processor, 8, text_every=text_every)
        if text_every:  # 4 text-only samples first, then 4 with images, in this order (no shuffling by modality)
            data.items = [it for it in data.items if it["pixel_values"] is None][:4] + ColorDataset(processor, 4).items
            data.lengths, data.modalities = [it["length"] for it in data.items], [it["modality"] for it in data.items]
        res = train(recipe, model=model, processor=processor, dataset=data, collate_fn=collate_fn)
        return res, model

    full, model_a = run("a")
    first, _ = run("b", "train.stop_after=1")
    second, model_b = run("b", "train.resume=true")
    assert second.steps == [2, 3, 4] and first.losses + second.losses == full.losses
    for (n, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), n


def test_a_cut_short_metrics_line_does_not_stop_the_resume(tmp_path):
    """metrics.jsonl is appended a line per step: a kill or power loss mid-line left a broken last line, and the
    resume ended in a bare JSONDecodeError ("Unterminated string ..."); the broken line is dropped."""
    args = ("train.max_steps=4", "train.save_every=1")
    _run(tiny_recipe(tmp_path, "llava", *args, "train.stop_after=2"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 3, "lo' + b"\0" * 8)
    assert _run(tiny_recipe(tmp_path, "llava", *args, "train.resume=true"))[0].steps == [3, 4]
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_a_cut_short_recipe_json_is_named_with_the_fix(tmp_path):
    """recipe.json was written without a sync: after a power loss it could be empty while the (synced) checkpoints
    were whole, and the resume ended in a bare JSONDecodeError ("Expecting value: line 1 column 1")."""
    args = ("train.max_steps=3", "train.save_every=1")
    _run(tiny_recipe(tmp_path, "llava", *args, "train.stop_after=1"))
    state = tmp_path / "run" / "checkpoints" / "step-00000001" / "trainer_state.json"
    old = json.loads(state.read_text())
    del old["recipe"]  # a checkpoint from before checkpoints recorded their recipe: recipe.json is compared
    state.write_text(json.dumps(old))
    (tmp_path / "run" / "recipe.json").write_text('{"model": ')
    said = r"train.resume: .*recipe.json is unreadable \(JSONDecodeError\); restore it from a copy, or delete it"
    with pytest.raises(ValueError, match=said):
        _run(tiny_recipe(tmp_path, "llava", *args, "train.resume=true"))
    (tmp_path / "run" / "recipe.json").unlink()  # as the message says
    assert _run(tiny_recipe(tmp_path, "llava", *args, "train.resume=true"))[0].steps == [2, 3]


def test_a_checkpoint_from_another_recipe_is_refused(tmp_path):
    """Only recipe.json was compared: a checkpoint copied in from a run of another recipe (another learning rate,
    another template) resumed silently under this one, its scheduler keeping the other run's learning rate."""
    base = ("train.max_steps=3", "train.save_every=1", "train.stop_after=1")
    _run(tiny_recipe(tmp_path / "a", "llava", *base, "stage.lr=0.05", "data.template=vicuna_v1"))
    _run(tiny_recipe(tmp_path / "b", "llava", *base))
    ours = tmp_path / "b" / "run" / "checkpoints" / "step-00000001"
    shutil.rmtree(ours)
    shutil.copytree(tmp_path / "a" / "run" / "checkpoints" / "step-00000001", ours)
    said = f"differs from the one that wrote {ours}: data.template 'vicuna_v1' there, None now; stage.lr 0.05 there"
    with pytest.raises(ValueError, match=re.escape(said)):
        _run(tiny_recipe(tmp_path / "b", "llava", *base, "train.resume=true"))


def test_a_misspelt_data_file_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """It was found only when the dataset was built, after the weights had loaded (minutes for a 7B model)."""
    import llavakit.train.build as build

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the data files were checked")

    monkeypatch.setattr(build, "build_model", no_loading)
    data = tmp_path / "d.json"
    data.write_text("[]")
    cases = [
        (["data.path=nowhere.json"], FileNotFoundError, r"data file not found: nowhere.json \(data.path\)$"),
        ([f"data.path={tmp_path}"], ValueError, r"data.path .* is a directory; pass the data file"),
        ([f"data.datasets=[{{path: {data}}}, {{path: b.json}}]"], FileNotFoundError, r"b.json \(data.datasets\[1\]"),
    ]
    for more, kind, said in cases:
        with pytest.raises(kind, match=said):
            train(tiny_recipe(tmp_path, "llava", *more))
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"datasets:\n  - path: {data}\n  - json_path: c.jsonl\n")
    with pytest.raises(FileNotFoundError, match=r"data file not found: c.jsonl \(.*mix.yaml: datasets\[1\]\)"):
        train(tiny_recipe(tmp_path, "llava", f"data.path={mixture}"))
    # all there (an image folder that is not is build_dataset's to judge, from the records): the model loads next
    with pytest.raises(AssertionError, match="the model was loaded"):
        train(tiny_recipe(tmp_path, "llava", f"data.path={data}", "data.image_folder=imgz"))
