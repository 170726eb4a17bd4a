"""Vision towers and projector against transformers on the same random weights."""

from __future__ import annotations

import pytest
import torch

from llavakit.checkpoint.keymaps import to_hf_keys
from llavakit.config import VisionConfig
from llavakit.model.projector import Projector
from llavakit.model.vision import VisionTower
from tiny_models import randomize, vision_config


def _pair(kind: str):
    from transformers import CLIPVisionModel, SiglipVisionModel

    cfg = vision_config(kind)
    torch.manual_seed(0)
    hf = randomize((CLIPVisionModel if kind == "clip" else SiglipVisionModel)(cfg).eval())
    ours = VisionTower(VisionConfig.from_hf(cfg.to_dict())).eval()
    sd = {
        k.removeprefix("model.vision_tower."): v
        for k, v in to_hf_keys(
            {"model.vision_tower." + k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()}, "hf"
        ).items()
    }
    ours.load_state_dict(sd, strict=True)
    return hf, ours, cfg


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("layers", [[-1], [-2], [0], [1], [-3, -1]])
def test_hidden_states_match_transformers(kind, layers):
    hf, ours, cfg = _pair(kind)
    px = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        states = hf(px, output_hidden_states=True).hidden_states
        out = ours(px, layers)
    ref = torch.cat([states[i] for i in layers], dim=-1)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_only_needed_layers_run():
    _, ours, cfg = _pair("clip")
    with torch.no_grad():
        ours.vision_model.encoder.layers[-1].mlp.fc1.weight.fill_(float("nan"))
        out = ours(torch.randn(1, 3, cfg.image_size, cfg.image_size), [-2])
        assert torch.isfinite(out).all()
        assert torch.isnan(ours(torch.randn(1, 3, cfg.image_size, cfg.image_size), [-1])).any()


@pytest.mark.parametrize(
    "shape,layers,match",
    [
        ((1, 3, 28, 28), [-2], "56x56 tiles"),
        ((1, 4, 56, 56), [-2], r"\(N, 3, H, W\)"),
        ((3, 56, 56), [-2], "got"),
        ((1, 3, 56, 56), [5], "out of range"),
    ],
)
def test_bad_input_is_a_clear_error(shape, layers, match):
    _, ours, _ = _pair("clip")
    with pytest.raises(ValueError, match=match):
        ours(torch.randn(*shape), layers)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_projector_matches_sequential(depth):
    torch.manual_seed(0)
    proj = randomize(Projector(12, 20, depth=depth))
    ref = torch.nn.Sequential(torch.nn.Linear(12, 20))
    for _ in range(depth - 1):
        ref.append(torch.nn.GELU())
        ref.append(torch.nn.Linear(20, 20))
    linears = [m for m in ref if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(linears):
        lin.load_state_dict(getattr(proj, f"linear_{i + 1}").state_dict())
    x = torch.randn(4, 7, 12)
    torch.testing.assert_close(proj(x), ref(x))
    assert sorted(proj.state_dict()) == sorted(
        f"linear_{i}.{p}" for i in range(1, depth + 1) for p in ("weight", "bias")
    )
