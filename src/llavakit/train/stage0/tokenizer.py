"""Stage 0a: a byte-level BPE tokenizer trained with `tokenizers` on synthetic text.

Digits are split one per token (numbers are read digit by digit), and the special tokens are those the LLaVA
templates and the processor rely on: ``<pad> <s> </s> <unk> <image>`` at ids 0-4. ``</s>`` is also the
``vicuna_v1`` / ``llava_1_5_hf`` end-of-answer marker, so it must stay one special token.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as _Tok
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ...processing.tokenizer import Tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE over ``texts``; ids 0-4 are `SPECIALS`, 5-260 the 256 bytes, merges after that.

    Example: ``train_tokenizer(["a red star"] * 10).encode("a red star")`` -> ``[1, ...]`` (``<s>`` first).
    """
    if vocab_size < len(SPECIALS) + 256 + 1:
        raise ValueError(f"vocab_size must leave room for 5 special tokens, 256 bytes and merges, got {vocab_size}")
    tok = _Tok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "image_token": "<image>",
        "add_bos_token": True,
        "model_max_length": 4096,
        "padding_side": "left",
    }
    return Tokenizer(tok, config, padding_side="left")


def save_tokenizer(tokenizer: Tokenizer, out: str | Path) -> Path:
    """Write tokenizer.json + tokenizer_config.json (loadable by our Tokenizer and transformers' AutoTokenizer)."""
    tokenizer.save(out)
    return Path(out)
