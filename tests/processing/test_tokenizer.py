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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1\n",
            "is a Git LFS pointer, not the tokenizer",
        ),
        (b'{"version": "1.0", "trunc', "cannot be read as a tokenizer .*re-download it"),
    ],
)
def test_an_unreadable_tokenizer_json_is_named(tmp_path, content, message):
    """tokenizers' bare Exception ("expected value at line 1 column 1") named no file and reached the CLI as a
    traceback."""
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"tokenizer.json {message}"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize(
    "extra",
    [
        {},  # legacy defaults to False: "▁" only at the very start
        {"legacy": True},  # "▁" after every special token too
        {"legacy": False, "add_prefix_space": False},  # no "▁" at all
        {"add_bos_token": False, "add_eos_token": True},  # ignored: tokenizer.json's post-processor stays
    ],
)
@pytest.mark.parametrize("model_type", [None, "llava", "llava_next", "llava_onevision"])
def test_llama_tokenizer_class_is_rebuilt_like_transformers(tmp_path, extra, model_type):
    """tokenizer_class LlamaTokenizer: transformers rebuilds the pre-tokenizer (not for llava / llava_next models)."""
    from transformers import AutoTokenizer

    _save(sentencepiece_like(), tmp_path, tokenizer_class="LlamaTokenizer", **extra)
    if model_type is not None:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    ours, ref = Tokenizer.from_dir(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    texts = TEXTS + [" lead space", "USER: <image>\nwhat?</s>a", "<s>b"]
    for text in texts:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref(text, add_special_tokens=special).input_ids, (text, special)
            assert ours.decode(ids) == ref.decode(ids) and ours.decode(ids, True) == ref.decode(ids, True)
    assert ours.padding_side == ref.padding_side
    # the legacy file prepends "▁" after <image>; transformers' rebuilt LlamaTokenizer does only with legacy=True
    raw = sentencepiece_like().encode("a<image>\nb").ids
    same = model_type in ("llava", "llava_next") or extra.get("legacy", False)
    assert (ours.encode("a<image>\nb") == raw) is bool(same)
    # saving keeps the behaviour for both (next to the same config.json)
    ours.save(tmp_path / "again")
    if model_type is not None:
        (tmp_path / "again" / "config.json").write_text(json.dumps({"model_type": model_type}))
    again, ref2 = Tokenizer.from_dir(tmp_path / "again"), AutoTokenizer.from_pretrained(tmp_path / "again")
    for text in texts:
        assert again.encode(text) == ours.encode(text) == ref2(text).input_ids


def test_padding_and_truncation_stored_in_tokenizer_json_are_ignored(tmp_path):
    from transformers import AutoTokenizer

    tok = byte_level_bpe()
    tok.enable_padding(pad_id=0, pad_token="<pad>", length=64)
    tok.enable_truncation(max_length=5)
    _save(tok, tmp_path)
    ours, ref = Tokenizer.from_dir(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert ours.encode(text) == ref(text).input_ids
    assert ours.encode_batch(TEXTS[:2]) == [ref(t).input_ids for t in TEXTS[:2]]
    assert len(ours.encode(TEXTS[0])) > 5


def test_clean_up_tokenization_spaces_for_word_level_models(tmp_path):
    from transformers import AutoTokenizer

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", ",", "world", "!", "it", "?"])}
    tok = HfTok(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(cleanup=False)  # joins with spaces
    for clean in (True, False):
        _save(tok, tmp_path / str(clean), clean_up_tokenization_spaces=clean)
        ours, ref = Tokenizer.from_dir(tmp_path / str(clean)), AutoTokenizer.from_pretrained(tmp_path / str(clean))
        ids = ours.encode("hello , world ! it ?", add_special_tokens=False)
        assert ours.decode(ids) == ref.decode(ids)
        assert ("hello, world" in ours.decode(ids)) is clean


@pytest.mark.parametrize(
    "extra",
    [
        {"image_token": "<image>"},
        {"image_token": {"content": "<image>", "special": True, "__type": "AddedToken"}},
        {"model_specific_special_tokens": {"video_token": "<video>"}},
        {"extra_special_tokens": {"video_token": "<video>"}},
        {"extra_special_tokens": ["<video>"]},
    ],
)
def test_special_tokens_for_templates_are_the_named_ones(tmp_path, extra):
    from transformers import AutoTokenizer

    _save(byte_level_bpe(), tmp_path, **extra)
    ours, ref = Tokenizer.from_dir(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert ours.special_tokens == ref.special_tokens_map
    assert (ours.image_token_id, ours.video_token_id) == (4, 5)  # found in the vocabulary when not named
