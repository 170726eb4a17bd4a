"""Special tokens a tokenizer config leaves out: transformers' LlamaTokenizer assumes <s> / </s> / <unk>, and every
named bos / eos / unk / pad ... token becomes a special added token (appended when the vocabulary lacks it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HfTok

from llavakit.processing.tokenizer import Tokenizer

LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]
# characters of the tiny vocabularies only: transformers' rebuilt LlamaTokenizer drops unknown characters (its BPE
# has byte fallback and no unk token), which no real Llama vocabulary (all 256 byte tokens) ever meets
TEXTS = ["a x", "a x</s>", "<s>b<unk>c</s>", " a  b ", "x</s><s>y", "zz yy"]


def _sentencepiece(in_vocab: list[str], added: list[str] | None = None) -> HfTok:
    """A legacy Llama-style tokenizer.json (Prepend("▁") normalizer) whose vocabulary starts with ``in_vocab``;
    ``added``: the tokens it declares as special added tokens."""
    vocab = {t: i for i, t in enumerate(in_vocab)}
    for t in [*"▁abcxyz", "▁a", "▁x"]:
        vocab[t] = len(vocab)
    unk = "<unk>" if "<unk>" in vocab else None
    tok = HfTok(models.BPE(vocab=vocab, merges=[("▁", "a"), ("▁", "x")], unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    if added:
        tok.add_special_tokens(added)
    return tok


def _byte_level() -> HfTok:
    tok = HfTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(["hello world a x"] * 3, trainers.BpeTrainer(vocab_size=280, initial_alphabet=alphabet))
    return tok


def _write(path: Path, tok: HfTok, config: dict[str, Any], model_type: str | None = None, tokens_map=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if model_type is not None:
        (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if tokens_map is not None:
        (path / "special_tokens_map.json").write_text(json.dumps(tokens_map))
    return path


LLAMA = {"tokenizer_class": "LlamaTokenizer"}
USUAL = _sentencepiece(LLAMA_SPECIALS, LLAMA_SPECIALS)  # only saved by the tests, never changed
CASES: dict[str, tuple[HfTok, dict[str, Any], str | None, Any]] = {
    # the usual layout: the three tokens are special added tokens at 0, 1, 2
    "added": (USUAL, LLAMA, None, None),
    "fast_class_name": (USUAL, {"tokenizer_class": "LlamaTokenizerFast"}, None, None),
    # in the vocabulary but not declared added: they become special tokens at their vocabulary ids
    "in_vocab_only": (_sentencepiece(LLAMA_SPECIALS), LLAMA, None, None),
    # absent from the vocabulary: appended, bos / eos / unk in that order
    "absent": (_sentencepiece([]), LLAMA, None, None),
    "partly_absent": (_sentencepiece(["</s>"]), LLAMA, None, None),
    # what the config names wins, a null included
    "named_or_null": (USUAL, {**LLAMA, "bos_token": None, "eos_token": "x"}, None, None),
    "null_in_tokens_map": (USUAL, LLAMA, None, {"bos_token": None, "pad_token": "<unk>"}),
    # transformers builds LlamaTokenizer for these model types too...
    "onevision_model": (USUAL, LLAMA, "llava_onevision", None),
    # ... but loads tokenizer.json as it is (no class defaults) for llava / llava_next and byte-level files
    "llava_model": (USUAL, LLAMA, "llava", None),
    "llava_next_absent": (_sentencepiece([]), LLAMA, "llava_next", None),
    "byte_level": (_byte_level(), LLAMA, None, None),
}


@pytest.mark.parametrize("case", CASES)
def test_unnamed_llama_tokens_are_filled_like_transformers(tmp_path: Path, case: str) -> None:
    from transformers import AutoTokenizer

    tok, config, model_type, tokens_map = CASES[case]
    d = _write(tmp_path / "d", tok, config, model_type, tokens_map)
    ours, ref = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(d)
    _assert_same(ours, ref)
    if case == "added":  # what used to be None
        assert (ours.bos_token_id, ours.eos_token_id, ours.token_to_id(ours.special_token("unk_token"))) == (1, 2, 0)
    if case == "absent":
        assert (ours.bos_token_id, ours.eos_token_id, ours.vocab_size) == (9, 10, 12)  # after 9 own tokens
    ours.save(tmp_path / "saved")  # the filled names are written out: both read the same tokens back
    if model_type is not None:
        (tmp_path / "saved" / "config.json").write_text(json.dumps({"model_type": model_type}))
    _assert_same(Tokenizer.from_dir(tmp_path / "saved"), AutoTokenizer.from_pretrained(tmp_path / "saved"))


def _assert_same(ours: Tokenizer, ref: Any) -> None:
    assert ours.special_tokens == ref.special_tokens_map
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        ref.bos_token_id,
        ref.eos_token_id,
        ref.pad_token_id,
    )
    assert ours.token_to_id(ours.special_token("unk_token")) == ref.unk_token_id
    assert ours.vocab_size == len(ref)
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref(text, add_special_tokens=special).input_ids, (text, special)
            assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text


def _word_level(in_vocab: list[str]) -> HfTok:
    tok = HfTok(models.WordLevel({t: i for i, t in enumerate([*in_vocab, "a", "b", "<unk>"])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.mark.parametrize("in_vocab", [["<pad>", "</s>"], []])
def test_named_tokens_become_special_added_tokens(tmp_path: Path, in_vocab: list[str]) -> None:
    """Any tokenizer class: a named pad / eos token that tokenizer.json does not declare is registered (appended
    when missing), so "</s>" encodes as one token and decoding can skip it, as with transformers."""
    from transformers import AutoTokenizer

    tok = _word_level(in_vocab)
    tok.add_tokens([AddedToken("<img>", lstrip=True, normalized=True)])  # added, not special: left alone
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>"}
    d = _write(tmp_path / "d", tok, config)
    ours, ref = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(d)
    _assert_same(ours, ref)
    assert ours.encode("a </s> b <pad>") == ref("a </s> b <pad>").input_ids
    assert ours.pad_token_id is not None and ours.eos_token_id is not None


def test_a_named_token_added_as_plain_text_becomes_special_with_its_flags(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = _word_level([])
    tok.add_tokens([AddedToken("</s>", lstrip=True, normalized=True)])
    d = _write(tmp_path / "d", tok, {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"})
    ours, ref = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(d)
    _assert_same(ours, ref)
    assert ours.tok.get_added_tokens_decoder() == ref.backend_tokenizer.get_added_tokens_decoder()
    assert ours.decode(ours.encode("a </s>b"), skip_special_tokens=True) == "a b"
