"""Training labels: golden masks per template, image-token expansion equal to the processor's, truncation rules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import conv, tiny_processor, write_image

from llavakit.model.llava import IGNORE_INDEX
from llavakit.train.data import SupervisedDataset
from llavakit.train.labels import SampleError, encode_sample, expand_placeholders
from llavakit.train.records import to_messages

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
LLAVA_V1 = VICUNA.replace("curious user", "curious human").replace("user's", "human's")
LLAMA3_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
IMG = "<image>"
Q1, A1, Q2, A2 = "What is it?", "A cat.", "Color?", "Red."


def golden(template: str, n_img: int) -> list[tuple[str, bool]]:
    """The 2-turn conversation written out by hand from the template strings: (text, supervised) segments."""
    im = IMG * n_img
    if template in ("vicuna_v1", "llava_v1", "llava_1_5_hf"):
        sys = {"vicuna_v1": VICUNA + " ", "llava_v1": LLAVA_V1 + " ", "llava_1_5_hf": ""}[template]
        return [
            (f"{sys}USER: {im}\n{Q1} ASSISTANT:", False),  # the generation prompt; the model writes the rest
            (f" {A1}</s>", True),
            (f"USER: {Q2} ASSISTANT:", False),
            (f" {A2}</s>", True),
        ]
    if template == "mistral_instruct":
        return [(f"[INST] {im}\n{Q1} [/INST]", False), (f" {A1}</s>", True), (f"[INST] {Q2} [/INST]", False),
                (f" {A2}</s>", True)]  # fmt: skip
    if template == "chatml_direct":
        return [
            (f"<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{im}\n{Q1}<|im_end|>", False),
            ("<|im_start|>assistant\n", False),
            (f"{A1}<|im_end|>", True),
            (f"<|im_start|>user\n{Q2}<|im_end|><|im_start|>assistant\n", False),
            (f"{A2}<|im_end|>", True),
        ]
    if template == "qwen_1_5":
        return [
            (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{im}\n{Q1}", False),
            ("<|im_end|>\n<|im_start|>assistant\n", False),
            (f"{A1}<|im_end|>\n", True),
            (f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n", False),
            (f"{A2}<|im_end|>\n", True),
        ]
    if template == "llama3":
        h = "<|start_header_id|>{}<|end_header_id|>\n\n"
        return [
            (h.format("system") + LLAMA3_SYS + "<|eot_id|>" + h.format("user") + f"{im}\n{Q1}<|eot_id|>", False),
            (h.format("assistant"), False),
            (f"{A1}<|eot_id|>", True),
            (h.format("user") + f"{Q2}<|eot_id|>" + h.format("assistant"), False),
            (f"{A2}<|eot_id|>", True),
        ]
    raise KeyError(template)


TEMPLATES = ["vicuna_v1", "llava_v1", "llava_1_5_hf", "mistral_instruct", "chatml_direct", "qwen_1_5", "llama3"]


def _golden_ids(proc, segments):
    """BOS, then each segment tokenized on its own (the char tokenizer: one token per char or special token)."""
    ids, mask = [proc.tokenizer.bos_token_id], [False]
    for text, sup in segments:
        seg = proc.tokenizer.encode(text, add_special_tokens=False)
        ids += seg
        mask += [sup] * len(seg)
    return ids, mask


@pytest.mark.parametrize("template", TEMPLATES)
def test_golden_label_masks_for_every_template(template, tmp_path):
    proc = tiny_processor("llava_next")
    write_image(tmp_path / "a.png", 40, 90)
    n_img = proc(text=IMG, images=[Image.open(tmp_path / "a.png")])["input_ids"].eq(proc.image_token_id).sum().item()
    rec = {"id": "s1", "image": "a.png", "conversations": conv(f"{IMG}\n{Q1}", A1, Q2, A2)}
    item = SupervisedDataset([rec], tmp_path, proc, template, 4096)[0]
    ids, mask = _golden_ids(proc, golden(template, n_img))
    assert item["input_ids"].tolist() == ids
    want = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    assert item["labels"].tolist() == want
    supervised = proc.tokenizer.decode([t for t in item["labels"].tolist() if t != IGNORE_INDEX])
    end = {"chatml_direct": "<|im_end|>", "qwen_1_5": "<|im_end|>\n", "llama3": "<|eot_id|>"}.get(template, "</s>")
    sep = " " if template in ("vicuna_v1", "llava_v1", "llava_1_5_hf", "mistral_instruct") else ""
    assert supervised == f"{sep}{A1}{end}{sep}{A2}{end}"


def test_plain_template_supervises_the_caption_only(tmp_path):
    proc = tiny_processor("llava")
    write_image(tmp_path / "a.png", 30, 30)
    rec = {"id": "c1", "image": "a.png", "conversations": conv("Describe the image.\n<image>", "A red square.")}
    item = SupervisedDataset([rec], tmp_path, proc, "plain", 4096)[0]
    ids, mask = _golden_ids(proc, [(IMG * 16, False), ("A red square.\n", True)])
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]


def test_plain_template_refuses_a_multi_turn_record(tmp_path):
    """plain renders only a user turn's placeholders: a second question would vanish, its answer supervised."""
    proc = tiny_processor("llava")
    write_image(tmp_path / "a.png", 30, 30)
    turns = conv("<image>", "A red square.") + conv("What colour?", "Red.")
    rec = {"id": "m1", "image": "a.png", "conversations": turns}
    with pytest.raises(ValueError, match="takes one question and one answer per record"):
        SupervisedDataset([rec], tmp_path, proc, "plain", 4096, on_error="raise")[0]


