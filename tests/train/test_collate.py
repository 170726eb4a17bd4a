"""collate: shapes and padding; LengthGroupedSampler: modality-pure batches, determinism, resume."""

from __future__ import annotations

import pytest
import torch
from train_helpers import conv, tiny_processor, write_image

from llavakit.model.llava import IGNORE_INDEX
from llavakit.train.collate import LengthGroupedSampler, collate
from llavakit.train.data import SupervisedDataset


def _item(n, pix=None, sizes=None):
    ids = torch.arange(3, 3 + n)
    return {"input_ids": ids, "labels": ids.clone(), "pixel_values": pix, "image_sizes": sizes, "id": "x", "length": n}


def test_collate_pads_ids_labels_and_views():
    a = _item(5, torch.ones(1, 3, 3, 4, 4), torch.tensor([[10, 20]]))
    b = _item(3)
    c = _item(4, torch.full((2, 5, 3, 4, 4), 2.0), torch.tensor([[7, 8], [9, 10]]))
    batch = collate([a, b, c], pad_id=0)
    assert batch["input_ids"].shape == (3, 5) and batch["labels"].shape == (3, 5)
    assert batch["input_ids"][1].tolist() == [3, 4, 5, 0, 0]
    assert batch["labels"][1].tolist() == [3, 4, 5, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert batch["pixel_values"].shape == (3, 5, 3, 4, 4)
    assert batch["pixel_values"][0, 3:].abs().sum() == 0 and batch["pixel_values"][0, :3].eq(1).all()
    assert batch["pixel_values"][1:].eq(2).all()
    assert batch["image_sizes"].tolist() == [[10, 20], [7, 8], [9, 10]]
    assert batch["batch_num_images"].tolist() == [1, 2]
    assert "batch_num_images" not in collate([a, c], pad_id=0, family="llava_next")
    text_only = collate([b, b], pad_id=0)
    assert set(text_only) == {"input_ids", "attention_mask", "labels"}
    llava = collate([_item(2, torch.ones(1, 3, 4, 4), torch.tensor([[1, 1]])), _item(2, torch.ones(2, 3, 4, 4))], 0)
    assert llava["pixel_values"].shape == (3, 3, 4, 4)


def test_collated_batch_runs_through_the_model(tmp_path):
    from llavakit.model.llava import LlavaModel
    from llavakit.tiny import tiny_config

    proc = tiny_processor("llava_next")
    for k, (h, w) in enumerate([(40, 90), (100, 30)]):
        write_image(tmp_path / f"{k}.png", h, w, seed=k)
    recs = [
        {"id": "0", "image": "0.png", "conversations": conv("<image>\nWhat?", "A cat.")},
        {"id": "1", "image": "1.png", "conversations": conv("<image>\nAnd this?", "A dog.", "Sure?", "Yes.")},
        {"id": "2", "conversations": conv("Hi", "Hello")},
    ]
    ds = SupervisedDataset(recs, tmp_path, proc, None, 4096)
    batch = collate([ds[i] for i in range(3)], ds.pad_id)
    torch.manual_seed(0)
    out = LlavaModel(tiny_config("llava_next"))(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)


def _data(n=103, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 500, (n,), generator=g).tolist()
    modalities = ["image" if x else "text" for x in torch.rand(n, generator=g).gt(0.3).tolist()]
    return lengths, modalities


def test_sampler_batches_are_modality_pure_and_length_grouped():
    lengths, mods = _data()
    s = LengthGroupedSampler(lengths, mods, batch_size=4, seed=1, group=4)
    order = list(s)
    assert sorted(order) == list(range(len(lengths)))
    batches = [order[k : k + 4] for k in range(0, len(order), 4)]
    mixed = [k for k, b in enumerate(batches) if len({mods[i] for i in b}) > 1]
    assert mixed and set(mixed) <= {len(batches) - 2, len(batches) - 1}  # only the tails, at the very end
    assert sum(len(b) < 4 for b in batches) == 1 and len(batches[-1]) < 4
    # grouping cuts padding: the mean in-batch spread is far below that of a random order
    spread = lambda bs: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs) / len(bs)
    rand = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    assert spread(batches) < 0.5 * spread([rand[k : k + 4] for k in range(0, len(rand), 4)])


def test_sampler_negative_lengths_mean_text():
    s = LengthGroupedSampler([5, -3, 7, -2], None, batch_size=2, seed=0)
    assert s.modalities == ["image", "text", "image", "text"] and s.lengths == [5, 3, 7, 2]
    batches = [sorted(b) for b in zip(*[iter(list(s))] * 2)]
    assert sorted(batches) == [[0, 2], [1, 3]]


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths, mods = _data()
    a, b = LengthGroupedSampler(lengths, mods, 4, seed=3), LengthGroupedSampler(lengths, mods, 4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(LengthGroupedSampler(lengths, mods, 4, seed=4)) != first


def test_sampler_resumes_at_the_same_sample():
    lengths, mods = _data()
    run = LengthGroupedSampler(lengths, mods, 4, seed=0)
    run.set_epoch(2)
    full = list(run)
    s = LengthGroupedSampler(lengths, mods, 4, seed=0)
    s.set_epoch(2)
    it = iter(s)
    seen = [next(it) for _ in range(40)]
    state = s.state_dict()
    again = LengthGroupedSampler(lengths, mods, 4, seed=0)
    again.load_state_dict(state)
    assert again.epoch == 2 and len(again) == len(full) - 40
    assert seen + list(again) == full
    # the next epoch starts from its beginning
    again.set_epoch(3)
    assert len(list(again)) == len(full)
    with pytest.raises(ValueError, match="seed"):
        LengthGroupedSampler(lengths, mods, 4, seed=9).load_state_dict(state)


def test_sampler_ranks_split_global_batches_and_resume_across_world_sizes():
    lengths, mods = _data()
    one = LengthGroupedSampler(lengths, mods, 8, seed=0)
    ranks = [LengthGroupedSampler(lengths, mods, 4, seed=0, world_size=2, rank=r) for r in range(2)]
    orders = [list(r) for r in ranks]
    assert len(orders[0]) == len(orders[1])
    g1 = one.global_batches()
    assert g1 == ranks[0].global_batches()
    for k, gb in enumerate(g1[:-1]):  # every full global batch is split 4 + 4 between the ranks
        assert orders[0][4 * k : 4 * k + 4] + orders[1][4 * k : 4 * k + 4] == gb
    # two ranks stopped after 3 steps of 4 samples resume on one process with batch 8 at global batch 3
    state = ranks[0].state_dict(consumed=12)
    resumed = LengthGroupedSampler(lengths, mods, 8, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == [i for b in g1[3:] for i in b]
    with pytest.raises(ValueError, match="global batch"):
        LengthGroupedSampler(lengths, mods, 2, seed=0).load_state_dict(state)
