"""Chart and document QA: ChartQA (relaxed accuracy), DocVQA and InfographicVQA (ANLS).

``--data`` layouts:

* ChartQA: the release's ``test/`` folder (``test_human.json`` / ``test_augmented.json`` with
  ``{"imgname", "query", "label"}`` and ``png/`` images), or the lmms-lab parquet (``type, question,
  answer, image``). Prompt suffix: lmms-eval's "Answer the question with a single word."
* DocVQA: ``val_v1.0.json`` (``{"data": [{"questionId", "question", "image", "answers"}]}``, images at the
  paths given, e.g. ``documents/...png``), or the lmms-lab parquet.
* InfographicVQA: ``infographicsVQA_val_v1.0*.json`` (``image_local_name``; images in
  ``infographicsvqa_images/`` or ``images/``), or the lmms-lab parquet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..metrics import anls_score, relaxed_correctness
from .base import SHORT_ANSWER, SINGLE_WORD, Sample, Task, answered, resolve_image, suffixed
from .io import answer_list, answer_text, config_folder, find, parquet_image, read_json, read_parquet, require


def _parquet_pairs(
    root: Path, answers_key: str, split: str, names: tuple[str, ...] = ()
) -> list[dict[str, Any]] | None:
    """The rows of a parquet release (None when ``root`` holds none); ``names``: its config folder's names."""
    pq = find(root, ["*.parquet", "data/*.parquet", "**/*.parquet"])
    if pq is None or pq.suffix != ".parquet":
        return None
    rows = read_parquet(config_folder(root, names), split)
    for r in rows:
        require(r, ("question", answers_key, "image"), root)
    return rows


# ---------------------------------------------------------------- ChartQA


def read_chartqa(root: Path) -> list[Sample]:
    rows = _parquet_pairs(root, "answer", "test")
    if rows is not None:
        return [
            Sample(
                f"{r['type']}/{i}",
                suffixed(r["question"], SINGLE_WORD),
                parquet_image(r["image"], f"{root}:{r['__line__']}"),
                {
                    "answer": answer_text(r["answer"], f"{root}:{r['__line__']}"),
                    "type": "human" if "human" in str(r["type"]) else "augmented",
                },
            )
            for i, r in enumerate(rows)
        ]
    base = root / "test" if (root / "test").is_dir() else root
    files = [
        (kind, base / f"test_{kind}.json") for kind in ("human", "augmented") if (base / f"test_{kind}.json").is_file()
    ]
    if not files:
        raise ValueError(f"{root}: no ChartQA test_human.json / test_augmented.json")
    samples = []
    for kind, path in files:
        records = read_json(path)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of {{imgname, query, label}}")
        for i, r in enumerate(records):
            if not isinstance(r, dict) or not {"imgname", "query", "label"} <= set(r):
                raise ValueError(f"{path}: record {i} lacks 'imgname', 'query' or 'label'")
            image = resolve_image(r["imgname"], [base / "png", base])
            ref = {"answer": answer_text(r["label"], f"{path}: record {i}"), "type": kind}
            samples.append(Sample(f"{kind}/{i}", suffixed(r["query"], SINGLE_WORD), image, ref))
    return samples


def score_chartqa(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    """Relaxed accuracy overall and per split (human-written / machine-generated questions)."""
    pairs = answered(samples, predictions)
    if not pairs:
        raise ValueError("ChartQA: no predictions to score")
    right = [(s.ref["type"], relaxed_correctness(p, s.ref["answer"])) for s, p in pairs]
    scores = {"relaxed_accuracy": sum(ok for _, ok in right) / len(right)}
    counts = {"questions": len(right)}
    for kind in ("human", "augmented"):
        oks = [ok for t, ok in right if t == kind]
        if oks:
            scores[f"relaxed_{kind}"] = sum(oks) / len(oks)
            counts[kind] = len(oks)
    return {"scores": scores, "counts": counts}


# ---------------------------------------------------------------- DocVQA / InfographicVQA


def _read_anls(
    root: Path, patterns: list[str], image_key: str, image_dirs: list[str], name: str, configs: tuple[str, ...]
) -> list[Sample]:
    rows = _parquet_pairs(root, "answers", "validation", configs)
    if rows is not None:
        return [
            Sample(
                str(r.get("questionId", r["__line__"])),
                suffixed(r["question"], SHORT_ANSWER),
                parquet_image(r["image"], f"{root}:{r['__line__']}"),
                {"answers": answer_list(r["answers"], f"{root}:{r['__line__']}")},
            )
            for r in rows
        ]
    path = find(root, patterns)
    if path is None:
        raise ValueError(f"{root}: no {name} annotation file ({patterns[0]})")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: not a {name} file (no 'data' list)")
    base = path.parent
    dirs = [base / d for d in image_dirs] + [base]
    samples = []
    for i, r in enumerate(data["data"]):
        if not isinstance(r, dict) or not {"questionId", "question", image_key} <= set(r):
            raise ValueError(f"{path}: record {i} lacks 'questionId', 'question' or {image_key!r}")
        if not r.get("answers"):
            raise ValueError(f"{path}: record {i} has no answers (test splits are scored by the official server)")
        image = resolve_image(str(r[image_key]), dirs)
        ref = {"answers": answer_list(r["answers"], f"{path}: record {i}")}
        samples.append(Sample(str(r["questionId"]), suffixed(r["question"], SHORT_ANSWER), image, ref))
    return samples


def read_docvqa(root: Path) -> list[Sample]:
    return _read_anls(root, ["val_v1.0*.json", "*.json"], "image", [], "DocVQA", ("DocVQA",))


def read_infovqa(root: Path) -> list[Sample]:
    return _read_anls(
        root,
        ["infographicsVQA_val*.json", "*.json"],
        "image_local_name",
        ["infographicsvqa_images", "images"],
        "InfoVQA",
        ("InfographicVQA", "InfoVQA"),
    )


def score_anls(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    pairs = answered(samples, predictions)
    if not pairs:
        raise ValueError("ANLS: no predictions to score")
    values = [anls_score(p, s.ref["answers"]) for s, p in pairs]
    return {"scores": {"anls": sum(values) / len(values)}, "counts": {"questions": len(values)}}


CHARTQA = Task(
    "chartqa",
    read_chartqa,
    score_chartqa,
    "ChartQA test: relaxed accuracy (5 percent numeric tolerance), human and augmented splits",
    "ChartQA's test/ folder (test_human.json, test_augmented.json, png/) or the lmms-lab parquet directory",
)
DOCVQA = Task(
    "docvqa",
    read_docvqa,
    score_anls,
    "DocVQA val: ANLS",
    "a directory with val_v1.0.json and the document images it names, or the lmms-lab parquet directory",
)
INFOVQA = Task(
    "infovqa",
    read_infovqa,
    score_anls,
    "InfographicVQA val: ANLS",
    "a directory with infographicsVQA_val_v1.0*.json and infographicsvqa_images/, or the lmms-lab parquet directory",
)
