"""Shape twins (hard negatives of the stage-0 CLIP loss) and the mimetic initialisation of the tower."""

import random
import re
from dataclasses import replace

import torch

from llavakit.config import VisionConfig
from llavakit.data.synth_questions import NUMBER_WORDS
from llavakit.data.synth_scene import KINDS
from llavakit.model.vision import VisionTower
from llavakit.train.stage0.clip import build_pairs
from llavakit.train.stage0.corpus import training_scenes
from llavakit.train.stage0.twins import batch_groups, mimetic_init, twin_scene

SCENES = list(training_scenes(12, 0, min_side=128, max_side=256))
PINS = [[48, 96], [96, 48], [96, 96]]


def _without_kinds(text: str) -> list[str]:
    """The sizes and colours named in a caption, one entry per shape ("two large red stars" gives two)."""
    found = []
    for count, size, colour in re.findall(r"(\w+) (small|large) (\w+) ", text):
        found += [f"{size} {colour}"] * (1 if count == "a" else NUMBER_WORDS.index(count))
    return sorted(found)


def test_twin_changes_every_kind_and_nothing_else():
    rng = random.Random(0)
    for scene in SCENES:
        twin = twin_scene(scene, rng)
        assert len(twin.shapes) == len(scene.shapes) and twin.text == scene.text
        for a, b in zip(scene.shapes, twin.shapes, strict=True):
            assert a.kind != b.kind and b.kind in KINDS
            assert replace(b, kind=a.kind) == a


def test_twins_share_their_group_and_differ_only_in_shape_words():
    plain, plain_texts, plain_groups = build_pairs(SCENES, 48, PINS)
    views, texts, groups = build_pairs(SCENES, 48, PINS, twins=True)
    n = len(plain)
    assert torch.equal(views[:n], plain) and texts[:n] == plain_texts  # the originals are unchanged
    assert sorted(i for g in groups for i in g) == list(range(len(views)))  # every view in exactly one group
    assert [g[0] for g in groups] == [g[0] for g in plain_groups] == list(range(n))
    pairs = [g for g in groups if len(g) == 2]
    assert len(pairs) == len(views) - n >= len(SCENES)  # at least every full view has its twin
    for i, j in pairs:
        assert j >= n and texts[i] != texts[j]
        assert _without_kinds(texts[i]) == _without_kinds(texts[j]) != []  # sizes and colours kept
        assert not torch.equal(views[i], views[j])


def test_batches_keep_groups_whole():
    groups = [[0, 5], [1], [2, 6], [3], [4, 7]]
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = batch_groups(groups, 4, gen).tolist()
        assert len(idx) == 4 and len(set(idx)) == 4
        for a, b in ((0, 5), (2, 6)):
            if a in idx and idx.index(a) < 3:  # a group cut at the batch size only loses its tail
                assert b in idx


def test_mimetic_init_makes_patches_attend_to_themselves_first():
    cfg = VisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    )
    torch.manual_seed(0)
    x = torch.randn(8, 17, 64)  # (B, 1 + 4*4, D)

    def self_weight(tower: VisionTower) -> float:
        a = tower.vision_model.encoder.layers[0].self_attn
        q = a.q_proj(x).view(8, 17, 2, 32).transpose(1, 2)
        k = a.k_proj(x).view(8, 17, 2, 32).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, -1)  # (B, H, L, L)
        return w.diagonal(dim1=-2, dim2=-1).mean().item()

    tower = VisionTower(cfg)
    before = self_weight(tower)
    with torch.no_grad():
        mimetic_init(tower)
    after = self_weight(tower)
    assert before < 2 / 17 < 0.5 < after  # near uniform before, mostly on itself after
    pos = tower.vision_model.embeddings.position_embedding.weight
    assert torch.all(pos[0] == 0)
    near = torch.cosine_similarity(pos[1], pos[2], dim=0)  # neighbours in a row
    far = torch.cosine_similarity(pos[1], pos[16], dim=0)  # opposite corners
    assert near > far
