"""Training data in the LLaVA format: JSON / JSONL records -> tokenized, labelled samples with their images.

Records (their format: ``train.records``) are read and checked cheaply when the dataset is built (JSON,
conversation, placeholder counts, image files exist); images are opened only in ``__getitem__``. With
``on_error="skip"`` a bad record is counted in ``.skipped`` under its reason (see ``labels.SampleError``) and
left out (or, when found only while loading, replaced by the next good sample); with ``on_error="raise"`` the
error names the file, line and id. Samples found only while loading are counted in the process that loads them
(DataLoader workers keep their own counts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..processing.image import check_geometry, preprocess, sample_frames, video_frames
from ..processing.image_load import load_image
from ..processing.processor import LlavaProcessor
from .foreground import sample_foreground
from .labels import SampleError, encode_sample, image_token_counts
from .records import Record, as_list, check_record, frame_files, image_paths, read_records, to_messages, video_path

MAX_SUBSTITUTES = 100  # consecutive failing samples before a skip-mode dataset gives up


class DataExhausted(ValueError):
    """Too many samples in a row failed to load (all too long for data.max_length, say); the message says why."""


# -- the dataset -------------------------------------------------------------------------------------------------


class SupervisedDataset(torch.utils.data.Dataset):
    """LLaVA records -> dicts of input_ids, labels, pixel_values, image_sizes (see the training contract).

    records_or_path: a .json / .jsonl path or a list of record dicts. ``lengths`` / ``modalities`` are estimates
    known without opening images (words + one tile of tokens per image), for length-grouped sampling; each
    item's ``length`` is exact. ``num_frames`` caps the frames sampled from a video folder. With ``foreground``
    each item also holds ``foreground`` (L,) bool, False on image tokens that show only background
    (``train.foreground``, for ``data.background_drop``).
    """

    def __init__(
        self,
        records_or_path: str | Path | Sequence[dict[str, Any]],
        image_folder: str | Path | None,
        processor: LlavaProcessor,
        template: str | None,
        max_length: int,
        on_error: str = "raise",
        num_frames: int = 32,
        foreground: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"data.max_length must be an int >= 1 (tokens per sample, e.g. 2048), got {max_length!r}")
        self.image_folder = image_folder
        self.processor = processor
        self.template = template
        self.max_length = max_length
        self.on_error = on_error
        self.num_frames = num_frames
        self.foreground = foreground
        self.skipped: Counter = Counter()
        if isinstance(records_or_path, (str, Path)):
            raw = read_records(records_or_path, on_error, self.skipped)
        else:
            raw = [Record(r, f"records[{i}]") for i, r in enumerate(records_or_path)]
        self.records: list[Record] = []
        for rec in raw:
            try:
                check_record(rec, image_folder)
            except SampleError as e:
                if on_error == "raise":
                    raise SampleError(e.reason, f"{rec.where}: {e}") from e
                self.skipped[e.reason] += 1
                continue
            self.records.append(rec)
        if not self.records:
            where = records_or_path if isinstance(records_or_path, (str, Path)) else "the records given"
            if not raw and not self.skipped:  # was "no usable training records (skipped: none)"
                raise ValueError(f"{where}: holds no records (an empty file or list); give the training data's file")
            raise ValueError(f"{where}: no usable training records (skipped: {dict(self.skipped) or 'none'})")
        per_image = processor.geometry.tokens_per_tile
        self.lengths = [_estimate_length(r.data, per_image) for r in self.records]
        self.modalities = ["image" if r.data.get("image") or r.data.get("video") else "text" for r in self.records]
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def pad_id(self) -> int:
        tok = self.processor.tokenizer
        pad = tok.pad_token_id
        return pad if pad is not None else (tok.eos_token_ids or [0])[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The sample at ``i``; in skip mode (and for too-long samples) a failing one is replaced by the next.

        When ``MAX_SUBSTITUTES`` samples in a row (or all of them) fail, DataExhausted (a ValueError) says why.
        """
        first_error: SampleError | None = None
        for k in range(min(len(self), MAX_SUBSTITUTES)):
            j = (i + k) % len(self)
            if j in self._bad:
                continue
            try:
                return self.load(j)
            except SampleError as e:
                if self.on_error == "raise" and e.reason != "too_long":
                    raise SampleError(e.reason, f"{self.records[j].where}: {e}") from e
                self.skipped[e.reason] += 1
                self._bad.add(j)
                first_error = first_error or e
        raise DataExhausted(self._exhausted_message(i, first_error))

    def _exhausted_message(self, i: int, first: SampleError | None) -> str:
        if len(self._bad) >= len(self):
            what = f"all {len(self)} samples failed"
        else:
            what = f"{MAX_SUBSTITUTES} consecutive samples from index {i} failed"
        if self.skipped.get("too_long"):
            fix = f"raise data.max_length (now {self.max_length}) or shorten those samples"
        else:
            fix = "fix or remove the failing records (llava data check lists them)"
        return f"{what} ({dict(self.skipped)}){f'; first: {first}' if first else ''}; {fix}"

    def load(self, i: int) -> dict[str, Any]:
        """Build sample ``i`` (no substitution); raises SampleError."""
        rec = self.records[i]
        messages = to_messages(rec.data, rec.id)
        paths = image_paths(rec.data, self.image_folder)
        pil = [open_image(p, rec.id) for p in paths]
        frames = []
        v = video_path(rec.data, self.image_folder)
        if v is not None:
            if self.processor.family != "llava_onevision":
                raise SampleError("bad_record", f"videos need a llava_onevision processor, not {self.processor.family}")
            files = frame_files(v)
            frames = [files[k] for k in sample_frames(len(files), self.num_frames)]
        sizes = [(im.height, im.width) for im in pil]
        check_image_sizes(paths, sizes, self.processor, rec.id)
        enc = encode_sample(
            messages,
            self.processor,
            self.template,
            sizes,
            [len(frames)] if frames else [],
            max_length=self.max_length,
            sample_id=rec.id,
        )
        item: dict[str, Any] = {
            "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),  # (L,)
            "labels": torch.tensor(enc.labels, dtype=torch.long),  # (L,)
            "pixel_values": None,
            "image_sizes": None,
            "id": rec.id,
            "length": len(enc.input_ids),
            "modality": "image" if pil or frames else "text",
        }
        if pil:
            item["pixel_values"] = pixel_values(pil, self.processor)
            item["image_sizes"] = torch.tensor(sizes, dtype=torch.long)  # (n_img, 2)
        if self.foreground:
            item["foreground"] = sample_foreground(item["input_ids"], pil, self.processor)  # (L,)
        if frames:
            try:
                item["pixel_values_videos"] = video_frames(frames, self.processor.video_config)[None]  # (1, F, 3, S, S)
            except (OSError, ValueError) as e:
                raise SampleError("unreadable_image", str(e), rec.id) from e
        return item

    def token_counts(self, i: int) -> list[int]:
        """Image token counts of record ``i`` from the image headers only (no decoding)."""
        sizes = [image_size(p, self.records[i].id) for p in image_paths(self.records[i].data, self.image_folder)]
        return image_token_counts(self.processor, sizes)


