"""A thin tokenizer over the ``tokenizers`` library, reading the files HF checkpoints ship."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _Tok
from tokenizers.decoders import DecodeStream

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"


def _token_str(v: Any) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


class Tokenizer:
    """``tokenizer.json`` + the special tokens of ``tokenizer_config.json``; encode / decode / stream-decode."""

    def __init__(self, tok: _Tok, config: dict[str, Any] | None = None) -> None:
        self.tok = tok
        self.config = dict(config or {})
        self.chat_template: str | None = (
            self.config.get("chat_template") if isinstance(self.config.get("chat_template"), str) else None
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.exists():
            extra = (
                " It has a sentencepiece tokenizer.model only (original LLaVA checkpoints): convert the checkpoint "
                "with `llava convert SRC DST`, which writes tokenizer.json."
                if (path / "tokenizer.model").exists()
                else ""
            )
            raise FileNotFoundError(f"{path} has no tokenizer.json.{extra}")
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        return cls(_Tok.from_file(str(file)), cfg)

    # -- special tokens --------------------------------------------------------------------------------------

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.tok.token_to_id(token)

    def _special(self, name: str) -> int | None:
        return self.token_to_id(_token_str(self.config.get(name)))

    @property
    def bos_token_id(self) -> int | None:
        return self._special("bos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special("pad_token")

    @property
    def eos_token_ids(self) -> list[int]:
        ids = [self._special("eos_token")]
        return [i for i in ids if i is not None]

    @property
    def image_token_id(self) -> int | None:
        return self.token_to_id(_token_str(self.config.get("image_token")) or IMAGE_TOKEN)

    @property
    def video_token_id(self) -> int | None:
        return self.token_to_id(_token_str(self.config.get("video_token")) or VIDEO_TOKEN)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    # -- text <-> ids ----------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int] | Any, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tok.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=skip_special_tokens)

    def decode_stream(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens)

    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(out / "tokenizer.json"))
        cfg = {k: v for k, v in self.config.items() if k != "chat_template"}
        cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


class StreamDecoder:
    """Token-by-token text: ``push(id)`` returns only complete characters; nothing is ever cut mid-character."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def push(self, token_id: int) -> str:
        return self.stream.step(self.tokenizer.tok, int(token_id)) or ""

    def flush(self) -> str:
        return ""  # an incomplete trailing byte sequence is not valid text: it is dropped, never half-emitted
