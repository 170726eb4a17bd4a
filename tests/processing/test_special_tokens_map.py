"""Legacy ``special_tokens_map.json``: its tokens reach our Tokenizer as they reach transformers' AutoTokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as HfTok
from tokenizers import models, pre_tokenizers, processors

from llavakit.processing.tokenizer import Tokenizer

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<alt>"]


def _tokenizer_dir(path: Path, config: dict[str, Any] | None, tokens_map: Any) -> Path:
    """tokenizer.json of a tiny word-level vocabulary, plus the given tokenizer_config / special_tokens_map."""
    path.mkdir(parents=True, exist_ok=True)
    tok = HfTok(models.WordLevel({t: i for i, t in enumerate([*SPECIALS, "a", "b"])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(path / "tokenizer.json"))
    if config is not None:
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    if tokens_map is not None:
        (path / "special_tokens_map.json").write_text(json.dumps(tokens_map))
    return path


def _added(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


CASES = {
    # liuhaotian/llava-v1.5-7b: pad null in the config, every token named (dicts and a string) in the map
    "legacy_v15": (
        {"pad_token": None, "model_max_length": 2048},
        {"bos_token": _added("<s>"), "eos_token": _added("</s>"), "unk_token": _added("<unk>"), "pad_token": "<unk>"},
    ),
    "no_tokenizer_config": (None, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}),
    "map_fills_missing": ({"bos_token": "<s>"}, {"eos_token": "</s>", "pad_token": "<pad>"}),
    "map_overrides_config": ({"bos_token": "<s>", "eos_token": "</s>"}, {"eos_token": "<alt>"}),
    "map_null_overrides_config": ({"bos_token": "<s>", "pad_token": "<pad>"}, {"pad_token": None}),
    "ignored_with_added_tokens_decoder": (
        {"bos_token": "<s>", "eos_token": "</s>", "added_tokens_decoder": {"2": {**_added("</s>"), "special": True}}},
        {"eos_token": "<alt>", "pad_token": "<pad>"},
    ),
    "image_token_from_map": ({"eos_token": "</s>"}, {"image_token": "<alt>"}),
    "image_token_of_config_wins": ({"image_token": "<image>"}, {"image_token": "<alt>"}),
    "extra_dict_of_map_wins": ({"image_token": "<image>"}, {"extra_special_tokens": {"image_token": "<alt>"}}),
    "additional_list": ({"eos_token": "</s>"}, {"additional_special_tokens": ["<image>"], "bos_token": "<s>"}),
}


@pytest.mark.parametrize("case", CASES)
def test_special_tokens_map_is_read_as_transformers_reads_it(tmp_path: Path, case: str) -> None:
    from transformers import AutoTokenizer

    d = _tokenizer_dir(tmp_path / "d", *CASES[case])
    ours, ref = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(d)
    assert ours.special_tokens == ref.special_tokens_map
    assert ours.bos_token_id == ref.bos_token_id
    assert ours.eos_token_id == ref.eos_token_id
    assert ours.pad_token_id == ref.pad_token_id
    assert ours.encode("a b") == ref("a b").input_ids


def test_legacy_v15_keeps_bos_eos_pad_and_saves_them(tmp_path: Path) -> None:
    """The llava-v1.5 layout: without the map BOS / EOS / pad were lost; saved, they land in tokenizer_config.json."""
    from transformers import AutoTokenizer

    ours = Tokenizer.from_dir(_tokenizer_dir(tmp_path / "a", *CASES["legacy_v15"]))
    assert (ours.bos_token_id, ours.eos_token_ids, ours.pad_token_id) == (1, [2], 0)
    ours.save(tmp_path / "b")
    assert not (tmp_path / "b" / "special_tokens_map.json").exists()
    again, ref = Tokenizer.from_dir(tmp_path / "b"), AutoTokenizer.from_pretrained(tmp_path / "b")
    assert again.special_tokens == ref.special_tokens_map  # save() also names <image>, found in the vocabulary
    assert {k: again.special_tokens[k] for k in ours.special_tokens} == ours.special_tokens
    assert (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id) == (1, 2, 0)


@pytest.mark.parametrize(
    ("tokens_map", "message"),
    [
        ({"eos_token": ["</s>"]}, r'special_tokens_map.json: eos_token must be a token string or \{"content"'),
        (["</s>"], "special_tokens_map.json must hold a JSON object of special tokens, got list"),
    ],
)
def test_malformed_special_tokens_map_is_a_clear_error(tmp_path: Path, tokens_map: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_dir(_tokenizer_dir(tmp_path, {}, tokens_map))
