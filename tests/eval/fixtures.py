"""Tiny benchmark copies in their published layouts, with images rendered here (a few records each)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (30 * seed % 255, 120, 200))
    ImageDraw.Draw(img).rectangle([4, 4, 4 + 3 * seed % 20, 14], fill=(250, 250, 0))
    img.save(path)
    return path


def png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (36, 30), (seed * 40 % 255, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


def jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def dump(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _vqa_answers(answers: list[str]) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


VQAV2_ANSWERS = {1: ["red"] * 10, 2: ["2"] * 2 + ["3"] * 8, 3: ["yes"] * 10}


def vqav2(root: Path, *, missing: int | None = None) -> Path:
    """LLaVA layout: llava_vqav2_mscoco_val2014.jsonl + the official annotations + val2014/ images."""
    questions = {1: "What color is the box?", 2: "How many boxes?", 3: "Is it sunny?"}
    records = []
    for qid, q in questions.items():
        name = f"COCO_val2014_{qid:012d}.jpg"
        if qid != missing:
            image(root / "val2014" / name, qid)
        records.append({"question_id": qid, "image": name, "text": f"{q}\n{SHORT}", "category": "default"})
    jsonl(root / "llava_vqav2_mscoco_val2014.jsonl", records)
    anns = [{"question_id": q, "image_id": q, "answers": _vqa_answers(a)} for q, a in VQAV2_ANSWERS.items()]
    dump(root / "v2_mscoco_val2014_annotations.json", {"data_subtype": "val2014", "annotations": anns})
    return root


def textvqa(root: Path) -> Path:
    """Two questions on one image (LLaVA's question_id is the image id), OCR-token prompts."""
    image(root / "train_images" / "abc1.jpg", 1)
    image(root / "train_images" / "abc2.jpg", 2)
    data = [
        {
            "question_id": 10,
            "image_id": "abc1",
            "question": "what brand is it?",
            "answers": ["sony"] * 3 + ["canon"] * 7,
        },
        {"question_id": 11, "image_id": "abc1", "question": "what number is shown?", "answers": ["1,000"] * 10},
        {"question_id": 12, "image_id": "abc2", "question": "what word is there?", "answers": ["stop"] * 10},
    ]
    dump(root / "TextVQA_0.5.1_val.json", {"data": data})
    records = [
        {
            "question_id": d["image_id"],
            "image": f"{d['image_id']}.jpg",
            "text": f"{d['question'].capitalize()}\nReference OCR token: sony, 1000\n{SHORT}",
        }
        for d in data
    ]
    jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", records)
    return root


def gqa(root: Path) -> Path:
    ann = {
        "201": {"imageId": "n1", "question": "Is the box yellow?", "answer": "yes"},
        "202": {"imageId": "n1", "question": "Which side is the box on?", "answer": "left"},
        "203": {"imageId": "n2", "question": "What color is the car?", "answer": "red"},
    }
    for i, name in enumerate(["n1", "n2"]):
        image(root / "images" / f"{name}.jpg", i)
    dump(root / "testdev_balanced_questions.json", ann)
    records = [
        {"question_id": qid, "image": f"{q['imageId']}.jpg", "text": f"{q['question']}\n{SHORT}"}
        for qid, q in ann.items()
    ]
    jsonl(root / "llava_gqa_testdev_balanced.jsonl", records)
    return root


VIZWIZ_ANSWERS = {
    "VizWiz_val_00000000.jpg": ["soup"] * 10,
    "VizWiz_val_00000001.jpg": ["unanswerable"] * 5 + ["blurry"] * 5,
    "VizWiz_val_00000002.jpg": ["dog"] * 10,
}


def vizwiz(root: Path) -> Path:
    anns = []
    for i, (name, answers) in enumerate(VIZWIZ_ANSWERS.items()):
        image(root / "val" / name, i)
        anns.append({"image": name, "question": "What is this?", "answers": _vqa_answers(answers), "answerable": 1})
    dump(root / "Annotations" / "val.json", anns)
    return root


POPE_LABELS = {"random": ["yes", "no", "yes", "no"], "adversarial": ["yes", "no", "no"]}


def pope(root: Path) -> Path:
    """coco/coco_pope_<split>.json label files + LLaVA's llava_pope_test.jsonl (unique ids across splits)."""
    questions, qid = [], 0
    for split, labels in POPE_LABELS.items():
        lines = []
        for i, label in enumerate(labels):
            name = f"COCO_val2014_{i:012d}.jpg"
            image(root / "val2014" / name, i)
            lines.append(
                {"question_id": i + 1, "image": name, "text": f"Is there a cat{i} in the image?", "label": label}
            )
            qid += 1
            questions.append(
                {
                    "question_id": qid,
                    "image": name,
                    "text": f"Is there a cat{i} in the image?\n{SHORT}",
                    "category": split,
                }
            )
        jsonl(root / "coco" / f"coco_pope_{split}.json", lines)
    jsonl(root / "llava_pope_test.jsonl", questions)
    return root


SQA_PROBLEMS = {
    "1": {"question": "Which is a metal?", "choices": ["wood", "iron"], "answer": 1, "hint": "", "image": "image.png"},
    "2": {"question": "Which animal flies?", "choices": ["cat", "dog", "bird"], "answer": 2, "hint": "Look.",
          "image": "image.png"},
    "3": {"question": "Text only?", "choices": ["yes", "no"], "answer": 0, "hint": "", "image": None},
    "4": {"question": "Pick B.", "choices": ["a", "b"], "answer": 1, "hint": "", "image": "image.png"},
}  # fmt: skip


def scienceqa(root: Path) -> Path:
    """problems.json + pid_splits.json + images/test/<pid>/image.png (problem 3 has no image: not in SQA-IMG)."""
    dump(root / "problems.json", SQA_PROBLEMS)
    dump(root / "pid_splits.json", {"test": list(SQA_PROBLEMS), "train": []})
    for pid, p in SQA_PROBLEMS.items():
        if p["image"]:
            image(root / "images" / "test" / pid / "image.png", int(pid))
    return root


MMBENCH_ROWS = [
    {"index": 0, "question": "What is shown?", "hint": "A picture.", "A": "cat", "B": "dog", "C": "cow", "D": "",
     "answer": "B", "category": "recognition"},
    {"index": 1, "question": "Which color?", "hint": "nan", "A": "red", "B": "blue", "C": "", "D": "",
     "answer": "A", "category": "color"},
]  # fmt: skip


def mmbench(root: Path) -> Path:
    """The MMBench TSV with base64 images (empty cells for absent options, 'nan' hints)."""
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category", "split"]
    lines = ["\t".join(header)]
    for i, row in enumerate(MMBENCH_ROWS):
        cells = {**row, "image": base64.b64encode(png_bytes(i)).decode(), "l2-category": "x", "split": "dev"}
        lines.append("\t".join(str(cells[h]) for h in header))
    root.mkdir(parents=True, exist_ok=True)
    (root / "mmbench_dev_20230712.tsv").write_text("\n".join(lines) + "\n")
    return root


def mme(root: Path) -> Path:
    """The release layout: existence/ (image + txt side by side), OCR/ (images/ + questions_answers_YN/),
    code_reasoning/ (cognition)."""
    rel = root / "MME_Benchmark_release_version"
    for i, name in enumerate(["000000000001", "000000000002"]):
        image(rel / "existence" / f"{name}.jpg", i)
        (rel / "existence" / f"{name}.txt").write_text(
            f"Is there a box in this image? Please answer yes or no.\tYes\nIs there a cat{i} in this image? "
            "Please answer yes or no.\tNo\n"
        )
    image(rel / "OCR" / "images" / "ocr1.jpg", 3)
    (rel / "OCR" / "questions_answers_YN").mkdir(parents=True)
    (rel / "OCR" / "questions_answers_YN" / "ocr1.txt").write_text(
        "Is the word STOP? Please answer yes or no.\tYes\nIs the word GO? Please answer yes or no.\tNo\n"
    )
    image(rel / "code_reasoning" / "0020.png", 4)
    (rel / "code_reasoning" / "0020.txt").write_text(
        "Does the code print 3? Please answer yes or no.\tYes\nDoes the code print 4? Please answer yes or no.\tNo\n"
    )
    return root


CHARTQA = {
    "human": [{"imgname": "c1.png", "query": "What is the max?", "label": "100"},
              {"imgname": "c2.png", "query": "Is it rising?", "label": "Yes"}],
    "augmented": [{"imgname": "c1.png", "query": "What share?", "label": "0.2"}],
}  # fmt: skip


def chartqa(root: Path) -> Path:
    for kind, records in CHARTQA.items():
        dump(root / "test" / f"test_{kind}.json", records)
    image(root / "test" / "png" / "c1.png", 1)
    image(root / "test" / "png" / "c2.png", 2)
    return root


DOCVQA = [
    {"questionId": 301, "question": "What is the date?", "image": "documents/d1.png", "answers": ["1 May 2020"]},
    {
        "questionId": 302,
        "question": "Who signed?",
        "image": "documents/d1.png",
        "answers": ["Denver Broncos", "broncos"],
    },
    {"questionId": 303, "question": "Total?", "image": "documents/d2.png", "answers": ["abcd"]},
]


def docvqa(root: Path) -> Path:
    dump(root / "val_v1.0.json", {"dataset_name": "docvqa", "dataset_split": "val", "data": DOCVQA})
    image(root / "documents" / "d1.png", 1)
    image(root / "documents" / "d2.png", 2)
    return root


INFOVQA = [
    {"questionId": 401, "question": "Which country?", "image_local_name": "i1.jpeg", "answers": ["france"]},
    {"questionId": 402, "question": "How many?", "image_local_name": "i2.jpeg", "answers": ["12", "twelve"]},
]


def infovqa(root: Path) -> Path:
    dump(root / "infographicsVQA_val_v1.0_withQT.json", {"data": INFOVQA})
    image(root / "infographicsvqa_images" / "i1.jpeg", 1)
    image(root / "infographicsvqa_images" / "i2.jpeg", 2)
    return root


def parquet(path: Path, rows: list[dict]) -> Path:
    """``rows`` written as one parquet file at ``path`` (an lmms-lab release's shard); returns its folder."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path.parent


def pq_image(seed: int) -> dict:
    """An image cell of a parquet release: PNG bytes, no path."""
    return {"bytes": png_bytes(seed), "path": None}
