"""scripts/probe_tower.py: the tiles it probes hold the shape it labels; the probe separates what is separable."""

import subprocess
import sys

import torch

from llavakit.config import VisionConfig
from llavakit.data.synth_scene import KINDS
from llavakit.model.vision import VisionTower
from llavakit.train.stage0.clip import save_vision_tower
from llavakit.train.stage0.run import load_stage0_recipe
from script_module import SCRIPTS, load_script

SCRIPT = SCRIPTS / "probe_tower.py"


def test_tiles_are_labelled_with_their_shape_and_hold_ink():
    probe_tower = load_script("probe_tower")
    recipe = load_stage0_recipe(probe_tower.RECIPE)
    x, y = probe_tower.tiles(30, 1, recipe, 80)
    assert x.shape == (30, 3, 80, 80)  # the shape's centre lies in exactly one tile of its scene
    scenes = [probe_tower.one_shape_scene(1, i, recipe) for i in range(30)]
    assert all(len(s.shapes) == 1 and s.text is None for s in scenes)
    assert y.tolist() == [KINDS.index(s.shapes[0].kind) for s in scenes]
    spread = x.flatten(1).std(1)  # a tile with a shape on a plain background is not flat
    assert (spread > 0.05).all()


def test_probe_finds_separable_features_and_not_noise():
    probe_tower = load_script("probe_tower")
    torch.manual_seed(0)
    y_train, y_test = torch.randint(0, len(KINDS), (300,)), torch.randint(0, len(KINDS), (100,))
    onehot = torch.eye(len(KINDS))

    def feats(y: torch.Tensor) -> torch.Tensor:
        return torch.cat([onehot[y] + 0.1 * torch.randn(len(y), len(KINDS)), torch.randn(len(y), 20)], 1)

    _, separable = probe_tower.probe(feats(y_train), y_train, feats(y_test), y_test, 200)
    _, noise = probe_tower.probe(torch.randn(300, 27), y_train, torch.randn(100, 27), y_test, 200)
    assert separable > 0.95 and noise < 0.35


def test_script_runs_on_a_saved_tower(tmp_path):
    cfg = VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=80, patch_size=16
    )
    save_vision_tower(VisionTower(cfg), tmp_path / "tower")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "tower"), "--scenes", "12", "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "chance 0.14" in out
    assert sum(line.split()[-1].replace(".", "", 1).isdigit() for line in out.splitlines() if "held out" in line) == 4


def test_script_names_a_missing_tower_or_recipe(tmp_path):
    cfg = VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=80, patch_size=16
    )
    save_vision_tower(VisionTower(cfg), tmp_path / "tower")
    for args, named in (
        ([str(tmp_path)], "not a vision tower directory"),
        ([str(tmp_path / "tower"), "--recipe", str(tmp_path / "no.yaml")], "no.yaml"),
        ([str(tmp_path / "tower"), "--full-view"], "pass --per-patch too"),
    ):
        r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and named in r.stderr and "Traceback" not in r.stderr


def test_per_patch_probes_cover_kind_colour_and_text():
    """On a random tower the per-patch probes run on the patches that show a shape or text, with the label
    spaces of `patch_labels` (a held-out count of 0 would mean the labels were never found)."""
    probe_tower = load_script("probe_tower")
    recipe = load_stage0_recipe(probe_tower.RECIPE)
    torch.manual_seed(0)
    tower = VisionTower(VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=80, patch_size=16)).eval()  # fmt: skip
    got = probe_tower.patch_probes(tower, 12, recipe, 20)
    assert list(got) == ["kind", "colour", "text"]
    for acc_train, acc_test, n in got.values():
        assert 0.0 <= acc_test <= 1.0 and 0.0 <= acc_train <= 1.0 and n > 0
    full = probe_tower.patch_probes(tower, 12, recipe, 20, full_only=True)
    assert list(full) == ["kind", "colour"]  # no text in the scenes
    assert 0 < full["kind"][2] < got["kind"][2]  # the whole views' patches only: fewer than with the tiles'
