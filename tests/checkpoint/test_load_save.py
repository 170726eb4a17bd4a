"""Saving and loading: files as transformers writes them, transformers reads ours, meta-device loading is
exact, and broken checkpoints fail with messages that say what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open

from llavakit.checkpoint.fill import CheckpointMismatchError, load_into
from llavakit.checkpoint.hub import resolve_model_path
from llavakit.checkpoint.keymaps import to_hf_keys
from llavakit.checkpoint.load import checkpoint_keys, iter_checkpoint_tensors, read_config_dict
from llavakit.checkpoint.save import save_config, save_state_dict
from llavakit.config import LlavaConfig
from tiny_models import current, hf_model

FAMILIES = ["llava", "llava_next", "llava_onevision"]


def as_hf_module_names(pairs):
    """transformers 5 builds the tower without the ``vision_model.`` level: rename for its meta modules."""
    for k, v in pairs:
        yield k.replace("model.vision_tower.vision_model.", "model.vision_tower.", 1), v


def meta_twin(hf):
    with torch.device("meta"):
        return type(hf)(hf.config)


def write_checkpoint(hf, path, **kw) -> dict[str, torch.Tensor]:
    sd = current(hf)
    save_state_dict(sd, path, **kw)
    save_config(LlavaConfig.from_hf(hf.config.to_dict()), path)
    return sd


# -- files ---------------------------------------------------------------------------------------------------


def test_single_file_layout(tmp_path):
    sd = write_checkpoint(hf_model("llava"), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(sd)


def test_sharded_layout_matches_transformers_index(tmp_path):
    sd = write_checkpoint(hf_model("llava_next"), tmp_path, max_shard_bytes=60_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert sorted(index["weight_map"]) == sorted(sd)
    assert index["metadata"] == {
        "total_parameters": sum(t.numel() for t in sd.values()),
        "total_size": sum(t.numel() * t.element_size() for t in sd.values()),
    }
    for shard in shards:
        with safe_open(tmp_path / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert set(f.keys()) == {k for k, s in index["weight_map"].items() if s == shard}
    # the same grouping as huggingface_hub's splitter, which transformers' save_pretrained uses
    ref = split_torch_state_dict_into_shards(sd, filename_pattern="model{suffix}.safetensors", max_shard_size=60_000)
    assert ref.tensor_to_filename == index["weight_map"]
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


@pytest.mark.parametrize("shard_bytes", [5 * 2**30, 50_000])
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_our_checkpoint(tmp_path, family, shard_bytes):
    from transformers import AutoConfig

    hf = hf_model(family)
    write_checkpoint(hf, tmp_path, max_shard_bytes=shard_bytes)
    assert AutoConfig.from_pretrained(tmp_path).model_type == family
    loaded = type(hf).from_pretrained(tmp_path)
    want, got = hf.state_dict(), loaded.state_dict()
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_tied_embeddings_saved_once(tmp_path):
    hf = hf_model("llava_onevision", "qwen2", tie_word_embeddings=True)
    hf.config.text_config.tie_word_embeddings = True
    hf.tie_weights()
    sd = current(hf)
    assert sd["lm_head.weight"].data_ptr() == sd["model.language_model.embed_tokens.weight"].data_ptr()
    save_state_dict(sd, tmp_path)
    assert "lm_head.weight" not in checkpoint_keys(tmp_path)
    save_state_dict({k: v.clone() for k, v in sd.items()}, tmp_path / "declared", tied=True)
    assert "lm_head.weight" not in checkpoint_keys(tmp_path / "declared")
    save_state_dict(sd, tmp_path / "kept", tied=False)
    assert "lm_head.weight" in checkpoint_keys(tmp_path / "kept")


def test_resave_replaces_old_files(tmp_path):
    sd = current(hf_model("llava"))
    save_state_dict(sd, tmp_path, max_shard_bytes=50_000)
    (tmp_path / "model_ema.safetensors").write_bytes(b"not ours")
    save_state_dict(sd, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "model_ema.safetensors"]
    (tmp_path / "model_ema.safetensors").unlink()
    save_state_dict(sd, tmp_path, max_shard_bytes=50_000)
    assert "model.safetensors" not in os.listdir(tmp_path)
    assert {k: v for k, v in iter_checkpoint_tensors(tmp_path)}.keys() == sd.keys()


def test_non_contiguous_and_view_tensors_are_saved(tmp_path):
    base = torch.arange(24.0).reshape(4, 6)
    sd = {"a": base.t(), "b": base[1:3], "c": base[0]}
    save_state_dict(sd, tmp_path)
    back = dict(iter_checkpoint_tensors(tmp_path))
    for k in sd:
        assert torch.equal(back[k], sd[k])


def test_save_config_roundtrip(tmp_path):
    from transformers import AutoConfig

    config = LlavaConfig.from_hf(hf_model("llava_onevision").config.to_dict())
    save_config(config, tmp_path, dtype=torch.bfloat16)
    d = read_config_dict(tmp_path)
    assert "transformers_version" not in d and d["dtype"] == "bfloat16"
    assert LlavaConfig.from_hf(d) == config
    ref = AutoConfig.from_pretrained(tmp_path)
    assert LlavaConfig.from_hf(ref.to_dict()) == config


# -- meta-device loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_load_into_meta_module_is_exact(tmp_path, family, dtype):
    hf = hf_model(family)
    write_checkpoint(hf, tmp_path, max_shard_bytes=50_000)
    module = meta_twin(hf)
    result = load_into(module, as_hf_module_names(iter_checkpoint_tensors(tmp_path)), dtype=dtype)
    assert result.missing == result.unexpected == result.mismatched == []
    want = hf.state_dict()
    got = module.state_dict()
    for k in want:
        assert got[k].dtype == dtype and got[k].device.type == "cpu", k  # norms too: HF's torch_dtype rule
        assert torch.equal(got[k], want[k].to(dtype)), k
    assert all(p.requires_grad for p in module.parameters())


def test_load_into_reties_embeddings():
    hf = hf_model("llava", tie_word_embeddings=True)
    hf.config.text_config.tie_word_embeddings = True
    hf.tie_weights()
    module = meta_twin(hf)
    assert module.lm_head.weight is module.model.language_model.embed_tokens.weight
    sd = current(hf)
    result = load_into(module, as_hf_module_names(sd.items()))  # lm_head.weight present: skipped, not loaded
    assert result.skipped_tied == ["lm_head.weight"]
    assert module.lm_head.weight is module.model.language_model.embed_tokens.weight
    assert torch.equal(module.lm_head.weight, sd["model.language_model.embed_tokens.weight"])
    emb = sd.pop("model.language_model.embed_tokens.weight")
    module = meta_twin(hf)
    load_into(module, as_hf_module_names(sd.items()))  # only the lm_head copy: it fills the shared matrix
    assert module.lm_head.weight is module.model.language_model.embed_tokens.weight
    assert torch.equal(module.lm_head.weight, emb)
    sd.pop("lm_head.weight")
    sd["model.language_model.embed_tokens.weight"] = emb
    module = meta_twin(hf)
    load_into(module, as_hf_module_names(sd.items()))  # absent from the checkpoint: fine when tied
    assert module.lm_head.weight is module.model.language_model.embed_tokens.weight


def test_llavakit_model_takes_current_layout(tmp_path):
    """Our model's keys are the current layout: a saved checkpoint fills a meta-built LlavaModel strictly."""
    try:
        from llavakit.model.llava import LlavaModel
    except ImportError as e:
        pytest.skip(f"llavakit.model.llava not importable yet ({e})")
    hf = hf_model("llava_next")
    sd = write_checkpoint(hf, tmp_path)
    with torch.device("meta"):
        ours = LlavaModel(LlavaConfig.from_hf(hf.config.to_dict()))
    load_into(ours, iter_checkpoint_tensors(tmp_path))
    got = ours.state_dict()
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def test_strict_error_lists_missing_unexpected_and_shapes():
    hf = hf_model("llava")
    sd = dict(as_hf_module_names(current(hf).items()))
    layers = [k for k in sd if ".layers." in k]
    for k in layers[:25]:
        sd.pop(k)
    sd["model.faster_token"] = torch.zeros(48)
    sd["model.multi_modal_projector.linear_2.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError) as e:
        load_into(meta_twin(hf), sd.items())
    msg = str(e.value)
    assert "25 missing" in msg and "(+5 more)" in msg and layers[0] in msg
    assert "1 unexpected: model.faster_token" in msg
    assert "linear_2.bias: checkpoint (7,) vs model (48,)" in msg
    assert "likely cause:" in msg
    result = load_into(meta_twin(hf), sd.items(), strict=False)
    assert len(result.missing) == 25 and result.unexpected == ["model.faster_token"]
    assert result.mismatched == ["model.multi_modal_projector.linear_2.bias: checkpoint (7,) vs model (48,)"]


def test_integer_weights_are_refused_by_name():
    hf = hf_model("llava")
    sd = dict(as_hf_module_names(current(hf).items()))
    name = "model.multi_modal_projector.linear_1.weight"
    sd[name] = sd[name].to(torch.int32)
    with pytest.raises(CheckpointMismatchError) as e:
        load_into(meta_twin(hf), sd.items())
    msg = str(e.value)
    assert f"1 wrong shape or dtype: {name}: checkpoint torch.int32 vs model floating point" in msg
    assert "integer tensors where weights belong" in msg


@pytest.mark.parametrize(
    "section,key,value,match",
    [
        ("text_config", "hidden_size", -1, "text_config.hidden_size must be a positive integer, got -1"),
        ("text_config", "num_hidden_layers", 0, "text_config.num_hidden_layers must be a positive integer"),
        ("vision_config", "patch_size", 0, "vision_config.patch_size must be a positive integer"),
        ("vision_config", "num_attention_heads", 5, "multiple of num_attention_heads 5"),
        (None, "image_token_index", 10**6, "image_token_index 1000000 is outside the text vocabulary"),
    ],
)
def test_config_values_are_checked(section, key, value, match):
    d = hf_model("llava").config.to_dict()
    (d[section] if section else d)[key] = value
    with pytest.raises(ValueError, match=match):
        LlavaConfig.from_hf(d)


def test_strict_error_names_old_layout():
    hf = hf_model("llava")
    old = {
        ("language_model.model." + k.removeprefix("model.language_model.")): v
        for k, v in current(hf).items()
        if k.startswith("model.language_model.")
    }
    with pytest.raises(CheckpointMismatchError, match="pre-4.52 HF layout"):
        load_into(meta_twin(hf), old.items())


# -- broken checkpoints --------------------------------------------------------------------------------------


def sharded(tmp_path) -> list[str]:
    write_checkpoint(hf_model("llava"), tmp_path, max_shard_bytes=50_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def test_missing_shard(tmp_path):
    shards = sharded(tmp_path)
    (tmp_path / shards[1]).unlink()
    with pytest.raises(FileNotFoundError, match=f"1 are missing .*{shards[1]}.*re-download"):
        list(iter_checkpoint_tensors(tmp_path))


def test_truncated_shard(tmp_path):
    shard = tmp_path / sharded(tmp_path)[2]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"{shard.name} is not a readable.*corrupt or truncated"):
        list(iter_checkpoint_tensors(tmp_path))


def test_shard_lacking_indexed_tensor(tmp_path):
    first = sharded(tmp_path)[0]
    index_file = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.extra.weight"] = first
    index_file.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"{first} lacks 1 tensor"):
        list(iter_checkpoint_tensors(tmp_path))