def open_image(path: Path, rid: str) -> Any:
    if not path.is_file():
        raise SampleError("missing_image", f"image file not found: {path}", rid)
    try:
        return load_image(path)
    except (OSError, ValueError) as e:
        raise SampleError("unreadable_image", str(e), rid) from e


def check_image_sizes(paths: list[Path], sizes: list[tuple[int, int]], processor: LlavaProcessor, rid: str) -> None:
    """Refuse (``unreadable_image``) images of (h, w) ``sizes`` that the processor's preprocessing refuses (too
    elongated for pad-to-square, say), so they are named, skipped and counted instead of failing in ``preprocess``."""
    multi = processor.family == "llava_onevision" and len(sizes) > 1
    for path, (h, w) in zip(paths, sizes):
        try:
            check_geometry(w, h, processor.image_config, multi_image=multi, what=f"image {path}")
        except ValueError as e:
            raise SampleError("unreadable_image", str(e), rid) from e


def image_size(path: Path, rid: str) -> tuple[int, int]:
    """(height, width) from the file header, EXIF rotation applied as load_image does (no pixel decoding)."""
    from PIL import Image

    from ..processing.image_load import MAX_PIXELS, bomb_message, check_size

    if not path.is_file():
        raise SampleError("missing_image", f"image file not found: {path}", rid)
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:  # load_image refuses it at its step; said here first (before EXIF is read)
                check_size(im, f"image {path}", MAX_PIXELS)
            except ValueError as e:
                raise SampleError("unreadable_image", str(e), rid) from None
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # orientations that swap the sides
                w, h = h, w
    except SampleError:  # (a ValueError: not to be wrapped below)
        raise
    except Image.DecompressionBombError as e:  # not an OSError: it ended `llava data check` with a traceback
        raise SampleError("unreadable_image", bomb_message(f"image {path}", str(e), MAX_PIXELS), rid) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise SampleError("unreadable_image", f"image {path}: cannot read the header: {e}", rid) from e
    return h, w


def pixel_values(images: list[Any], processor: LlavaProcessor) -> torch.Tensor:
    """The processor's per-image preprocessing: llava (n, 3, S, S); AnyRes (n, max_views, 3, S, S) zero padded."""
    multi = processor.family == "llava_onevision" and len(images) > 1
    views = [preprocess(im, processor.image_config, multi_image=multi) for im in images]
    if processor.geometry.pinpoints is None:
        return torch.cat(views)
    most = max(v.shape[0] for v in views)
    return torch.stack([torch.cat([v, v.new_zeros(most - v.shape[0], *v.shape[1:])]) for v in views])


def _estimate_length(record: dict[str, Any], per_image: int) -> int:
    turns = [t for t in record.get("conversations") or [] if isinstance(t, dict)]
    words = sum(len(str(t.get("value") or "").split()) for t in turns)
    return words + per_image * (len(as_list(record.get("image"))) + (1 if record.get("video") else 0))
