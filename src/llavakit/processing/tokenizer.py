"""A thin tokenizer over the ``tokenizers`` library, reading the files HF checkpoints ship.

``tokenizer.json`` holds the whole pipeline (normalizer, pre-tokenizer, model, post-processor adding BOS,
decoder); ``tokenizer_config.json`` names the special tokens (bos / eos / pad / image / video) and may carry the
chat template; legacy directories name them in ``special_tokens_map.json`` instead (see ``with_special_tokens_map``);
``generation_config.json`` may add end-of-turn ids (Llama-3's ``<|eot_id|>``).

transformers (5.x) does not always use ``tokenizer.json`` as it is; ``as_transformers_loads`` applies the same
adjustments so that ids match ``AutoTokenizer`` / ``AutoProcessor`` on the same directory:

- ``tokenizer_class: LlamaTokenizer`` rebuilds the pre-tokenizer as ``Metaspace(split=False)`` with the prepend
  scheme of ``legacy`` / ``add_prefix_space`` (legacy tokenizer.json files prepend "▁" after every special token,
  transformers then does not), unless ``config.json`` beside it says ``llava`` / ``llava_next``, for which
  transformers loads tokenizer.json unchanged;
- padding / truncation stored in tokenizer.json are switched off (transformers disables them per call);
- the same LlamaTokenizer class assumes ``<s>`` / ``</s>`` / ``<unk>`` for the bos / eos / unk tokens that
  tokenizer_config.json (and special_tokens_map.json) do not name (``with_class_defaults``);
- every named bos / eos / unk / sep / pad / cls / mask token becomes a special added token, appended to the
  vocabulary when it is not in it (``register_named_tokens``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as _Tok

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# the named special tokens transformers passes to chat templates (plus any "*_token" key of the config)
NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# model types whose tokenizer transformers loads from tokenizer.json unchanged whatever tokenizer_class says
AS_IS_MODEL_TYPES = ("llava", "llava_next")
# the tokens transformers' LlamaTokenizer assumes for the names a tokenizer config leaves out (a null stays null)
LLAMA_CLASS_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _token_str(v: Any) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _read_json(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory where a JSON file belongs: replace it with the {path.name} file"
        )
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def _is_byte_level(tok: _Tok) -> bool:
    """Does the pipeline use byte-level pre-tokenization or decoding (GPT-2 / Llama-3 / Qwen style)?"""
    data = json.loads(tok.to_str())
    return "ByteLevel" in json.dumps([data.get("pre_tokenizer"), data.get("decoder")])


def _llama_class(tok: _Tok, config: dict[str, Any], model_type: str | None) -> bool:
    """Does transformers build its LlamaTokenizer class for these files (rather than load tokenizer.json as is)?"""
    cls = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    return cls == "LlamaTokenizer" and model_type not in AS_IS_MODEL_TYPES and not _is_byte_level(tok)


def as_transformers_loads(tok: _Tok, config: dict[str, Any], model_type: str | None = None) -> str:
    """Adjust ``tok`` (in place) the way transformers' AutoTokenizer does; returns the default padding side.

    See the module docstring. Example: a legacy Llama tokenizer.json (normalizer ``Prepend("▁")``) with
    ``tokenizer_class: LlamaTokenizer`` encodes "a<image>\\nb" as [▁a, <image>, ▁, \\n, b] by itself, but as
    [▁a, <image>, \\n, b] once rebuilt like transformers' LlamaTokenizer (prepend scheme "first").
    """
    tok.no_padding()
    tok.no_truncation()
    side = "right"
    if _llama_class(tok, config, model_type):
        prefix = config.get("add_prefix_space")
        prefix = True if prefix is None else bool(prefix)
        scheme = ("always" if config.get("legacy", False) else "first") if prefix else "never"
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
        side = "left"  # LlamaTokenizer's class default
    return config.get("padding_side") or side


def with_class_defaults(tok: _Tok, config: dict[str, Any], model_type: str | None = None) -> dict[str, Any]:
    """``config`` with the special tokens transformers' tokenizer class assumes for the names it leaves out.

    Only LlamaTokenizer (when transformers builds it, see ``as_transformers_loads``) has such defaults:
    bos ``<s>``, eos ``</s>``, unk ``<unk>``. A name the config (or special_tokens_map.json) sets to null stays
    null. Tokens missing from the vocabulary are added by ``register_named_tokens``, as transformers adds them.
    Example: ``{"tokenizer_class": "LlamaTokenizer", "bos_token": null}`` -> bos None, eos "</s>", unk "<unk>".
    """
    if not _llama_class(tok, config, model_type):
        return config
    return {**LLAMA_CLASS_TOKENS, **config}


def register_named_tokens(tok: _Tok, config: dict[str, Any]) -> None:
    """Make the named bos / eos / unk / sep / pad / cls / mask tokens of ``config`` special added tokens of
    ``tok`` (in place), as transformers does when it loads a tokenizer.

    A token already added keeps its flags and becomes special; one in the vocabulary keeps its id; one missing
    from it is appended (in that order of names). Encoding then matches the token as a whole and
    ``decode(..., skip_special_tokens=True)`` drops it. Example: vocabulary {"a": 0, "b": 1} and eos "</s>" ->
    "</s>" gets id 2 and "a</s>" encodes as [0, 2].
    """
    added = {t.content: t for t in tok.get_added_tokens_decoder().values()}
    tokens: dict[str, AddedToken] = {}
    for name in NAMED_SPECIALS:
        value = config.get(name)
        content = _token_str(value)
        if not isinstance(content, str) or not content or content in tokens:
            continue
        old = added.get(content)
        if old is not None and old.special:
            continue
        flags = value if old is None and isinstance(value, dict) else {}  # {"content": ..., "lstrip": ...}
        base = old or AddedToken(content, normalized=bool(flags.get("normalized", False)))
        tokens[content] = AddedToken(
            content,
            single_word=bool(flags.get("single_word", base.single_word)),
            lstrip=bool(flags.get("lstrip", base.lstrip)),
            rstrip=bool(flags.get("rstrip", base.rstrip)),
            normalized=base.normalized,
            special=True,
        )
    if tokens:
        tok.add_special_tokens(list(tokens.values()))


def _named_tokens(config: dict[str, Any]) -> dict[str, str]:
    """Named special tokens of a tokenizer config: top-level "*_token" keys, then the model-specific groups."""
    out: dict[str, str] = {}
    for group in ("extra_special_tokens", "model_specific_special_tokens"):
        if isinstance(config.get(group), dict):
            out.update({k: v for k, v in config[group].items() if isinstance(_token_str(v), str)})
    for key, value in config.items():
        if (key in NAMED_SPECIALS or key.endswith("_token")) and isinstance(_token_str(value), str):
            out[key] = value
    return {k: str(_token_str(v)) for k, v in out.items()}


def with_special_tokens_map(config: dict[str, Any], tokens_map: Any, where: str) -> dict[str, Any]:
    """``tokenizer_config.json``'s ``config`` with the tokens of ``special_tokens_map.json`` merged as transformers
    (5.x) merges them; ``where`` names the file in errors.

    The file is read only when the config has no ``added_tokens_decoder`` (which newer configs carry; they name
    their tokens themselves). Then its named tokens (bos / eos / unk / pad / ...) override the config's, a null
    value included, while other ``*_token`` keys (``image_token``) only fill what the config does not name; its
    ``extra_special_tokens`` dict overrides both. Values are strings or ``{"content": ...}`` dicts.

    Example: config ``{"bos_token": "<s>", "pad_token": null}`` + map ``{"eos_token": "</s>", "pad_token":
    "<unk>"}`` -> bos "<s>", eos "</s>", pad "<unk>" (liuhaotian/llava-v1.5-7b's layout).
    """
    if "added_tokens_decoder" in config or not tokens_map:
        return config
    if not isinstance(tokens_map, dict):
        raise ValueError(f"{where} must hold a JSON object of special tokens, got {type(tokens_map).__name__}")
    out = dict(config)
    named_by_config = _named_tokens(config)
    for key, value in tokens_map.items():
        if key in NAMED_SPECIALS:
            if value is not None and not isinstance(_token_str(value), str):
                raise ValueError(f'{where}: {key} must be a token string or {{"content": "..."}}, got {value!r:.80}')
            out[key] = _token_str(value)
        elif key.endswith("_token") and key not in named_by_config and isinstance(_token_str(value), str):
            out[key] = _token_str(value)
    extra = tokens_map.get("extra_special_tokens")
    if isinstance(extra, dict):  # top-level keys: they win over the config's groups in ``Tokenizer._named``
        out.update({k: _token_str(v) for k, v in extra.items() if isinstance(_token_str(v), str)})
    return out  # tokens as plain strings: a saved config stays loadable by transformers


def _read_tokenizer_file(file: Path) -> _Tok:
    """``tokenizer.json`` through the tokenizers library; a file it cannot read (a Git LFS pointer, cut short, not
    a tokenizer) is named with the fix instead of its bare ``Exception``."""
    try:
        return _Tok.from_file(str(file))
    except Exception as e:  # tokenizers raises plain Exception for every parse error
        from ..checkpoint.hub import lfs_pointer_error

        lfs = lfs_pointer_error(file, "the tokenizer")
        if lfs is not None:
            raise lfs from None
        raise ValueError(f"{file} cannot be read as a tokenizer ({e}); re-download it or copy it from the model") from e


class Tokenizer:
    """``tokenizer.json`` + the special tokens of ``tokenizer_config.json`` (with ``special_tokens_map.json``'s);
    encode / decode / stream-decode.

    ``padding_side`` is what transformers would use for these files (tokenizer_config.json's, else the class
    default: "left" for LlamaTokenizer, "right" otherwise).
    """

    def __init__(
        self,
        tok: _Tok,
        config: dict[str, Any] | None = None,
        extra_eos_ids: list[int] | None = None,
        padding_side: str | None = None,
    ) -> None:
        self.tok = tok
        self.config = dict(config or {})
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.extra_eos_ids = list(extra_eos_ids or [])
        self.padding_side = padding_side or self.config.get("padding_side") or "right"

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Read ``tokenizer.json`` (+ ``tokenizer_config.json``, ``special_tokens_map.json``,
        ``generation_config.json``) from a directory.

        ``config.json`` beside them, if any, only decides how transformers would treat the files (see
        ``as_transformers_loads``).
        """
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.exists():
            if (path / "tokenizer.model").exists():
                raise FileNotFoundError(
                    f"{path} has no tokenizer.json, only a sentencepiece tokenizer.model (original LLaVA "
                    "checkpoints ship it that way): convert the checkpoint with `llava convert SRC DST`, which "
                    "writes tokenizer.json"
                )
            raise FileNotFoundError(f"{path} has no tokenizer.json; is it a model / processor directory?")
        gen = _read_json(path / "generation_config.json").get("eos_token_id")
        extra = [gen] if isinstance(gen, int) else list(gen or [])
        config = _read_json(path / "tokenizer_config.json")
        tokens_map = path / "special_tokens_map.json"
        config = with_special_tokens_map(config, _read_json(tokens_map), str(tokens_map))
        tok = _read_tokenizer_file(file)
        model_type = _read_json(path / "config.json").get("model_type")
        config = with_class_defaults(tok, config, model_type)
        side = as_transformers_loads(tok, config, model_type)
        register_named_tokens(tok, config)
        return cls(tok, config, extra, padding_side=side)

    from_pretrained = from_dir

    # -- special tokens --------------------------------------------------------------------------------------

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tok.id_to_token(int(token_id))

    @functools.cached_property
    def max_token_chars(self) -> int:
        """Characters of the longest token string in the vocabulary: no token decodes to more characters
        (byte-level and sentencepiece vocabularies spell a token with at least one character per character), so
        a text of more than ``n * max_token_chars`` characters takes more than ``n`` tokens."""
        return max(map(len, self.tok.get_vocab(with_added_tokens=True)), default=1)

    def _named(self) -> dict[str, str]:
        return _named_tokens(self.config)

    def special_token(self, name: str) -> str | None:
        """The text of a special token named in tokenizer_config.json ("bos_token", "eos_token", ...).

        ``image_token`` / ``video_token`` default to "<image>" / "<video>" when the vocabulary has them.
        """
        value = self._named().get(name)
        if value is None and name in ("image_token", "video_token"):
            default = IMAGE_TOKEN if name == "image_token" else VIDEO_TOKEN
            value = default if self.tok.token_to_id(default) is not None else None
        return value

    @property
    def special_tokens(self) -> dict[str, str]:
        """{"bos_token": "<s>", ...}: what transformers passes to chat templates (the named tokens of the config)."""
        named = self._named()
        return {k: named[k] for k in [*NAMED_SPECIALS, *named] if k in named}

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.special_token("bos_token"))

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.special_token("pad_token"))

    @property
    def eos_token_ids(self) -> list[int]:
        """The eos token of tokenizer_config.json, then generation_config.json's ids (deduplicated)."""
        ids = [self.token_to_id(self.special_token("eos_token")), *self.extra_eos_ids]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @property
    def eos_token_id(self) -> int | None:
        ids = self.eos_token_ids
        return ids[0] if ids else None

    @property
    def image_token_id(self) -> int | None:
        return self.token_to_id(self.special_token("image_token"))

    @property
    def video_token_id(self) -> int | None:
        return self.token_to_id(self.special_token("video_token"))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    # -- text <-> ids ----------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (a list, tensor or array); negative ids (e.g. -100 / -200 markers) are dropped.

        ``clean_up_tokenization_spaces`` of the config is honoured as transformers does: never for BPE models.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        text = self.tok.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=skip_special_tokens)
        if self.config.get("clean_up_tokenization_spaces") and type(self.tok.model).__name__ != "BPE":
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
                text = text.replace(a, b)
            for a, b in ((" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def decode_stream(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens)

    def save(self, out: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (transformers' AutoTokenizer loads them back)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(out / "tokenizer.json"))
        cfg = {k: v for k, v in self.config.items() if k != "chat_template"}
        cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        cfg["padding_side"] = self.padding_side
        for name in ("image_token", "video_token"):  # keep the multimodal tokens discoverable
            if name not in cfg and (t := self.special_token(name)) is not None:
                cfg[name] = t
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


class StreamDecoder:
    """Token-by-token text: ``push(id)`` returns only complete characters, ``flush()`` whatever is left.

    Decoding each token on its own breaks multi-byte characters (an emoji may be 4 byte-level tokens) and
    word-initial spaces (sentencepiece's "▁"). So we keep a small window: the text of ``ids[prefix:]`` minus the
    text of ``ids[prefix:read]`` is the new text, emitted once it does not end in an incomplete character
    (U+FFFD). Example with a byte-level tokenizer and "ok 🙂": push("ok") -> "ok", push(" ") -> " ",
    push(F0) -> "", push(9F) -> "", push(99) -> "", push(82) -> "🙂".
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the decoding window
        self.read = 0  # tokens before this index have been emitted

    def _delta(self, allow_partial: bool) -> str:
        decode = self.tokenizer.tok.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        now = decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        if len(now) <= len(before) or (now.endswith("\ufffd") and not allow_partial):
            return ""
        # drop the window's head once text was emitted: later decodes stay short
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before) :]

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._delta(allow_partial=False)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end decodes to U+FFFD)."""
        out = self._delta(allow_partial=True) if self.read < len(self.ids) else ""
        self.ids, self.prefix, self.read = [], 0, 0
        return out
