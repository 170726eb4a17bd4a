"""scripts/probe_lookup.py: its examples say what they ask, its batches put the answer where stage 2 does, and a
decoder that can look up passes while one that cannot stays at a blind pick."""

import random

import torch

from llavakit.train.stage0.run import load_stage0_recipe
from script_module import load_script


def test_examples_ask_the_colour_of_one_named_kind():
    probe = load_script("probe_lookup")
    words = probe.WORDS
    for i in range(200):
        ex = probe.make_example(random.Random(i))
        kinds = [k for k, _ in ex.items]
        assert 1 <= len(kinds) <= 7 and len(set(kinds)) == len(kinds)
        assert ex.answer == ex.items[ex.asked][1] and words[ex.answer] in probe.COLORS
        ids, extra = ex.words("fused")
        assert ids[-3] == ex.items[ex.asked][0] and words[ids[-1]] == "ASSISTANT:"  # "... the KIND ? ASSISTANT:"
        fused = [(t, e) for t, e in zip(ids, extra) if e >= 0]
        assert fused == ex.items  # one position per object: its kind's token with its colour added
        pids, pextra = ex.words("pairs")
        assert all(e < 0 for e in pextra) and len(pids) == len(ids) + len(ex.items)
        body = pids[2 : 2 + 2 * len(ex.items)]
        assert list(zip(body[1::2], body[0::2])) == ex.items  # "red star" word pairs
    assert probe.blind_pick(probe.Example([(7, 20), (8, 20), (9, 21)], 0)) == 0.5


def test_batch_targets_the_answer_after_the_prompt_and_sums_fused_embeddings():
    probe = load_script("probe_lookup")
    embed = torch.nn.Embedding(len(probe.WORDS), 8)
    exs = [probe.make_example(random.Random(i)) for i in range(5)]
    x, y = probe.batch(embed, exs, "fused")
    for j, ex in enumerate(exs):
        ids, _ = ex.words("fused")
        assert (y[j] != -100).nonzero().flatten().tolist() == [len(ids) - 1, len(ids)]
        assert y[j, len(ids) - 1] == ex.answer and y[j, len(ids)] == probe.ID["</s>"]
        k, c = ex.items[0]
        assert torch.allclose(x[j, 2], embed.weight[k] + embed.weight[c])
        assert torch.allclose(x[j, 0], embed.weight[probe.ID["<s>"]])


def test_lookup_is_learned_or_not_and_scored_against_a_blind_pick():
    probe = load_script("probe_lookup")
    torch.manual_seed(0)
    small = ["num_hidden_layers=2", "hidden_size=64", "intermediate_size=128", "num_attention_heads=2"]
    recipe = load_stage0_recipe(probe.RECIPE, [f"decoder.{o}" for o in small] + ["decoder.num_key_value_heads=2"])
    learned = probe.train(recipe, 0.07, "fused", 120, 0, False, log=lambda m: None)
    assert learned["2-3"]["right"] / learned["2-3"]["n"] > 0.9
    blind = learned["4-7"]["blind"] / learned["4-7"]["n"]
    assert 0.15 < blind < 0.35  # a pick among the distinct colours of 4-7 objects (9 colours)
    untrained = probe.train(recipe, 0.07, "fused", 0, 0, False, log=lambda m: None)
    assert untrained["2-3"]["right"] / untrained["2-3"]["n"] < 0.5


def test_scene_spreads_each_object_over_noisy_visual_positions_among_background():
    probe = load_script("probe_lookup")
    scene = probe.SceneOptions(span=4, kind_noise=0.25, background=30)
    kind0, colour0 = probe.ID[probe.KINDS[0]], probe.ID[next(iter(probe.COLORS))]
    shown = right = 0
    for i in range(100):
        ex = probe.make_example(random.Random(i))
        ids, extra = ex.words("scene", scene)
        assert (ids, extra) == ex.words("scene", scene)  # the same scene every time it is asked for
        assert ids[-3] == ex.items[ex.asked][0]  # the question names the kind by its word, not its visual row
        body = ids[2:-8]
        assert len(body) == 30 + 4 * len(ex.items)
        assert body.count(probe.VISUAL_BACKGROUND) == 30
        spots = [(t, e) for t, e in zip(ids, extra) if e >= 0]
        assert len(spots) == 4 * len(ex.items)
        colours = {c - colour0 + probe.VISUAL_COLOUR: k - kind0 + probe.VISUAL_KIND for k, c in ex.items}
        for t, e in spots:  # every object position: a visual kind row and its object's visual colour row
            assert probe.VISUAL_KIND <= t < probe.VISUAL_COLOUR and e in colours
        if len(set(colours)) == len(ex.items):  # distinct colours: each position's object is known
            shown += len(spots)
            right += sum(t == colours[e] for t, e in spots)
    assert 0.65 < right / shown < 0.85  # a quarter of the positions show another kind
    clean = probe.make_example(random.Random(0)).words("scene", probe.SceneOptions(span=1, kind_noise=0.0))
    assert len(clean[0]) == len(probe.make_example(random.Random(0)).words("fused")[0]) + 60
