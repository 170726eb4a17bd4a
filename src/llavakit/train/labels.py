"""Tokenization for training: input ids and labels derived from the rendered conversation itself.

The conversation is rendered with its template, which also returns the character spans of every assistant answer
(answer text + end marker). The text is tokenized once with character offsets, and a token is supervised exactly
when its characters overlap an answer span. So the label mask cannot drift from the text: there are no
hand-counted lengths per turn (the source of the original repository's "tokenization mismatch" warnings, after
which whole samples trained with zero loss).

Worked example (``vicuna_v1``, character tokenizer, one image of 4 tokens)::

    rendered   "...USER: <image>\\nWhat? ASSISTANT: A cat.</s>"          span = "A cat.</s>"
    expanded   "...USER: <image><image><image><image>\\nWhat? ASSISTANT: A cat.</s>"   (span shifted by 3 * 7)
    ids        [<s>, ..., 120, 120, 120, 120, "\\n", ..., "A", " ", "c", "a", "t", ".", </s>]
    labels     [-100, ..., -100, -100, -100, -100, -100, ..., "A", " ", "c", "a", "t", ".", </s>]

A sample whose spans cannot be derived (no answer, a chat template without ``{% generation %}`` markers, an
image token count that differs from the images) or that keeps no supervised token is refused with a
``SampleError`` naming the sample. Truncation never cuts through image tokens (``reason="too_long"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.llava import IGNORE_INDEX
from ..processing.anyres import num_image_tokens, num_video_tokens
from ..processing.processor import LlavaProcessor
from ..processing.templates import IMAGE, TEMPLATES, VIDEO, render_chat_template_with_spans, render_with_spans

CHAT_TEMPLATE = "chat_template"  # template name meaning "the checkpoint's Jinja chat template"


class SampleError(ValueError):
    """A training sample that cannot be used; ``reason`` is a short key counted by datasets in skip mode.

    Reasons: bad_json, empty_conversation, placeholder_mismatch, missing_image, unreadable_image, too_long,
    no_labels, bad_record.
    """

    def __init__(self, reason: str, message: str, sample_id: str | None = None) -> None:
        self.reason = reason
        self.sample_id = sample_id
        self.message = message
        super().__init__(f"sample {sample_id!r}: {message}" if sample_id is not None else message)

    def __reduce__(self) -> tuple:  # picklable for DataLoader workers and parallel checks
        return SampleError, (self.reason, self.message, self.sample_id)


@dataclass
class Encoded:
    input_ids: list[int]  # (L,) image placeholders expanded
    labels: list[int]  # (L,) IGNORE_INDEX outside answers
    truncated: bool = False

    @property
    def num_supervised(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def image_token_counts(processor: LlavaProcessor, sizes: list[tuple[int, int]]) -> list[int]:
    """Tokens of each image of ONE prompt, exactly as ``LlavaProcessor.__call__`` expands them.

    OneVision: the images of a prompt holding several images are base views only (``multi_image``).
    """
    multi = processor.family == "llava_onevision" and len(sizes) > 1
    return [num_image_tokens(h, w, processor.geometry, multi_image=multi) for h, w in sizes]


def _hf_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """String contents with placeholders -> HF content parts, as llava-hf chat templates iterate them.

    "<image>\nWhat?" -> [{"type": "image"}, {"type": "text", "text": "What?"}] (the "\n" after a placeholder is
    the template's to write); answers and system texts become one text part.
    """
    out = []
    for msg in messages:
        parts: list[dict[str, Any]] = []
        for p in re.split(f"({re.escape(IMAGE)}|{re.escape(VIDEO)})", str(msg["content"])):
            if p in (IMAGE, VIDEO):
                parts.append({"type": p[1:-1]})
                continue
            if parts and parts[-1]["type"] != "text":
                p = p.removeprefix("\n")
            if p:
                parts.append({"type": "text", "text": p})
        out.append({**msg, "content": parts})
    return out


def render_sample(
    messages: list[dict[str, Any]], processor: LlavaProcessor, template: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """Text and assistant character spans of a whole training conversation (no generation prompt).

    ``template``: a named template (``vicuna_v1``, ``plain``, ...), ``"chat_template"`` for the checkpoint's
    Jinja chat template (which must mark answers with ``{% generation %}``), or None for the processor's default.
    """
    name = template or processor.template
    if name == CHAT_TEMPLATE:
        if not processor.chat_template:
            raise ValueError("template 'chat_template' was asked for but the processor has no Jinja chat template")
        extra = processor.tokenizer.special_tokens
        return render_chat_template_with_spans(processor.chat_template, _hf_parts(messages), False, **extra)
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose one of {', '.join(sorted(TEMPLATES))} or {CHAT_TEMPLATE}")
    if TEMPLATES[name].images_only and sum(m.get("role") == "assistant" for m in messages) > 1:
        # plain keeps only a user turn's placeholders: later questions would vanish while their answers were
        # still supervised (the original LLaVA asserts one exchange for it too)
        raise SampleError(
            "bad_record", f"the {name!r} template (stage 1 captions) takes one question and one answer per record"
        )
    return render_with_spans(messages, name, add_generation_prompt=False)


def expand_placeholders(
    text: str, spans: list[tuple[int, int]], image_counts: list[int], video_counts: list[int]
) -> tuple[str, list[tuple[int, int]]]:
    """Repeat the k-th ``<image>`` (``<video>``) ``image_counts[k]`` times, shifting the spans to match.

    >>> expand_placeholders("x<image>y", [(8, 9)], [3], [])
    ('x<image><image><image>y', [(22, 23)])

    Raises ValueError when the placeholder counts differ from the counts given or a placeholder lies in an answer.
    """
    marks = sorted((p, m) for m in (IMAGE, VIDEO) for p in _positions(text, m))
    n_img = sum(1 for _, m in marks if m == IMAGE)
    n_vid = len(marks) - n_img
    if n_img != len(image_counts) or n_vid != len(video_counts):
        raise ValueError(
            f"the rendered text holds {n_img} {IMAGE} and {n_vid} {VIDEO} placeholder(s) for "
            f"{len(image_counts)} image(s) and {len(video_counts)} video(s)"
        )
    imgs, vids = iter(image_counts), iter(video_counts)
    out, last, shifts = [], 0, []  # shifts: (position in the original text, extra characters inserted there)
    for pos, mark in marks:
        if any(a <= pos < b for a, b in spans):
            raise ValueError(f"a {mark} placeholder lies inside an assistant answer; images belong to user turns")
        n = next(imgs) if mark == IMAGE else next(vids)
        out.append(text[last:pos] + mark * n)
        last = pos + len(mark)
        shifts.append((pos, len(mark) * (n - 1)))
    out.append(text[last:])

    def moved(p: int) -> int:
        return p + sum(extra for at, extra in shifts if at < p)

    return "".join(out), [(moved(a), moved(b)) for a, b in spans]


def _positions(text: str, mark: str) -> list[int]:
    out, i = [], text.find(mark)
    while i >= 0:
        out.append(i)
        i = text.find(mark, i + len(mark))
    return out


def labels_from_offsets(offsets: list[tuple[int, int]], ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """``ids[i]`` where token i's characters overlap an answer span, else IGNORE_INDEX.

    Tokens without characters (BOS added by the tokenizer, offsets (0, 0)) are never supervised. A token that
    straddles a span border (rare: merges across the prompt/answer boundary) counts as answer: it holds answer text.
    """
    keep = _overlaps(offsets, spans).any(axis=0)  # (L,)
    return np.where(keep, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()


def _overlaps(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """(n_spans, L) bool: does token j (with at least one character) overlap span i."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # (L, 2)
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)  # (n_spans, 2)
    s, e = off[None, :, 0], off[None, :, 1]
    return (e > s) & (s < sp[:, 1:2]) & (e > sp[:, 0:1])