def _bpe_processor(kind: str):
    """A processor whose tokenizer merges characters (byte-level BPE or sentencepiece-like Metaspace)."""
    from tokenizers import Tokenizer as Tok
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    from llavakit.processing.tokenizer import Tokenizer
    from llavakit.tiny import tiny_config

    tok = Tok(models.BPE(unk_token="<unk>"))
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"]
    if kind == "byte":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    corpus = [VICUNA, "USER: What is it? ASSISTANT: A cat. Color? Red. cats colors", "ASSISTANT: What a cat"] * 20
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "image_token": "<image>"}
    from llavakit.processing.processor import LlavaProcessor

    return LlavaProcessor.from_parts(Tokenizer(tok, cfg), tiny_config("llava"))


@pytest.mark.parametrize("kind", ["byte", "metaspace"])
def test_merging_tokenizers_supervise_exactly_the_answers(kind):
    proc = _bpe_processor(kind)
    msgs = to_messages({"conversations": conv(Q1, A1, Q2, A2)})
    enc = encode_sample(msgs, proc, "vicuna_v1", [], sample_id="m")
    assert enc.input_ids == proc.tokenizer.encode(
        f"{VICUNA} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>"
    )
    runs, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    # a token holding the space before the answer belongs to the answer (the model emits " A" after "ASSISTANT:")
    texts = [proc.tokenizer.decode(r).strip() for r in runs]
    assert texts == [f"{A1}</s>", f"{A2}</s>"]


# -- image tokens equal the processor's ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family,sizes",
    [
        ("llava", [(40, 90)]),
        ("llava_next", [(40, 90)]),
        ("llava_next", [(90, 40)]),
        ("llava_next", [(57, 57)]),
        ("llava_next", [(300, 61)]),
        ("llava_next", [(20, 50), (100, 30)]),
        ("llava_onevision", [(33, 150)]),
        ("llava_onevision", [(700, 500)]),
        ("llava_onevision", [(40, 90), (60, 60), (10, 300)]),
    ],
)
def test_image_tokens_and_pixels_equal_the_processor(family, sizes, tmp_path):
    proc = tiny_processor(family)
    paths = [write_image(tmp_path / f"{k}.png", h, w, seed=k) for k, (h, w) in enumerate(sizes)]
    q = "".join(f"{IMG}\n" if len(sizes) == 1 else f"Picture {k}: {IMG}. " for k in range(len(sizes))) + Q1
    rec = {"id": "x", "image": [p.name for p in paths], "conversations": conv(q, A1)}
    item = SupervisedDataset([rec], tmp_path, proc, None, 100_000)[0]
    prompt = proc.apply_chat_template(to_messages(rec), add_generation_prompt=False)
    ref = proc(text=prompt, images=[Image.open(p) for p in paths])
    assert item["input_ids"].tolist() == ref["input_ids"][0].tolist()
    torch.testing.assert_close(item["pixel_values"], ref["pixel_values"], rtol=0, atol=0)
    if family != "llava":
        assert item["image_sizes"].tolist() == ref["image_sizes"].tolist()


