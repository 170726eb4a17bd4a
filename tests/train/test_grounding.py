"""The grounding pass asks questions: a stage-1 checkpoint saved with ``plain`` (which drops them) needs the
stage-2 template named."""

import pytest
from loop_helpers import plain_base

from llavakit.train.grounding import ground


def test_grounding_refuses_a_template_that_drops_the_question(tmp_path):
    base = plain_base(tmp_path / "base")
    (tmp_path / "scenes.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"carries the 'plain' template .*\(template='vicuna_v1'\)"):
        ground(base, tmp_path, tmp_path / "out", steps=1, log=lambda m: None)
    with pytest.raises(ValueError, match="no scene of several objects"):  # past the template: no scenes here
        ground(base, tmp_path, tmp_path / "out", steps=1, template="vicuna_v1", log=lambda m: None)
