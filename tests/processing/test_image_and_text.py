"""Image loading (modes, EXIF, bad input), conversation templates (goldens, spans), tokenizer (parity, streaming)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from llavakit.processing.image import load_image
from llavakit.processing.templates import render, render_chat_template, render_with_spans
from llavakit.tiny import char_tokenizer


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new("RGB", (9, 5), (200, 30, 40)).convert(mode)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (9, 5)


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(_png(img)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white block at the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(_png(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (10, 30)
    assert np.asarray(out)[:10].mean() > 200  # the white block is now at the top


def test_bad_images_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="cannot decode image"):
        load_image(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot decode image"):
        load_image(_png(Image.new("RGB", (64, 64)))[:60])  # truncated
    with pytest.raises(ValueError, match="empty"):
        load_image(b"")
    with pytest.raises(ValueError, match="zero-size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="over the limit of 1000"):
        load_image(_png(Image.new("RGB", (50, 50))), max_pixels=1000)


MSGS = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "Color?"},
]
GOLDEN = {
    "vicuna_v1": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
    "USER: Color? ASSISTANT:",
    "llava_v1": "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat is it? ASSISTANT: A cat."
    "</s>USER: Color? ASSISTANT:",
    "mistral_instruct": "[INST] <image>\nWhat is it? [/INST] A cat.</s>[INST] Color? [/INST]",
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?"
    "<|im_end|><|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nColor?<|im_end|><|im_start|>assistant\n",
    "qwen_1_5": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?"
    "<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nColor?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llava_1_5_hf": "USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:",
}
ANSWER = {
    "vicuna_v1": "A cat.</s>",
    "llava_v1": "A cat.</s>",
    "mistral_instruct": "A cat.</s>",
    "chatml_direct": "A cat.<|im_end|>",
    "qwen_1_5": "A cat.<|im_end|>\n",
    "llava_1_5_hf": "A cat.</s>",
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_templates_match_goldens_and_spans_cover_answers(name):
    text, spans = render_with_spans(MSGS, name)
    assert text == GOLDEN[name]
    assert [text[a:b] for a, b in spans] == [ANSWER[name]]


def test_plain_template_is_image_then_caption():
    msgs = [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "a red circle"}]
    text, spans = render_with_spans(msgs, "plain", add_generation_prompt=False)
    assert text == "<image>a red circle\n" and text[spans[0][0] : spans[0][1]] == "a red circle\n"


def test_unknown_template_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna'.*vicuna_v1"):
        render(MSGS, "vicuna")


LLAVA15_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_hf_chat_template_renders_like_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    char_tokenizer().save(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    ref = tok.apply_chat_template(msgs, chat_template=LLAVA15_HF_TEMPLATE, tokenize=False, add_generation_prompt=True)
    assert render_chat_template(LLAVA15_HF_TEMPLATE, msgs, True) == ref == "USER: <image>\nWhat is it? ASSISTANT:"


def test_tokenizer_matches_transformers_and_streams_whole_characters(tmp_path):
    from tokenizers import Tokenizer as Tok
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ours = char_tokenizer()
    ours.save(tmp_path / "c")
    ref = PreTrainedTokenizerFast.from_pretrained(tmp_path / "c")
    for s in ["USER: <image>\nHi there?", "a  b\n\nc", "x</s>y"]:
        assert ours.encode(s) == ref(s).input_ids
        assert ours.decode(ours.encode(s), skip_special_tokens=True) == ref.decode(
            ref(s).input_ids, skip_special_tokens=True
        )
    # byte-level tokens: an emoji is 4 byte tokens; streaming must emit it whole, once
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bl = Tok(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bl.decoder = decoders.ByteLevel()
    from llavakit.processing.tokenizer import Tokenizer

    t = Tokenizer(bl)
    ids = t.encode("ok 🙂!", add_special_tokens=False)
    stream = t.decode_stream()
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) == "ok 🙂!"
    assert "🙂" in deltas and all("\ufffd" not in d for d in deltas)
