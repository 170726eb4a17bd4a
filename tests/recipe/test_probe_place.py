"""scripts/probe_place.py: its questions ask about one object alone of its kind, answer with that object's place in
the grid (read back from the sequence and from the column/row rows), and leave empty cells out only when asked."""

import random

import pytest

from script_module import load_script


@pytest.mark.parametrize("rows, cols", [(5, 5), (4, 7)])
def test_answers_are_the_named_objects_place(rows, cols):
    load_script("probe_count")
    probe = load_script("probe_place")
    words, kinds = probe.WORDS, set(probe.KINDS)
    axes = set()
    for i in range(300):
        q = probe.make_question(random.Random(i), probe.Grid(rows, cols, feat=True))
        ids, extra = q.example.ids, q.example.extra
        asked = words[ids[-8]]  # "... Is the KIND on the A or B ? ASSISTANT:"
        assert words[ids[-1]] == "ASSISTANT:" and len(extra) == len(ids)
        grid = ids[2 : ids.index(probe.ID["\n"])]
        assert len(grid) == rows * (cols + 1) and sum(words[t] == "NL" for t in grid) == rows
        cells = [t for t in grid if words[t] != "NL"]
        assert sum(words[t] in kinds for t in cells) in range(1, 9)
        where = [k for k, t in enumerate(cells) if words[t] == asked]
        assert len(where) == 1  # alone of its kind
        r, c = divmod(where[0], cols)
        pos = 2 + r * (cols + 1) + c  # after "<s> USER:", rows of cols cells and a newline
        named = {words[e] for e in extra[pos]}
        assert {f"C{c}", f"R{r}"} <= named and ids[pos] == probe.ID[asked]
        if q.axis == "lr":
            assert not (cols % 2 and c == cols // 2) and q.answer == ("left" if c < cols / 2 else "right")
        else:
            assert not (rows % 2 and r == rows // 2) and q.answer == ("top" if r < rows / 2 else "bottom")
        axes.add(q.axis)
    assert axes == {"lr", "tb"}


def test_without_feat_no_place_rows_and_drop_leaves_out_only_empty_cells():
    load_script("probe_count")
    probe = load_script("probe_place")
    plain = probe.make_question(random.Random(3), probe.Grid())
    assert all(all(probe.WORDS[e][0] not in "CR" for e in es) for es in plain.example.extra)
    for i in range(50):
        full = probe.make_question(random.Random(i), probe.Grid(feat=True))
        bare = probe.make_question(random.Random(i), probe.Grid(feat=True), drop=1.0)
        objects = [t for t in full.example.ids if probe.WORDS[t] in probe.KINDS]
        assert probe.ID["BACKGROUND"] not in bare.example.ids
        assert [t for t in bare.example.ids if probe.WORDS[t] in probe.KINDS] == objects
        assert bare.answer == full.answer
