"""MME: two yes/no questions per image in 14 subtasks; acc, acc+ and the perception / cognition sums
(the official ``eval_tool/calculation.py``).

``--data``: the official release directory (``MME_Benchmark_release_version``: one folder per subtask
holding ``<image>`` + ``<image>.txt`` pairs, or ``images/`` + ``questions_answers_YN/``; each ``.txt`` has
``question<TAB>answer`` lines), the VLMEvalKit ``MME.tsv``, or the lmms-lab parquet release. The prompt is
LLaVA-1.5's (as lmms-eval's ``mme_doc_to_text`` builds it): the question without its " Please answer yes or no."
+ LLaVA's short-answer suffix.

Scores are fractions: ``perception`` = points / (200 x perception subtasks present), likewise
``cognition``; the official points (0-2000 / 0-800 with every subtask) are under ``points``, for a category only
when some of its subtasks were scored. Subtasks of the official 14 that were not scored are listed under
``missing_subtasks`` and said in a warning (stderr, report.md): such totals are not published MME totals.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..mme_pope import COGNITION_SUBTASKS, PERCEPTION_SUBTASKS, mme_scores
from .base import SHORT_ANSWER, Sample, Task, answered
from .io import base64_image, find, parquet_image, read_parquet, read_text, read_tsv, require, tsv_image

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
YES_NO = " Please answer yes or no."  # ends every MME question; replaced by the short-answer suffix


def mme_prompt(question: str) -> str:
    """lmms-eval's ``mme_doc_to_text`` with LLaVA's suffix: ``"Is it red? Please answer yes or no."`` ->
    ``"Is it red?\nAnswer the question using a single word or phrase."``."""
    return f"{question.strip().replace(YES_NO, '')}\n{SHORT_ANSWER}"


def mme_alias(subtask: str, image: str, question: str) -> str:
    """``"<subtask>/<image stem>|<question>"``: how an answer of LLaVA's MME run (question_id
    ``"<subtask>/[images/]<image>"``, shared by the image's two questions; the prompt tells them apart)
    finds its question. The question is compared without "Please answer yes or no." (LLaVA's prompts lack it,
    as its ``convert_answer_to_mme.py`` expects) and with its spaces collapsed."""
    return f"{subtask}/{Path(image).stem}|{' '.join(question.replace(YES_NO.strip(), '').split())}"


def answer_key(record: dict[str, Any]) -> str:
    """Our ids (``"<subtask>/<image>/<n>"``) as they are; LLaVA's records by :func:`mme_alias`."""
    qid = str(record.get("question_id", record.get("id")))
    if qid.count("/") >= 2 and qid.rsplit("/", 1)[1].isdigit():
        return qid
    prompt = str(record.get("prompt") or "")
    return mme_alias(qid.split("/")[0], qid, prompt.split("\n")[0])


