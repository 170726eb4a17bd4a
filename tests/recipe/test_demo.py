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
