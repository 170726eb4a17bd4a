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


def test_tiles_lay_out_a_base_view_then_the_tiles_with_their_own_places():
    load_script("probe_count")
    probe = load_script("probe_place")
    words, kinds = probe.WORDS, set(probe.KINDS)
    grid = probe.Grid(5, 5, feat=True, tiles=2)
    for i in range(200):
        q = probe.make_question(random.Random(i), grid)
        ids, extra = q.example.ids, q.example.extra
        body = ids[2 : ids.index(probe.ID["\n"])]
        base, tiles = body[:25], body[25:]
        assert "NL" not in {words[t] for t in base}
        assert len(tiles) == 10 * 11 and sum(words[t] == "NL" for t in tiles) == 10
        cells = [(k, t) for k, t in enumerate(tiles) if words[t] != "NL"]  # k: index among tiles, NLs included
        asked = words[ids[-8]]
        where = [k for k, t in cells if words[t] == asked]
        assert len(where) == 1
        r, c = divmod(where[0], 11)
        named = {words[e] for e in extra[2 + 25 + where[0]]}
        assert {f"C{c % 5}", f"R{r % 5}"} <= named  # the place within its tile
        for k, t in enumerate(base):  # each base cell names its place in the scene, and shows an object of its block
            br, bc = divmod(k, 5)
            assert {f"C{bc}", f"R{br}"} <= {words[e] for e in extra[2 + k]}
            block = {words[tiles[rr * 11 + cc]] for rr in (2 * br, 2 * br + 1) for cc in (2 * bc, 2 * bc + 1)}
            assert (words[t] in kinds) == bool(block & kinds) and (words[t] not in kinds or words[t] in block)
        side, at = (c, "lr") if q.axis == "lr" else (r, "tb")
        assert side // 2 != 2  # not in the base view's middle column / row
        assert q.answer == probe.AXES[at][0 if side < 5 else 1]


def test_tile_drop_leaves_out_tile_cells_only():
    load_script("probe_count")
    probe = load_script("probe_place")
    grid = probe.Grid(5, 5, feat=True, tiles=2)
    for i in range(20):
        full = probe.make_question(random.Random(i), grid)
        bare = probe.make_question(random.Random(i), grid, tile_drop=1.0)
        assert bare.example.ids[:27] == full.example.ids[:27]  # "<s> USER:" and the base view
        assert [probe.WORDS[t] for t in bare.example.ids[27:-11]] == ["NL"] * 10
        assert bare.answer == full.answer


def test_base_noise_misreads_the_base_views_objects_only():
    load_script("probe_count")
    probe = load_script("probe_place")
    kinds = set(probe.KINDS)
    for i in range(20):
        clean = probe.make_question(random.Random(i), probe.Grid(5, 5, feat=True, tiles=2))
        noisy = probe.make_question(random.Random(i), probe.Grid(5, 5, feat=True, tiles=2, base_noise=1.0))
        base = zip(clean.example.ids[2:27], noisy.example.ids[2:27])
        shown = [(probe.WORDS[a], probe.WORDS[b]) for a, b in base if probe.WORDS[a] in kinds]
        assert shown and all(b in kinds and b != a for a, b in shown)
        tiles = [t for t in noisy.example.ids[27:] if probe.WORDS[t] in kinds]
        assert tiles == [t for t in clean.example.ids[27:] if probe.WORDS[t] in kinds]
        assert noisy.answer == clean.answer
