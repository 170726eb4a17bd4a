"""llavakit.train.count: which shapes a count question counts, their tokens (checked against the tokens each shape
covers when rendered alone), the attention wanted at the plural word (the module's worked example), and the place
passes training the counting losses on count data."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attention_spy import spy_attention
from llavakit.data.synth import write_dataset
from llavakit.data.synth_scene import Scene, Shape, generate_scene
from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import write_tiny_checkpoint
from llavakit.train.count import count_attention, counted, shape_tokens
from llavakit.train.foreground import scene_token_owners
from llavakit.train.mixture import build_dataset
from llavakit.train.named import Named, token_places
from llavakit.train.place import place_pass

DEFAULT = Path(__file__).resolve().parents[2] / "src" / "llavakit" / "assets" / "default-model"
needs_default = pytest.mark.skipif(not (DEFAULT / "config.json").exists(), reason="no bundled default model")


def _scene() -> Scene:
    shapes = (
        Shape("circle", "red", "large", 40, 40, 30),
        Shape("cross", "blue", "small", 150, 60, 15),
        Shape("circle", "green", "small", 250, 120, 15),
    )
    return Scene(width=300, height=160, background=(255, 255, 255), shapes=shapes, text=None)


def test_counted_names_the_plural_and_the_shapes_it_counts():
    scene = _scene()
    assert counted(scene, "How many circles are there?\nAnswer the question using a single word or phrase.") == (
        "circles",
        [0, 2],
    )
    assert counted(scene, "How many crosses are there?") == ("crosses", [1])
    assert counted(scene, "How many stars are there?") == ("stars", [])
    assert counted(scene, "How many objects are there?") == ("objects", [0, 1, 2])
    assert counted(scene, "What color is the circle?") is None
    assert counted(scene, "How many apples are there?") is None


def test_count_attention_worked_example():
    shapes = [torch.tensor([0, 1, 1, 1, 0, 0, 0]).bool(), torch.tensor([0, 0, 0, 0, 1, 0, 0]).bool()]
    visible = torch.ones(7, dtype=torch.bool)
    want = count_attention(shapes, visible, word=6)
    assert torch.allclose(want, torch.tensor([0, 1 / 9, 1 / 9, 1 / 9, 1 / 3, 0, 1 / 3]))
    hidden = visible.clone()
    hidden[4] = False  # the second shape hidden: its share goes to the word
    assert torch.allclose(count_attention(shapes, hidden, word=6), torch.tensor([0, 1 / 9, 1 / 9, 1 / 9, 0, 0, 2 / 3]))
    assert torch.allclose(count_attention([], visible, word=6), torch.tensor([0, 0, 0, 0, 0, 0, 1.0]))


@needs_default
def test_shape_tokens_cover_the_tokens_each_shape_shows():
    """Geometry against rendering: every token of a shape's geometric set shows that shape when it is rendered alone
    (the set is the shape's core: tokens at its edge are left out), and each set has a token in the base view and
    one in the tiles."""
    proc = LlavaProcessor.from_pretrained(DEFAULT)
    base = proc.geometry.grid**2
    found = total = 0
    for seed in range(6):
        scene = generate_scene(seed, min_side=112, max_side=224)
        owner = scene_token_owners(scene, proc)
        tokens = shape_tokens(scene, token_places(scene.height, scene.width, proc), base)
        assert len(tokens) == len(scene.shapes)
        for i, mine in enumerate(tokens):
            assert mine.shape == owner.shape and mine[:base].any() and mine[base:].any()
            shows = (owner == i) | (owner == -2)  # -2: a token showing two shapes
            found += int((mine & shows).sum())
            total += int(mine.sum())
    assert total > 50 and found == total, (found, total)


@pytest.fixture(scope="module")
def count_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("count")
    init = write_tiny_checkpoint(root / "m", "llava_next")
    write_dataset(root / "d", 8, 5, "instruct", min_side=112, max_side=160, qtypes=("count",))
    return init, root / "d"


def test_the_passes_train_the_counting_losses_on_count_data(count_data, tmp_path):
    init, data = count_data
    logs: list[str] = []
    place_pass(init, [data], tmp_path / "a", final=False, batch=4, log=logs.append)
    assert "count_mass" in logs[0] and "count_word" in logs[0] and "kind_mass" not in logs[0]
    place_pass(tmp_path / "a", [data], tmp_path / "b", final=True, batch=4, log=logs.append)
    assert "final_count" in logs[-1] and "final_mass" in logs[-1]
    start, a, b = (load_file(p / "model.safetensors") for p in (init, tmp_path / "a", tmp_path / "b"))
    assert start.keys() == a.keys() == b.keys()
    key = "model.language_model.layers.1.self_attn.q_proj.weight"  # the layer whose attention the pass pulls
    assert not torch.equal(start[key], a[key]) and not torch.equal(a[key], b[key])


def test_the_wanted_attention_is_what_the_pass_pulls_towards(count_data, tmp_path, monkeypatch):
    """The same pass with the counted shapes left out of the wanted attention (all of it on the word) ends
    elsewhere: the wanted attention is what moves layer 1."""
    init, data = count_data
    place_pass(init, [data], tmp_path / "with", final=False, batch=4, log=lambda _: None)
    import llavakit.train.place as place

    monkeypatch.setattr(place, "count_attention", lambda shapes, visible, word: count_attention([], visible, word))
    place_pass(init, [data], tmp_path / "without", final=False, batch=4, log=lambda _: None)
    key = "model.language_model.layers.1.self_attn.k_proj.weight"
    a, b = (load_file(tmp_path / d / "model.safetensors")[key] for d in ("with", "without"))
    assert not torch.allclose(a, b)


def test_the_passes_refuse_data_with_neither_position_nor_count_questions(count_data, tmp_path, monkeypatch):
    init, data = count_data
    import llavakit.train.named as named

    monkeypatch.setattr(named, "counted", lambda scene, question: None)
    with pytest.raises(ValueError, match="qtypes=\\('count',\\)"):
        place_pass(init, [data], tmp_path / "x", final=False, batch=4, log=lambda _: None)
    assert not (tmp_path / "x").exists()


def test_attention_cross_entropy_equals_the_attention_the_model_computes(tmp_path, monkeypatch):
    """Recomputed from layer 1's captured input, against the softmax SDPA applies, hidden positions included (a
    zero share on a hidden position adds nothing, not NaN)."""
    from llavakit.model.llava import LlavaModel
    from llavakit.train.attention_pull import attention_cross_entropy

    model = LlavaModel.from_pretrained(write_tiny_checkpoint(tmp_path / "m", "llava_next")).eval()
    ids = torch.randint(3, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 2:5] = 0  # hidden, as the passes hide the background
    captured, probs = spy_attention(model, monkeypatch)
    want = torch.zeros(2, 12)
    want[0, [1, 5, 8]] = torch.tensor([0.25, 0.25, 0.5])
    want[1, [0, 3, 6]] = torch.tensor([0.5, 0.25, 0.25])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(12).expand(2, 12))
        got = attention_cross_entropy(captured[1], {0: 8, 1: 6}, want)
    p = probs[1]  # (B, H, T, T)
    expect = torch.stack([-(p[j, :, q].clamp_min(1e-30).log() * want[j]).sum(-1).mean() for j, q in ((0, 8), (1, 6))])
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expect.mean(), rtol=1e-4, atol=1e-5)


def test_one_pass_trains_position_and_count_rows_together(count_data, tmp_path):
    """The recipe's --count-in-place mixture: position and count conversations in one pass, the answer pulled onto
    the kind's word or the plural word."""
    init, counts = count_data
    position = tmp_path / "position"
    write_dataset(position, 8, 5, "instruct", min_side=112, max_side=160, qtypes=("position",))  # ids as counts'
    proc = LlavaProcessor.from_pretrained(init)
    dirs = [str(position), str(counts)]
    spec = {"datasets": [{"path": f"{d}/instruct.json", "image_folder": d} for d in dirs]}
    named = Named(proc, dirs, build_dataset(spec, proc, proc.template, 1024, foreground=True))
    items = list(range(len(named.ds)))
    asks = [named.record(i)[1].startswith("<image>\nHow many") for i in items]
    assert any(asks) and not all(asks)
    assert [named.counting(i) is not None for i in items] == asks  # same ids in both: no record takes another's
    logs: list[str] = []
    place_pass(init, [position, counts], tmp_path / "out", final=True, batch=8, log=logs.append)
    text = " ".join(logs)
    assert all(k in text for k in ("kind_mass", "final_place", "count_mass", "final_count", "final_mass")), logs
