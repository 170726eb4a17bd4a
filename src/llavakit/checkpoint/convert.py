"""``llava convert SRC DST``: any checkpoint llavakit reads -> the current HF layout (weights, config, processor)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .api import load_config, load_model, parse_dtype
from .hub import resolve_model_path
from .load import checkpoint_files
from .save import read_generation_config, write_generation_config
from .staging import staged_dir

if TYPE_CHECKING:
    from ..processing.processor import LlavaProcessor

# processor-side files of an HF checkpoint, copied as they are when no processor can be built
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
    "conversation_template.json",
)


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    vision_tower: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = 5 * 2**30,
    template: str | None = None,
) -> Path:
    """Read ``src`` (HF current/old layout or original LLaVA format) and write ``dst`` in the current HF layout.

    Weights keep their stored dtype unless ``dtype`` is given. ``template``: the conversation template of an
    original checkpoint (default: guessed from its config and name; refused when it cannot be). ``vision_tower``:
    a directory (or hub id) of the CLIP / SigLIP tower an original checkpoint names in ``mm_vision_tower``, read
    instead of that name; refused for HF sources, which hold their own tower. Returns ``dst``.
    """
    path = resolve_model_path(src)
    out = Path(dst)
    if out.resolve() == path.resolve():
        raise ValueError(f"convert writes a new directory; {dst} is the source itself")
    config, fmt = load_config(path, vision_tower)
    checkpoint_files(path)  # weights there (not a LoRA adapter, a stage-1 projector) before asking for a tokenizer
    facts = None
    if fmt == "original":  # everything that can refuse the conversion, before anything is written
        facts = original_facts(path, vision_tower, template, name=str(src))
    elif template is not None:
        raise ValueError(
            f"--template applies to original checkpoints; {src} is in the HF layout, whose template is its own "
            "chat_template (or conversation_template.json): leave --template out"
        )
    if fmt == "hf" and vision_tower is not None:  # it would be ignored: the tower is part of an HF checkpoint
        raise ValueError(
            f"--vision-tower applies to original checkpoints, whose CLIP / SigLIP tower is a separate model "
            f"(mm_vision_tower); {src} is in the HF layout and holds its own vision tower (vision_config and "
            "weights), which convert keeps: leave --vision-tower out"
        )
    # the processor is built (or refused) before anything is written; the output appears only when complete
    processor, note = source_processor(path, config, fmt, facts)
    model = load_model(path, dtype=parse_dtype(dtype) if dtype else stored_dtype(path), vision_tower=vision_tower)
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp, max_shard_bytes=max_shard_bytes)
        write_processor(processor, path, tmp)
        write_generation_config(read_generation_config(path), tmp)  # extra end-of-sequence ids (Llama-3's <|eot_id|>)
    notes = [note]
    if config.projector_type != "mlp2x_gelu":
        notes.append(
            f"its {config.projector_type} projector runs in llavakit; transformers' and vLLM's LLaVA classes build a "
            "two-layer projector and would load it wrongly"
        )
    for note in filter(None, notes):
        print(f"note: {note}")
    return out


def original_facts(path: Path, vision_tower: str | Path | None, template: str | None, name: str):  # noqa: ANN201
    """The processor facts of an original checkpoint, its template given or guessed (refused when neither)."""
    from ..processing.templates import TEMPLATES, get_template
    from .load import read_config_dict
    from .original import config_from_original, read_vision_tower_config

    cfg = read_config_dict(path)
    facts = config_from_original(cfg, read_vision_tower_config(cfg, path, vision_tower), name=name).processing
    if template is not None:
        facts = dataclasses.replace(facts, template=get_template(template).name)  # an unknown name is refused
    if facts.template is None:
        raise ValueError(
            f"cannot tell which conversation template {name} was trained with (its decoder is none of Vicuna, "
            f"Mistral, Yi, Llama-3, Qwen); pass --template NAME, one of {', '.join(sorted(TEMPLATES))}"
        )
    return facts


def stored_dtype(path: Path) -> torch.dtype:
    """The dtype a checkpoint stores its floating weights in: the one holding most of their elements (float32 when
    it has none), so float32 norms beside bfloat16 matrices keep the output bfloat16, and the reverse float32."""
    from .load import float_elements_by_dtype

    counts = float_elements_by_dtype(path)
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def source_processor(path: Path, config, fmt: str, facts=None) -> tuple[LlavaProcessor | None, str | None]:  # noqa: ANN001
    """The processor of the converted checkpoint, built in memory: an HF source's own (None and a note when it has
    none); an original checkpoint's from its tokenizer and ``facts`` (``original_facts``), refused (ValueError
    naming the fix) when it cannot be built."""
    from ..processing.processor import LlavaProcessor

    if fmt == "hf":
        try:
            return LlavaProcessor.from_pretrained(path), None
        except (FileNotFoundError, ValueError, OSError) as e:
            return None, f"processor not rebuilt ({e}); copied the processor files that exist"
    tokenizer = original_tokenizer(path, config)
    processor = LlavaProcessor.from_parts(
        tokenizer, config, template=facts.template, image_config=image_config_of(facts)
    )
    return processor, None


def write_processor(processor: LlavaProcessor | None, src: Path, out: Path) -> None:
    """Save ``processor`` in ``out``; without one (a weights-only HF source), copy the processor files ``src`` has."""
    if processor is not None:
        processor.save_pretrained(out)
        return
    for name in PROCESSOR_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, out / name)


def image_config_of(facts):  # noqa: ANN001, ANN201
    """The image preprocessing of an original checkpoint (``OriginalProcessing``), as its training code did it:
    CLIP's processor resizes the shortest edge and crops the centre (after ``pad`` expands to a square); SigLIP's
    resizes straight to the tile; AnyRes views are squares either way."""
    from ..processing.image import ImageConfig

    crop = facts.image_aspect_ratio in ("pad", "square", "anyres") and not facts.squash
    return ImageConfig(
        tile=facts.image_size,
        mean=tuple(facts.image_mean),
        std=tuple(facts.image_std),
        resize_shortest=crop,
        center_crop=crop,
        pad_square=facts.image_aspect_ratio == "pad",
        pinpoints=tuple(tuple(p) for p in facts.image_grid_pinpoints) if facts.image_grid_pinpoints else None,
    )


def original_tokenizer(src: Path, config):  # noqa: ANN001, ANN201
    """The checkpoint's tokenizer with ``<image>`` (and ``<pad>`` / ``<video>``) added at the converted ids.

    Original checkpoints often ship only a sentencepiece ``tokenizer.model``: transformers (with sentencepiece)
    turns it into a ``tokenizer.json`` when installed. Refused (ValueError naming the fix) when there is no
    tokenizer, when it cannot be converted, or when ``<image>`` would not land at the model's image token id.
    """
    import tempfile

    from ..processing.tokenizer import Tokenizer

    if (src / "tokenizer.json").exists():
        tok = Tokenizer.from_dir(src)
    elif not (src / "tokenizer.model").exists():
        raise ValueError(
            f"{src} has no tokenizer.json or tokenizer.model, and convert writes the processor with the weights: "
            "copy the tokenizer files of the language model it was trained from (tokenizer.json or tokenizer.model, "
            "with tokenizer_config.json) into it; nothing was written"
        )
    else:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                from transformers import AutoTokenizer  # optional: only for converting sentencepiece tokenizers

                AutoTokenizer.from_pretrained(src, use_fast=True).save_pretrained(tmp)
                tok = Tokenizer.from_dir(tmp)  # read into memory: the directory can go
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"cannot turn {src}/tokenizer.model into tokenizer.json ({e}); install transformers and "
                    "sentencepiece (pip install transformers sentencepiece), or put the model's tokenizer.json in "
                    f"{src}, and run again (nothing was written)"
                ) from e
    wanted = [("<image>", config.image_token_id)]
    if config.video_token_id is not None:
        wanted.append(("<video>", config.video_token_id))
    elif tok.pad_token_id is None:
        wanted.append(("<pad>", config.image_token_id + 1))
    for token, want in wanted:
        if tok.token_to_id(token) is None:
            tok.tok.add_special_tokens([token])
        got = tok.token_to_id(token)
        if got != want:
            hint = (
                " (or set image_token_index in its config.json to the id its <image> has)"
                if want == wanted[0][1]
                else ""
            )
            raise ValueError(
                f"{token} gets id {got} in the tokenizer of {src} but the converted model uses id {want} (the "
                f"tokenizer holds {tok.tok.get_vocab_size()} tokens with {token}, the model {config.text.vocab_size} "
                "embedding rows): it is not the tokenizer this checkpoint was trained with; put that tokenizer's "
                f"files in {src}{hint} and run again (nothing was written)"
            )
    if tok.pad_token_id is None and config.video_token_id is None:
        tok.config["pad_token"] = "<pad>"
    tok.config.setdefault("image_token", "<image>")
    return tok