def test_shards_without_index_are_rejected(tmp_path):
    sharded(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()  # what an interrupted save leaves
    with pytest.raises(FileNotFoundError, match="incomplete or the save was interrupted"):
        list(iter_checkpoint_tensors(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        list(iter_checkpoint_tensors(tmp_path / ".."))


def test_bin_checkpoints(tmp_path):
    sd = {k: v.clone() for k, v in current(hf_model("llava")).items()}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    back = dict(iter_checkpoint_tensors(tmp_path))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(sd)
    parts = {"pytorch_model-00001-of-00002.bin": names[:40], "pytorch_model-00002-of-00002.bin": names[40:]}
    for file, keys in parts.items():
        torch.save({k: sd[k] for k in keys}, sharded / file)
    weight_map = {k: f for f, keys in parts.items() for k in keys}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert sorted(checkpoint_keys(sharded)) == names
    back = dict(iter_checkpoint_tensors(sharded))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_legacy_bin_format_is_refused_clearly(tmp_path):
    torch.save(
        {"lm_head.weight": torch.zeros(2, 2)},
        tmp_path / "pytorch_model.bin",
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(ValueError, match="legacy .* format"):
        list(iter_checkpoint_tensors(tmp_path))


def test_old_layout_checkpoint_streams_into_current_names(tmp_path):
    """transformers 5 save_pretrained output (old-style names) -> current names via keymaps -> exact load."""
    hf = hf_model("llava_onevision")
    hf.save_pretrained(tmp_path)
    pairs = to_hf_keys(iter_checkpoint_tensors(tmp_path), "hf_old")
    module = meta_twin(hf)
    load_into(module, as_hf_module_names(pairs))
    for k, v in hf.state_dict().items():
        assert torch.equal(module.state_dict()[k], v), k


# -- finding checkpoints -------------------------------------------------------------------------------------


def test_resolve_local_paths(tmp_path):
    assert resolve_model_path(tmp_path) == tmp_path
    assert resolve_model_path(str(tmp_path)) == tmp_path
    for missing in ["./no-such-model", str(tmp_path / "nope"), "/definitely/not/here"]:
        with pytest.raises(FileNotFoundError, match=missing.lstrip("./")):
            resolve_model_path(missing)
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="pass the checkpoint directory"):
        resolve_model_path(tmp_path / "file.json")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        read_config_dict(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config_dict(tmp_path)


def test_offline_hub_id_gives_clear_error(tmp_path):
    """A real subprocess: huggingface_hub reads HF_HUB_OFFLINE / HF_HOME when it is imported."""
    code = (
        "from llavakit.checkpoint.hub import resolve_model_path, HubUnreachableError\n"
        "try:\n    resolve_model_path('llava-hf/llava-1.5-7b-hf')\n"
        "except HubUnreachableError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": "src"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert out.stdout.startswith("ERR"), out.stderr
    msg = out.stdout
    assert "the Hugging Face hub could not be reached" in msg and "llava-hf/llava-1.5-7b-hf" in msg
    assert "is not a local directory (no " in msg  # a mistyped relative path reads as a hub id: said so
    assert "config.json and *.safetensors" in msg
    assert "huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir DIR" in msg


def test_network_failures_vs_local_errors(monkeypatch):
    import huggingface_hub

    from llavakit.checkpoint.hub import HubUnreachableError

    def fail(exc):
        def snapshot_download(*args, **kwargs):
            raise exc

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    fail(ConnectionError("Name or service not known"))
    with pytest.raises(HubUnreachableError, match="org/model is not a local directory .* hub could not be reached"):
        resolve_model_path("org/model")
    fail(PermissionError("cache directory is read-only"))
    with pytest.raises(PermissionError, match="read-only"):  # not the hub's fault: reported as it is
        resolve_model_path("org/model")


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_text_config_keys_left_out_take_transformers_defaults(model_type: str) -> None:
    """A saved text config without max_position_embeddings / sliding_window / num_key_value_heads (older
    transformers wrote only non-default values: OneVision's Qwen2) reads as transformers reads it: a Qwen2 has a
    32768-token context, not a generic 4096."""
    from transformers import AutoConfig

    from llavakit.config import TextConfig

    d = {"model_type": model_type, "hidden_size": 64, "num_attention_heads": 32, "num_hidden_layers": 1,
         "intermediate_size": 96, "vocab_size": 120}  # fmt: skip
    ref = AutoConfig.for_model(**d)
    ours = TextConfig.from_hf(d)
    assert ours.max_position_embeddings == ref.max_position_embeddings == ours.context_length
    assert ours.num_key_value_heads == ref.num_key_value_heads
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    window = getattr(ref, "sliding_window", None) if getattr(ref, "use_sliding_window", True) else None
    assert ours.sliding_window == window


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_family_keys_left_out_take_transformers_defaults(family: str) -> None:
    """A config.json that leaves out the feature layer, select strategy, token ids, pinpoints, aspect-ratio cap or
    the decoder type reads as transformers' config class of the family reads it (OneVision: layer -1, "full",
    Qwen2, anyres_max_9; not llava's -2 / "default" / Llama)."""
    from transformers import AutoConfig

    from llavakit.config import LlavaConfig

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}  # fmt: skip
    text = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 32,
            "vocab_size": 160000}  # fmt: skip
    d = {"model_type": family, "vision_config": vision, "text_config": text}
    ref = AutoConfig.for_model(**d)
    ours = LlavaConfig.from_hf(d)
    assert ours.text.model_type == ref.text_config.model_type
    assert ours.vision.model_type == ref.vision_config.model_type
    assert ours.text.max_position_embeddings == ref.text_config.max_position_embeddings
    assert ours.vision_feature_layer == ref.vision_feature_layer
    assert ours.vision_feature_select_strategy == ref.vision_feature_select_strategy
    assert ours.image_token_id == ref.image_token_index
    assert ours.video_token_id == getattr(ref, "video_token_index", None)
    assert ours.image_grid_pinpoints == getattr(ref, "image_grid_pinpoints", None)
    assert ours.vision_aspect_ratio == getattr(ref, "vision_aspect_ratio", None)


def test_activations_match_transformers_and_unknown_ones_are_named() -> None:
    """Every activation name we accept computes what transformers' ACT2FN does; an unknown decoder activation
    is refused naming the config key (it was a bare KeyError)."""
    import torch
    from transformers.activations import ACT2FN

    from llavakit.config import TextConfig
    from llavakit.model.projector import ACTIVATIONS as PROJECTOR
    from llavakit.model.text import ACTIVATIONS as TEXT

    x = torch.linspace(-6, 6, 1001)
    for name, fn in [*PROJECTOR.items(), *TEXT.items()]:
        assert torch.allclose(fn(x), ACT2FN[name](x), atol=1e-6), name
    with pytest.raises(ValueError, match="text_config.hidden_act 'swish2' is not supported"):
        TextConfig(hidden_act="swish2")


def test_an_unsupported_rope_type_is_refused_when_the_config_is_read() -> None:
    """yarn / longrope scaling is refused by name when the config is read, not at the first forward."""
    from llavakit.config import TextConfig

    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        TextConfig.from_hf({"model_type": "qwen2", "rope_scaling": {"type": "yarn", "factor": 4.0}})


@pytest.mark.parametrize("lm_head_first", [False, True])
def test_a_config_that_ties_over_untied_weights_keeps_the_stored_head(tmp_path, lm_head_first: bool) -> None:
    """config.json says tied but the checkpoint's lm_head differs from the embeddings (a fine-tune that untied
    them): the stored head is used and the model untied, as transformers does, whatever the tensors' order;
    same logits as transformers on the same files."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText

    from llavakit.model.llava import LlavaModel

    hf = hf_model("llava", tie_word_embeddings=False)
    sd = current(hf)
    assert not torch.equal(sd["lm_head.weight"], sd["model.language_model.embed_tokens.weight"])
    hf.config.tie_word_embeddings = hf.config.text_config.tie_word_embeddings = True
    hf.config.save_pretrained(tmp_path)
    order = sorted(sd, key=lambda k: (k != "lm_head.weight") if lm_head_first else (k == "lm_head.weight"))
    save_file({k: sd[k].contiguous() for k in order}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    ours = LlavaModel.from_pretrained(tmp_path)
    assert not ours.config.tie_word_embeddings
    assert ours.lm_head.weight is not ours.model.language_model.embed_tokens.weight
    assert torch.equal(ours.lm_head.weight, sd["lm_head.weight"])
    ref = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-5)


def test_a_tied_head_of_the_wrong_shape_or_dtype_is_still_a_mismatch(tmp_path) -> None:
    """The stored copy of a tied head is checked like any tensor: wrong shape or integers are refused by name."""
    from safetensors.torch import save_file

    from llavakit.model.llava import LlavaModel

    hf = hf_model("llava", tie_word_embeddings=True)
    hf.config.text_config.tie_word_embeddings = True
    hf.tie_weights()
    sd = {k: v.clone().contiguous() for k, v in current(hf).items()}
    hf.config.save_pretrained(tmp_path)
    emb = sd["model.language_model.embed_tokens.weight"]
    for head, said in ((torch.zeros(emb.shape[0] + 8, emb.shape[1]), "lm_head.weight: checkpoint"),
                       (torch.ones_like(emb, dtype=torch.int8), "lm_head.weight: checkpoint torch.int8")):  # fmt: skip
        save_file({**sd, "lm_head.weight": head}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(CheckpointMismatchError, match=said):
            LlavaModel.from_pretrained(tmp_path)


def test_a_onevision_config_without_video_token_keeps_a_small_vocabulary_loadable() -> None:
    """OneVision's default video token id (151647) only applies when the vocabulary has it."""
    from llavakit.tiny import tiny_config

    d = tiny_config("llava_onevision").to_hf()
    d.pop("video_token_index", None)
    d.pop("video_token_id", None)
    cfg = LlavaConfig.from_hf(d)
    assert cfg.video_token_id is not None and cfg.video_token_id < cfg.text.vocab_size
