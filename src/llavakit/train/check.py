"""``llava data check``: find bad training records before any GPU hour is spent.

Reports, with counts and the first offending ids of each kind: broken JSON lines, empty conversations,
placeholder/image count mismatches, missing and unreadable images (every image is decoded, as training will),
and, given a processor, samples whose labels cannot be derived and samples longer than ``--max-length``
(``too_long``: training drops them, truncation would cut image tokens or every answer; ``truncated``: training
cuts their text after the last image token). A mixture YAML (the ``datasets`` list training reads, ours or
LLaVA-NeXT's) is checked dataset by dataset. Exit status 1 when anything is found, 0 on clean data.

Example::

    $ llava data check data/train.jsonl --image-folder data/images --model-or-processor ckpt --max-length 2048
    checked 1000 records of data/train.jsonl (images under data/images)
      missing_image: 2 (a17, b3)
      too_long: 1 (c9)
    997 records OK, 3 with problems
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..processing.image import sample_frames
from ..processing.processor import LlavaProcessor
from .data import check_image_sizes, image_size, open_image
from .labels import SampleError, encode_sample
from .mixture import check_entry, read_mixture
from .records import ROLES, Record, check_record, frame_files, image_paths, iter_records, to_messages, video_path

SHOW = 10  # offending ids listed per kind


@dataclass
class CheckReport:
    records: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)  # the first message of each kind: what is wrong
    notes: list[str] = field(default_factory=list)

    def add(self, reason: str, ident: str, message: str = "") -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < SHOW:
            shown.append(ident)
        if message and reason not in self.first:
            self.first[reason] = message

    @property
    def problems(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        out = []
        for kind, n in sorted(self.counts.items()):
            out.append(f"  {kind}: {n} ({_shown(self.examples[kind], n)})")
            if kind in self.first:
                out.append(f"    first: {self.first[kind]}")
        return out + [f"  note: {n}" for n in self.notes]


def check_data(
    data: str | Path,
    image_folder: str | Path | None,
    processor: LlavaProcessor | None = None,
    template: str | None = None,
    max_length: int | None = None,
    num_frames: int = 32,
    workers: int = 1,
) -> CheckReport:
    """Check every record of a .json / .jsonl file; see the module docstring for the kinds reported.

    ``workers`` > 1 checks records in that many processes (decoding every image is the slow part); the report
    is the same, in file order.
    """
    report = CheckReport()
    if processor is None:
        report.notes.append("labels and lengths not checked: pass --model-or-processor DIR to count tokens")
    elif max_length is None:
        report.notes.append("lengths not checked: pass --max-length N")
    records = list(iter_records(data))
    if not records:  # "all 0 records OK" would pass a placeholder file for a dataset
        raise ValueError(
            f"{data} holds no records ({_emptiness(data)}); point DATA (or the mixture entry's path) at the real "
            "annotation file: a .json array or .jsonl of training records"
        )
    report.records = len(records)
    report.notes += order_notes([r for r in records if isinstance(r, Record)])
    job = partial(check_one, image_folder=image_folder, processor=processor, template=template,
                  max_length=max_length, num_frames=num_frames)  # fmt: skip
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            found = list(pool.map(job, records, chunksize=max(1, min(256, len(records) // (4 * workers)))))
    else:
        found = [job(r) for r in records]
    for f in found:
        if f is not None:
            report.add(*f)
    return report


def _emptiness(data: str | Path) -> str:
    """What a file without records holds (it is tiny): ``[]`` with any whitespace, or whitespace alone."""
    text = Path(data).read_text(encoding="utf-8-sig").strip()
    return "an empty JSON list" if text.startswith("[") else "nothing but whitespace"


def _shown(ids: list[str], total: int) -> str:
    """The first SHOW ids, comma-separated, with ", ..." when there are ``total`` > SHOW."""
    return ", ".join(ids[:SHOW]) + (", ..." if total > SHOW else "")


def order_notes(records: list[Record]) -> list[str]:
    """Notes (not problems: training reads such records as written) on ids used more than once and on turns that
    do not alternate human / gpt (original LLaVA's training asserts that they do)."""
    notes = []
    ids = Counter(r.id for r in records)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        shown = _shown(repeated, len(repeated))
        notes.append(f"{len(repeated)} ids occur more than once ({shown}); tools resuming by id skip the repeats")
    unordered = []
    for r in records:
        conv = r.data.get("conversations") if isinstance(r.data, dict) else None
        if not isinstance(conv, list):
            continue
        roles = [ROLES.get(str(t.get("from")).lower()) for t in conv if isinstance(t, dict)]
        roles = [x for x in roles if x != "system"]
        if None in roles:  # an unknown speaker: a problem of its own (bad_record), which does not train at all
            continue
        if any(x != ("user", "assistant")[i % 2] for i, x in enumerate(roles)):
            unordered.append(r.id)
    if unordered:
        shown = _shown(unordered, len(unordered))
        notes.append(
            f"{len(unordered)} records whose turns do not alternate human, gpt, human, ... ({shown}): they train as "
            "written here; original LLaVA's training refuses them"
        )
    return notes


def check_one(
    rec: Record | SampleError,
    image_folder: str | Path | None,
    processor: LlavaProcessor | None,
    template: str | None,
    max_length: int | None,
    num_frames: int,
) -> tuple[str, str, str] | None:
    """(kind, id, message) of the first problem of one record (the file:line for a broken JSON line), or None."""
    if isinstance(rec, SampleError):
        return rec.reason, str(rec).split(": broken")[0], str(rec)  # "file:line"
    try:
        check_record(rec, image_folder)
        sizes, paths = [], image_paths(rec.data, image_folder)
        for p in paths:
            im = open_image(p, rec.id)  # decodes the whole image: truncated files fail here, not in training
            sizes.append((im.height, im.width))
        if processor is not None:
            check_image_sizes(paths, sizes, processor, rec.id)
        frames = []
        v = video_path(rec.data, image_folder)
        if v is not None:
            files = frame_files(v)
            for f in files:
                image_size(f, rec.id)
            frames = [len(sample_frames(len(files), num_frames))]
        if processor is None:
            return None
        messages = to_messages(rec.data, rec.id)
        if frames and processor.family != "llava_onevision":
            raise SampleError("bad_record", f"videos need a llava_onevision processor, not {processor.family}")
        enc = encode_sample(messages, processor, template, sizes, frames, max_length=max_length, sample_id=rec.id)
    except SampleError as e:
        message = str(e)
        if e.reason == "missing_image" and image_folder is None:
            message += " (no --image-folder given: image paths are read from the working directory)"
        return e.reason, rec.id, message
    if enc.truncated:
        return "truncated", rec.id, f"sample {rec.id!r}: longer than --max-length; training cuts its text to fit"
    return None


def data_check_command(
    data: str,
    image_folder: str | None,
    template: str | None = None,
    model_or_processor: str | None = None,
    max_length: int | None = None,
    workers: int = 1,
) -> int:
    """Print the report (one per dataset of a mixture YAML, then the totals); 1 when problems were found, 0 on
    clean data."""
    processor = LlavaProcessor.from_pretrained(model_or_processor) if model_or_processor else None
    parts = dataset_parts(data, image_folder, template)
    records = bad = 0
    for path, folder, tmpl in parts:
        report = check_data(path, folder, processor, tmpl, max_length, workers=workers)
        where = f" (images under {folder})" if folder else ""
        print(f"checked {report.records} records of {path}{where}")
        for line in report.lines():
            print(line)
        n = report.problems
        print(f"{report.records - n} records OK, {n} with problems" if n else f"all {report.records} records OK")
        records, bad = records + report.records, bad + n
    if len(parts) > 1:
        print(f"mixture {data}: {len(parts)} datasets, {records - bad} records OK, {bad} with problems")
    return 1 if bad else 0


def dataset_parts(
    data: str, image_folder: str | None, template: str | None
) -> list[tuple[str, str | None, str | None]]:
    """(path, image folder, template) of every dataset ``data`` names: itself, or each entry of a mixture YAML
    (.yaml / .yml, as training reads it: an entry's image_folder and template over the command's)."""
    if not data.endswith((".yaml", ".yml")):
        return [(data, image_folder, template)]
    parts = []
    for k, e in enumerate(read_mixture(data)):
        check_entry(e, k)  # what training refuses, refused here too
        if not Path(str(e["path"])).exists():  # before hours of image decoding, not after
            raise FileNotFoundError(f"{data}: datasets[{k}]: data file not found: {e['path']}")
        parts.append((str(e["path"]), e.get("image_folder", image_folder), e.get("template", template)))
    return parts
