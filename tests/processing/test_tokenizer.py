"""Tokenizer: encode / decode parity with transformers' PreTrainedTokenizerFast, streaming decode, files and errors."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HfTok
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from llavakit.processing.tokenizer import Tokenizer

CORPUS = [
    "USER: <image>\nWhat is in the picture? ASSISTANT: A cat sitting on a red mat.",
    "Café, naïve, résumé — déjà vu. 東京タワーは赤い。 Привет, мир! 🙂🐱👍🏽 ok",
    "the quick brown fox jumps over the lazy dog\n\n  indented   spaces\ttab",
] * 3
TEXTS = [
    "USER: <image>\nWhat is it? ASSISTANT:",
    "Café 東京 🙂🐱👍🏽!",
    "a  b\n\nc\t d   ",
    "x</s>y<image><image>z",
    "zzqq unseen wörds 🦜",
    "",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>"]


def byte_level_bpe() -> HfTok:
    tok = HfTok(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def sentencepiece_like() -> HfTok:
    """Llama-style: Metaspace "▁" for spaces and byte fallback <0xNN> tokens for unknown characters."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for t in [f"<0x{b:02X}>" for b in range(256)] + list("▁abcdeiklmnorstuwyz?!") + ["▁a", "▁the", "at", "▁c"]:
        vocab[t] = len(vocab)
    merges = [("▁", "a"), ("▁", "c"), ("a", "t")]
    tok = HfTok(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def _save(tok: HfTok, path, **extra) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
           "tokenizer_class": "PreTrainedTokenizerFast", **extra}  # fmt: skip
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("build", [byte_level_bpe, sentencepiece_like])
def test_encode_decode_match_transformers(tmp_path, build):
    from transformers import PreTrainedTokenizerFast

    _save(build(), tmp_path)
    ours, ref = Tokenizer.from_dir(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref(text, add_special_tokens=special).input_ids, (text, special)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert ours.bos_token_id == ref.bos_token_id == 1
    assert ours.eos_token_ids == [ref.eos_token_id] == [2]
    assert ours.pad_token_id == ref.pad_token_id == 0
    assert (ours.image_token_id, ours.video_token_id) == (4, 5)
    assert ours.token_to_id("<image>") == ref.convert_tokens_to_ids("<image>")


@pytest.mark.parametrize("build", [byte_level_bpe, sentencepiece_like])
def test_streaming_never_yields_partial_characters(build):
    tok = Tokenizer(build(), {"bos_token": "<s>", "eos_token": "</s>"})
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        stream = tok.decode_stream()
        deltas = [stream.push(i) for i in ids]
        deltas.append(stream.flush())
        assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True), text
        assert all("\ufffd" not in d for d in deltas)
    # an emoji split over byte tokens comes out whole, exactly once, at its last byte
    ids = tok.encode("ok 🦜!", add_special_tokens=False)
    stream = tok.decode_stream()
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) == "ok 🦜!"
    emoji_at = next(i for i, d in enumerate(deltas) if "🦜" in d)
    assert emoji_at > 0 and deltas[emoji_at - 1] == ""  # the preceding byte tokens produced nothing


def test_flush_returns_an_unfinished_character_as_replacement():
    tok = Tokenizer(byte_level_bpe())
    ids = tok.encode("🦜", add_special_tokens=False)
    assert len(ids) >= 2  # byte tokens (the emoji is not in the training corpus)
    stream = tok.decode_stream()
    assert [stream.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.flush() == "\ufffd"  # held back, then surfaced at the end: never dropped silently
    assert stream.flush() == "" and stream.push(tok.encode("a", add_special_tokens=False)[0]) == "a"


def test_eos_ids_from_generation_config_and_save_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    _save(byte_level_bpe(), tmp_path / "a", image_token="<image>", chat_template="{{ 'x' }}")
    (tmp_path / "a" / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3]}))
    tok = Tokenizer.from_dir(tmp_path / "a")
    assert tok.eos_token_ids == [2, 3] and tok.chat_template == "{{ 'x' }}"
    assert tok.special_tokens["bos_token"] == "<s>" and tok.special_tokens["image_token"] == "<image>"
    tok.save(tmp_path / "b")
    again, ref = Tokenizer.from_dir(tmp_path / "b"), AutoTokenizer.from_pretrained(tmp_path / "b")
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text) == ref(text).input_ids
    assert again.decode([-100, 1, *tok.encode("hi", add_special_tokens=False)]) == "<s>hi"  # negatives dropped


def test_missing_tokenizer_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(FileNotFoundError, match="sentencepiece tokenizer.model.*llava convert"):
        Tokenizer.from_dir(tmp_path)