def tokenize_with_labels(
    text: str, spans: list[tuple[int, int]], processor: LlavaProcessor, sample_id: str | None = None
) -> Encoded:
    """Tokenize ``text`` (placeholders already expanded) the way the processor does; labels from ``spans``.

    Every span must be covered by at least one token, else the sample is refused (``no_labels``). A text that
    already begins with BOS (a chat template writing ``{{ bos_token }}``) gets no second one, as in the processor.
    """
    enc = processor.tokenizer.tok.encode(text, add_special_tokens=not processor._starts_with_bos(text))
    ids, offsets = list(enc.ids), enc.offsets
    hits = _overlaps(offsets, spans)  # (n_spans, L)
    for (a, b), covered in zip(spans, hits.any(axis=1)):
        if not covered:
            raise SampleError("no_labels", f"no token covers the answer {text[a:b]!r}; cannot derive labels", sample_id)
    labels = np.where(hits.any(axis=0), np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()
    return Encoded(ids, labels)


def _truncate(enc: Encoded, max_length: int, image_ids: set[int], sample_id: str | None) -> Encoded:
    """Cut to ``max_length`` only after the last image token and only if an answer token remains."""
    if len(enc.input_ids) <= max_length:
        return enc
    last_image = max((i for i, t in enumerate(enc.input_ids) if t in image_ids), default=-1)
    if last_image >= max_length:
        raise SampleError(
            "too_long",
            f"{len(enc.input_ids)} tokens > max_length {max_length} and the image tokens reach position "
            f"{last_image}; truncation would cut through the image",
            sample_id,
        )
    cut = Encoded(enc.input_ids[:max_length], enc.labels[:max_length], truncated=True)
    if cut.num_supervised == 0:
        raise SampleError(
            "too_long",
            f"{len(enc.input_ids)} tokens > max_length {max_length} and no answer token is left after truncation",
            sample_id,
        )
    return cut


def encode_sample(
    messages: list[dict[str, Any]],
    processor: LlavaProcessor,
    template: str | None,
    image_sizes: list[tuple[int, int]],
    video_frame_counts: list[int] | None = None,
    *,
    max_length: int | None = None,
    sample_id: str | None = None,
) -> Encoded:
    """input_ids and labels of one conversation with images of ``image_sizes`` (h, w) and videos of N frames.

    Raises SampleError: ``no_labels`` when spans cannot be derived or nothing is supervised,
    ``placeholder_mismatch`` when the rendered placeholders differ from the images, ``too_long`` (see _truncate).
    """
    text, spans = render_sample(messages, processor, template)
    if not spans:
        raise SampleError(
            "no_labels",
            "the rendering marks no assistant answer (a chat template needs {% generation %} blocks; "
            "use a named template such as vicuna_v1 or qwen_1_5)",
            sample_id,
        )
    counts = image_token_counts(processor, image_sizes)
    vcounts = [num_video_tokens(f, processor.geometry) for f in video_frame_counts or []]
    try:
        text, spans = expand_placeholders(text, spans, counts, vcounts)
    except ValueError as e:
        raise SampleError("placeholder_mismatch", str(e), sample_id) from e
    enc = tokenize_with_labels(text, spans, processor, sample_id)
    image_ids = {t for t in (processor.image_token_id, processor.video_token_id) if t is not None}
    got = sum(1 for t in enc.input_ids if t in image_ids)
    if got != sum(counts) + sum(vcounts):
        raise SampleError(
            "placeholder_mismatch",
            f"the tokenizer produced {got} image/video tokens, expected {sum(counts) + sum(vcounts)} "
            "(does the text itself contain image tokens, or does the tokenizer split <image>?)",
            sample_id,
        )
    if enc.num_supervised == 0:
        raise SampleError("no_labels", "no supervised token (every answer is empty)", sample_id)
    if max_length is not None:
        enc = _truncate(enc, max_length, image_ids, sample_id)
    return enc