def test_image_tokens_equal_transformers_processor(tmp_path):
    """The same rendered prompt through transformers' LlavaNextProcessor gives the same ids."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "processing"))
    from hf_processors import hf_processor

    ref_proc = hf_processor("llava_next", tmp_path)
    from llavakit.processing.processor import LlavaProcessor

    proc = LlavaProcessor.from_pretrained(tmp_path / "llava_next")
    for k, (h, w) in enumerate([(40, 90), (200, 51), (112, 112)]):
        write_image(tmp_path / f"{k}.png", h, w, seed=k)
        rec = {"id": str(k), "image": f"{k}.png", "conversations": conv(f"{IMG}\n{Q1}", A1)}
        item = SupervisedDataset([rec], tmp_path, proc, "vicuna_v1", 100_000)[0]
        prompt = proc.apply_chat_template(to_messages(rec), add_generation_prompt=False)
        ref = ref_proc(text=prompt, images=[Image.open(tmp_path / f"{k}.png")], return_tensors="pt")
        assert item["input_ids"].tolist() == ref["input_ids"][0].tolist()


# -- refusals and truncation ---------------------------------------------------------------------------------------


def test_expand_placeholders_shifts_spans():
    assert expand_placeholders("x<image>y", [(8, 9)], [3], []) == ("x<image><image><image>y", [(22, 23)])
    with pytest.raises(ValueError, match="1 <image>"):
        expand_placeholders("x<image>y", [(8, 9)], [3, 3], [])


def test_spans_that_cannot_be_derived_are_refused_naming_the_sample():
    proc = tiny_processor("llava")
    proc.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    msgs = to_messages({"conversations": conv(Q1, A1)})
    with pytest.raises(SampleError, match="sample 'no-gen'.*generation") as e:
        encode_sample(msgs, proc, "chat_template", [], sample_id="no-gen")
    assert e.value.reason == "no_labels"
    with pytest.raises(SampleError, match="'img-in-answer'.*inside an assistant answer"):
        encode_sample(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<image>"}],
            proc,
            "vicuna_v1",
            [(30, 30)],
            sample_id="img-in-answer",
        )


def test_chat_template_with_generation_marks_gives_labels():
    proc = tiny_processor("llava")
    proc.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}U: {% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
        "{% else %}A: {% for p in m['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
        "{{ p['text'] }}{{ eos_token }}{% endgeneration %}{% endfor %}{{ '\\n' }}{% endif %}{% endfor %}"
    )
    msgs = to_messages({"image": "a.png", "conversations": conv(f"{IMG}\n{Q1}", A1)})
    enc = encode_sample(msgs, proc, "chat_template", [(30, 30)], sample_id="g")
    assert proc.tokenizer.decode(enc.input_ids) == "<s>U: " + IMG * 16 + f"{Q1}\nA: {A1}</s>\n"
    assert proc.tokenizer.decode([t for t in enc.labels if t >= 0]) == f"{A1}</s>"
    assert enc.input_ids.count(proc.image_token_id) == 16


def test_truncation_never_cuts_image_tokens(tmp_path):
    proc = tiny_processor("llava")
    msgs = to_messages({"image": "a", "conversations": conv(f"{IMG}\n{Q1}", A1, Q2, A2)})
    full = encode_sample(msgs, proc, "llava_1_5_hf", [(30, 30)], sample_id="t")
    first_image = full.input_ids.index(proc.image_token_id)
    # cut inside the image tokens: dropped as too_long
    with pytest.raises(SampleError, match="cut through the image") as e:
        encode_sample(msgs, proc, "llava_1_5_hf", [(30, 30)], max_length=first_image + 5, sample_id="t")
    assert e.value.reason == "too_long"
    # cut after the first answer: kept, truncated, first answer still supervised
    end_a1 = full.input_ids.index(proc.tokenizer.eos_token_id) + 1
    cut = encode_sample(msgs, proc, "llava_1_5_hf", [(30, 30)], max_length=end_a1 + 3, sample_id="t")
    assert cut.truncated and cut.input_ids == full.input_ids[: end_a1 + 3]
    assert proc.tokenizer.decode([t for t in cut.labels if t >= 0]) == f" {A1}</s>"
    # cut after the image but before any answer token: nothing supervised is left -> dropped
    with pytest.raises(SampleError, match="no answer token is left") as e:
        encode_sample(msgs, proc, "llava_1_5_hf", [(30, 30)], max_length=first_image + 18, sample_id="t")
    assert e.value.reason == "too_long"


def test_dataset_drops_and_counts_too_long_samples(tmp_path):
    proc = tiny_processor("llava")
    write_image(tmp_path / "a.png", 30, 30)
    long_q = "x" * 200
    recs = [
        {"id": "long", "image": "a.png", "conversations": conv(f"{long_q}<image>", A1)},
        {"id": "ok", "image": "a.png", "conversations": conv(f"{IMG}\n{Q1}", A1)},
    ]
    ds = SupervisedDataset(recs, tmp_path, proc, "llava_1_5_hf", 100)  # on_error="raise": too_long still drops
    assert ds[0]["id"] == "ok" and ds.skipped == {"too_long": 1}
    assert ds[0]["length"] <= 100