def _release(root: Path) -> list[Sample]:
    samples = []
    for subtask in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS:
        folder = root / subtask
        if not folder.is_dir():
            continue
        if (folder / "questions_answers_YN").is_dir():
            pairs = [(folder / "images", t) for t in sorted((folder / "questions_answers_YN").glob("*.txt"))]
        else:
            pairs = [(folder, t) for t in sorted(folder.glob("*.txt"))]
        for image_dir, txt in pairs:
            image = next(
                (image_dir / (txt.stem + s) for s in IMAGE_SUFFIXES if (image_dir / (txt.stem + s)).is_file()), None
            )
            image_path = str(image if image is not None else image_dir / (txt.stem + ".jpg"))
            name = Path(image_path).name
            for n, line in enumerate(read_text(txt).splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                    raise ValueError(f"{txt}:{n}: expected 'question<TAB>Yes|No'")
                ref = {"subtask": subtask, "image": name, "answer": parts[1].strip()}
                prompt = mme_prompt(parts[0])
                alias = mme_alias(subtask, name, parts[0])
                samples.append(Sample(f"{subtask}/{name}/{n}", prompt, image_path, ref, f"{subtask}/{name}", alias))
    return samples


def _rows(rows: list[dict[str, Any]], path: Path, tsv: bool) -> list[Sample]:
    samples = []
    seen: dict[str, int] = {}
    by_index = {str(r.get("index")): r for r in rows}
    for r in rows:
        where = f"{path}:{r['__line__']}"
        require(r, ("question", "answer", "category", "image"), path)
        cell = r["image"]
        if tsv:
            cell = tsv_image(r, by_index, path)  # VLMEvalKit: a row index stands for that row's image
            image = base64_image(cell, where)
            # the image's name, or a stable stand-in (ids must not change between runs: resume relies on them)
            key = str(r.get("image_path") or "img" + hashlib.sha1(cell.encode()).hexdigest()[:12])
        else:
            image = parquet_image(cell, where)
            key = str(r.get("question_id"))
        group = f"{r['category']}/{key}"
        seen[group] = seen.get(group, 0) + 1
        ref = {"subtask": str(r["category"]), "image": group, "answer": str(r["answer"]).strip()}
        prompt = mme_prompt(str(r["question"]))
        alias = mme_alias(str(r["category"]), key, str(r["question"]))
        samples.append(Sample(f"{group}/{seen[group]}", prompt, image, ref, group, alias))
    return samples


def read(root: Path) -> list[Sample]:
    parquet = find(root, ["*.parquet", "data/*.parquet"])
    if parquet is not None and parquet.suffix == ".parquet":
        return _rows(read_parquet(root, "test"), root, tsv=False)
    if root.is_file() and root.suffix == ".tsv":
        return _rows(read_tsv(root), root, tsv=True)
    release = root
    if not any((root / s).is_dir() for s in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS):
        nested = [d for d in root.iterdir() if d.is_dir() and any((d / s).is_dir() for s in PERCEPTION_SUBTASKS)]
        if nested:
            release = nested[0]
        elif (tsv := find(root, ["*.tsv"])) is not None:
            return _rows(read_tsv(tsv), tsv, tsv=True)
        else:
            raise ValueError(f"{root}: no MME subtask folders (existence/, count/, ...), MME.tsv or parquet")
    return _release(release)


def score(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    """Official acc / acc+ per subtask on complete image pairs (a pair with an unanswered question is left
    out and counted under ``incomplete_pairs``)."""
    pairs = answered(samples, predictions)
    groups: dict[str, int] = {}
    for s in samples:
        groups[s.group or s.id] = groups.get(s.group or s.id, 0) + 1
    answered_per_group: dict[str, int] = {}
    for s, _ in pairs:
        answered_per_group[s.group or s.id] = answered_per_group.get(s.group or s.id, 0) + 1
    complete = {g for g, n in answered_per_group.items() if n == groups[g]}
    records = [
        {"subtask": s.ref["subtask"], "image": s.ref["image"], "answer": s.ref["answer"], "prediction": p}
        for s, p in pairs
        if (s.group or s.id) in complete
    ]
    if not records:
        raise ValueError("MME: no complete image pair (2 answered questions) to score")
    result = mme_scores(records)
    perception = [k for k in PERCEPTION_SUBTASKS if k in result["subtasks"]]
    cognition = [k for k in COGNITION_SUBTASKS if k in result["subtasks"]]
    scores: dict[str, float] = {}
    points: dict[str, float] = {}  # a category none of whose subtasks was scored has none (not 0: nothing measured)
    if perception:
        scores["perception"] = result["perception"] / (200 * len(perception))
        points["perception"] = result["perception"]
    if cognition:
        scores["cognition"] = result["cognition"] / (200 * len(cognition))
        points["cognition"] = result["cognition"]
    for name, sub in result["subtasks"].items():
        scores[f"{name}_acc"] = sub["acc"] / 100
        scores[f"{name}_acc_plus"] = sub["acc_plus"] / 100
        points[name] = sub["score"]
    counts = {"questions": len(records), "incomplete_pairs": len(answered_per_group) - len(complete)}
    out: dict[str, Any] = {"scores": scores, "points": points, "counts": counts, "missing_subtasks": result["missing"]}
    if result["missing"]:
        out["warnings"] = [subset_warning(result["missing"])]
    return out


def subset_warning(missing: list[str]) -> str:
    """Why a total over part of MME is not an MME total: which subtasks it lacks."""
    official = len(PERCEPTION_SUBTASKS) + len(COGNITION_SUBTASKS)
    scored = official - len(missing)
    return (
        f"MME: {len(missing)} of the {official} subtasks were not scored ({', '.join(missing)}; not in the data, "
        f"left out by --limit, or unanswered): the perception / cognition points sum the other {scored} "
        "and do not compare with published MME totals"
    )


TASK = Task(
    "mme",
    read,
    score,
    "MME: acc / acc+ per subtask, perception and cognition (official points under 'points')",
    "the MME_Benchmark_release_version directory, MME.tsv, or the lmms-lab parquet directory",
    key_of=answer_key,
)
