"""Step counting as transformers' Trainer does it: an epoch's last step takes the leftover samples, fractional
epochs round the step count up; a run stopped and resumed ends on the same step as one never stopped."""

import json

import pytest
from loop_helpers import ColorDataset, collate_fn, tiny_recipe

from llavakit.train.batching import epoch_batches, process_micro_batches, steps_per_epoch, total_steps
from llavakit.train.build import build_model
from llavakit.train.loop import train

EPOCHS = ("train.max_steps=null", "train.epochs=1.5", "train.save_every=1")  # 10 samples / 4 -> 3 per epoch, 5 in all


def _trainer_counts(tmp_path, n: int, micro: int, accum: int, epochs: float) -> tuple[int, int]:
    """Steps per epoch and max_steps of transformers' Trainer on ``n`` samples (one process)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(1, 1)

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        num_train_epochs=epochs,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=[{"x": torch.zeros(1)}] * n)
    values = trainer.set_initial_training_values(args, trainer.get_train_dataloader())
    return values[1], values[-1]


def test_step_counts_match_transformers_trainer(tmp_path):
    cases = [(10, 2, 2, 1.5), (10, 4, 1, 1.0), (9, 1, 4, 2.5), (12, 2, 2, 1.0), (7, 2, 4, 0.5), (100, 3, 3, 2.25)]
    for n, micro, accum, epochs in cases:
        per_epoch = steps_per_epoch(n, micro * accum)
        assert (per_epoch, total_steps(epochs, per_epoch, None)) == _trainer_counts(tmp_path, n, micro, accum, epochs)
    # the one deviation: float noise in epochs * steps is not a step (Trainer: ceil(55.00000000000001) = 56)
    assert _trainer_counts(tmp_path, 50, 1, 1, 1.1) == (50, 56) and total_steps(1.1, 50, None) == 55
    assert total_steps(1.5, 3, 7) == 7  # max_steps decides when given


class Recorded(ColorDataset):
    """A ColorDataset noting which samples were loaded."""

    seen: list[int]

    def __getitem__(self, i: int) -> dict:
        self.seen.append(i)
        return super().__getitem__(i)


def _run(recipe, n: int = 10):
    model, processor = build_model(recipe.model)
    ds = Recorded(processor, n)
    ds.seen = []
    return train(recipe, model=model, processor=processor, dataset=ds, collate_fn=collate_fn), ds.seen


def test_fractional_epochs_round_up_and_resume_ends_on_the_same_step(tmp_path):
    """1.5 epochs of 10 samples in global batches of 4: steps of 4, 4, 2 samples (the first epoch, every sample
    once), then 2 of epoch 2's 3 steps = 5 steps (before: 10 // 4 = 2 per epoch, int(1.5 * 2) = 3 steps)."""
    full, seen = _run(tiny_recipe(tmp_path / "a", "llava", *EPOCHS))
    assert full.steps == [1, 2, 3, 4, 5] and full.finished
    assert sorted(seen[:10]) == list(range(10))  # the first epoch: each sample once
    recs = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0.3333, 0.6667, 1.0, 1.3333, 1.6667]
    first, _ = _run(tiny_recipe(tmp_path / "b", "llava", *EPOCHS, "train.stop_after=3"))
    state = json.loads((tmp_path / "b" / "run" / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert (state["total_steps"], state["position"], state["full_batches_only"]) == (5, 10, False)
    second, _ = _run(tiny_recipe(tmp_path / "b", "llava", *EPOCHS, "train.resume=true"))
    assert second.steps == [4, 5] and second.finished
    assert first.losses + second.losses == full.losses  # bit for bit on CPU float32


def test_a_checkpoint_from_before_resumes_with_the_step_count_it_started_with(tmp_path):
    """A run started when leftovers waited for the next epoch (2 full steps per epoch, int(1.5 * 2) = 3 steps)
    keeps that counting when resumed: it ends on step 3, as it would have, not on the new count's 5."""
    _run(tiny_recipe(tmp_path, "llava", *EPOCHS, "train.stop_after=1"))
    path = tmp_path / "run" / "checkpoints" / "step-00000001" / "trainer_state.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("total_steps", "full_batches_only")}
    path.write_text(json.dumps(old))
    rest, seen = _run(tiny_recipe(tmp_path, "llava", *EPOCHS, "train.resume=true"))
    assert rest.steps == [2, 3] and rest.finished
    assert len(seen) == 8  # two full global batches of 4
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert (state["total_steps"], state["full_batches_only"]) == (3, True)  # and it stays that way


def test_a_short_last_step_gives_the_same_losses_for_any_micro_batch(tmp_path):
    """The leftover step of 2 samples: micro-batches of 4 (one, short) or of 1 (two) give the same token-level loss."""
    run = ("train.max_steps=3", "train.warmup_ratio=0")
    a, _ = _run(tiny_recipe(tmp_path / "a", "llava", *run, "train.micro_batch_size=4"))
    b, _ = _run(tiny_recipe(tmp_path / "b", "llava", *run, "train.micro_batch_size=1"))
    assert b.losses == pytest.approx(a.losses, rel=1e-5)


class Lengths:
    def __init__(self, n: int) -> None:
        self.lengths = [(7 * i) % 23 for i in range(n)]
        self.modalities = ["text" if i % 3 == 0 else "image" for i in range(n)]

    def __len__(self) -> int:
        return len(self.lengths)


@pytest.mark.parametrize("group", [True, False])
def test_an_epoch_takes_every_sample_once_the_last_step_short(group):
    ds = Lengths(23)
    for epoch in (0, 1):
        batches = epoch_batches(ds, epoch, 5, group, 4)
        assert len(batches) == steps_per_epoch(23, 4) == 6
        assert sorted(i for b in batches for i in b) == list(range(23))
        assert [len(b) for b in batches] == [4] * 5 + [3]
        full = epoch_batches(ds, epoch, 5, group, 4, full_batches_only=True)  # a run from before: leftovers wait
        assert full == [b for b in batches if len(b) == 4] and len(full) == steps_per_epoch(23, 4, True) == 5


def test_processes_get_the_same_number_of_micro_batches():
    assert process_micro_batches([0, 1, 2, 3], 1, 2, 0) == [[0], [2]]
    assert process_micro_batches([0, 1, 2, 3], 1, 2, 1) == [[1], [3]]
    assert process_micro_batches([0, 1, 2], 1, 2, 1) == [[1], []]  # empty: a stand-in with no supervised tokens
    assert process_micro_batches([0, 1, 2, 3, 4], 2, 1, 0) == [[0, 1], [2, 3], [4]]
    assert process_micro_batches(list(range(8)), 2, 2, 1) == [[2, 3], [6, 7]]
