"""`llava demo` without a bundled model falls back to a random tiny model and says so."""

import llavakit.commands
from llavakit.demo import run_demo


def test_demo_falls_back_to_a_random_model_and_says_so(monkeypatch, capsys, tmp_path):
    def missing() -> str:
        raise FileNotFoundError("no default model")

    monkeypatch.setattr(llavakit.commands, "default_model", missing)
    assert run_demo(n_scenes=1, out=str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "RANDOM-WEIGHT" in out and out.count("truth: ") == out.count("Q: ") >= 4 and "accuracy: " in out
    assert list(tmp_path.glob("scene_0_0.png"))


def test_demo_says_when_the_model_does_not_name_its_scene_sizes_and_takes_sides(capsys, tmp_path):
    """A run's model (no training.json) was asked about 128-256 px scenes without a word, whatever it was trained on;
    --sides now sets them and the demo says when it falls back."""
    import re

    from llavakit.cli import main
    from llavakit.tiny import write_tiny_checkpoint

    model = str(write_tiny_checkpoint(tmp_path / "tiny"))
    assert run_demo(model=model, n_scenes=1, out=str(tmp_path / "a")) == 0
    out = capsys.readouterr().out
    assert "does not say which scene sizes it was trained on" in out and "pass --sides MIN MAX" in out
    assert run_demo(model=model, n_scenes=2, out=str(tmp_path / "b"), sides=(112, 130)) == 0
    out = capsys.readouterr().out
    sizes = [tuple(map(int, m)) for m in re.findall(r"\((\d+)x(\d+)\)", out)]
    assert "scene sizes" not in out and len(sizes) == 2 and all(112 <= max(s) <= 130 for s in sizes), sizes
    assert main(["demo", "--model", model, "--sides", "300", "200"]) == 2
    assert "pass --sides MIN MAX within those bounds (default the model's training.json, else 128 256)" in (
        capsys.readouterr().err
    )
