"""LlavaProcessor against transformers' processors (PIL image processors) on the same saved files.

The tokenizer is a tiny byte-level BPE with the ids of tests/tiny_models.py (<pad>=0, <s>=1, </s>=2, <image>=120,
<video>=121, vocab 128); image sizes follow the tiny models too (CLIP tile 56 / patch 14, SigLIP tile 70).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer as HfTok
from tokenizers import decoders, models, pre_tokenizers, processors

from llavakit.config import LlavaConfig
from llavakit.processing.anyres import ImageGeometry, num_image_tokens, num_video_tokens
from llavakit.processing.image import ImageConfig
from llavakit.processing.processor import LlavaProcessor
from tiny_models import IMAGE_TOKEN, VIDEO_TOKEN, hf_config

CLIP_PINS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
OV_PINS = [[i * 70, j * 70] for i in range(1, 7) for j in range(1, 7)]
FAMILIES = ["llava", "llava_next", "llava_onevision"]
# square, 1:4, 4:1, tiny, large, odd, extreme
SIZES = [(56, 56), (300, 300), (50, 200), (200, 50), (5, 7), (7, 5), (1500, 2000), (113, 57), (333, 251), (3, 170)]
LLAVA15_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def byte_bpe() -> HfTok:
    """Byte-level BPE: the 96 byte symbols of printable ASCII + "\\n" (ids 4..99), 20 merges (100..119)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]:  # "Ġ" is the space byte, "Ċ" the newline
        vocab[ch] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "s"), ("Ġ", "i"), ("Ġi", "s"), ("e", "r"),
              ("i", "n"), ("o", "n"), ("a", "t"), ("Ġ", "c"), ("Ġc", "at"), ("Ġ", "w"), ("h", "at"), ("Ġw", "hat"),
              ("?", "Ċ"), (">", "Ċ"), ("U", "S"), ("E", "R")]  # fmt: skip
    for a, b in merges:
        vocab[a + b] = len(vocab)
    assert len(vocab) == IMAGE_TOKEN
    tok = HfTok(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    extra = [f"<extra_{i}>" for i in range(VIDEO_TOKEN + 1, 128)]
    tok.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>", *extra])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok.token_to_id("<image>") == IMAGE_TOKEN and tok.get_vocab_size() == 128
    return tok


def hf_processor(
    family: str, out, *, do_pad: bool = True, chat_template: str | None = None, padding_side: str | None = "left"
):
    """transformers' processor of ``family`` over the tiny tokenizer, saved to ``out`` (returned, not reloaded)."""
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor, LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    (out / "tok").mkdir(parents=True, exist_ok=True)
    byte_bpe().save(str(out / "tok" / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
           "image_token": "<image>", "video_token": "<video>", "padding_side": padding_side,
           "tokenizer_class": "PreTrainedTokenizerFast"}  # fmt: skip
    if padding_side is None:  # the class default applies
        del cfg["padding_side"]
    (out / "tok" / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = PreTrainedTokenizerFast.from_pretrained(out / "tok")
    clip = dict(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    common = dict(patch_size=14, num_additional_image_tokens=1, vision_feature_select_strategy="default")
    if family == "llava":
        proc = LlavaProcessor(LlavaImageProcessorPil(do_pad=do_pad, **clip), tok, chat_template=chat_template, **common)
    elif family == "llava_next":
        ip = LlavaNextImageProcessorPil(image_grid_pinpoints=CLIP_PINS, **clip)
        proc = LlavaNextProcessor(ip, tok, chat_template=chat_template, **common)
    else:
        ip = LlavaOnevisionImageProcessorPil(
            size={"height": 70, "width": 70}, image_grid_pinpoints=OV_PINS, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )

        class ImagesOnly(LlavaOnevisionProcessor):  # the HF video processor needs torchvision (not installed)
            attributes = ["image_processor", "tokenizer"]

            def __init__(self, image_processor, tokenizer):
                self.num_image_tokens, self.vision_feature_select_strategy = 25, "full"
                self.image_token, self.video_token = "<image>", "<video>"
                self.image_token_id, self.video_token_id = IMAGE_TOKEN, VIDEO_TOKEN
                self.vision_aspect_ratio = "anyres_max_9"
                super(LlavaOnevisionProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)

        proc = ImagesOnly(ip, tok)
    proc.save_pretrained(out / family)
    if family == "llava_onevision":  # what real OneVision checkpoints carry (the subclass above does not save it)
        f = out / family / "processor_config.json"
        saved = json.loads(f.read_text()) if f.exists() else {}
        saved.update(num_image_tokens=25, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                     processor_class="LlavaOnevisionProcessor")  # fmt: skip
        f.write_text(json.dumps(saved))
    return proc


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _check(ours, ref):
    assert ours["input_ids"].tolist() == ref["input_ids"].tolist()
    assert ours["attention_mask"].tolist() == ref["attention_mask"].tolist()
    torch.testing.assert_close(ours["pixel_values"], torch.as_tensor(ref["pixel_values"]), atol=1e-5, rtol=0)
    assert ("image_sizes" in ours) == ("image_sizes" in ref)
    if "image_sizes" in ref:
        assert ours["image_sizes"].tolist() == torch.as_tensor(ref["image_sizes"]).tolist()


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    """{family: (hf, ours)} built once for the module."""
    out = tmp_path_factory.mktemp("procs")
    return {f: (hf_processor(f, out), LlavaProcessor.from_pretrained(out / f)) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_single_images_of_many_sizes_match_transformers(procs, family):
    hf, ours = procs[family]
    assert ours.family == family and ours.image_token_id == IMAGE_TOKEN
    rng = np.random.default_rng(0)
    sizes = SIZES + [tuple(int(x) for x in rng.integers(1, 400, 2)) for _ in range(6)]
    for i, (h, w) in enumerate(sizes):
        img = _image(h, w, i)
        prompt = "USER: <image>\nWhat is the cat? ASSISTANT:"
        out = ours(text=prompt, images=[img])
        _check(out, hf(text=prompt, images=[img], return_tensors="pt"))
        assert (out["input_ids"] == IMAGE_TOKEN).sum() == num_image_tokens(h, w, ours.geometry)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_batches_mixing_sizes_and_padding_sides(procs, family, side):
    hf, ours = procs[family]
    imgs = [_image(h, w, i) for i, (h, w) in enumerate([(40, 160), (300, 90), (5, 7), (111, 111)])]
    texts = [f"<image>\nQ{i} what is" + " the cat?" * i for i in range(4)]
    hf.tokenizer.padding_side = side
    try:
        ref = hf(text=texts, images=imgs, return_tensors="pt", padding=True)
    finally:
        hf.tokenizer.padding_side = "left"
    out = ours(text=texts, images=imgs, padding_side=side)
    _check(out, ref)
    assert out["input_ids"].shape[0] == 4 and (out["attention_mask"] == 0).any()


def test_llava15_with_and_without_pad(tmp_path):
    img = _image(40, 130, 3)
    results = []
    for do_pad in (True, False):
        hf = hf_processor("llava", tmp_path / str(do_pad), do_pad=do_pad)
        ours = LlavaProcessor.from_pretrained(tmp_path / str(do_pad) / "llava")
        assert ours.image_config.pad_square is do_pad
        out = ours(text="<image>\nx", images=[img])
        _check(out, hf(text="<image>\nx", images=[img], return_tensors="pt"))
        results.append(out["pixel_values"])
    assert not torch.allclose(results[0], results[1])  # padding with the mean colour really changed the input


def test_onevision_multi_image_prompts(procs):
    hf, ours = procs["llava_onevision"]
    imgs = [_image(90, 200, 1), _image(300, 120, 2), _image(150, 150, 3), _image(20, 300, 4)]
    texts = ["<image><image>\ncompare", "<image>\none", "text only", "<image>\nwide"]
    out = ours(text=texts, images=imgs)
    ref = hf(text=texts, images=[imgs[:2], imgs[2:3], imgs[3:]], return_tensors="pt", padding=True)
    _check(out, ref)
    assert out["batch_num_images"].tolist() == torch.as_tensor(ref["batch_num_images"]).tolist() == [2, 1, 1]
    # nested lists (HF style) are accepted too
    again = ours(text=texts, images=[imgs[:2], imgs[2:3], imgs[3:]])
    assert torch.equal(again["input_ids"], out["input_ids"])


def test_images_from_paths_and_bytes_equal_pil(procs, tmp_path):
    _, ours = procs["llava_next"]
    img = _image(77, 190, 5)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    a = ours(text="<image>\nhi", images=img)
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), buf.getvalue()):
        b = ours(text="<image>\nhi", images=[src])
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_onevision_video_matches_hand_reference(procs):
    _, ours = procs["llava_onevision"]
    frames = [_image(48, 64, i) for i in range(3)]
    out = ours(text=["<video>\nwhat happens?"], videos=[frames])
    ref = []
    for f in frames:  # squash to 70 x 70 (bicubic), rescale, normalise with mean = std = 0.5
        x = np.asarray(f.resize((70, 70), Image.Resampling.BICUBIC)).astype(np.float64) / 255
        ref.append(((x - 0.5) / 0.5).transpose(2, 0, 1))
    expected = torch.tensor(np.stack(ref)[None], dtype=torch.float32)
    torch.testing.assert_close(out["pixel_values_videos"], expected, atol=1e-5, rtol=0)
    assert (out["input_ids"] == VIDEO_TOKEN).sum() == num_video_tokens(3, ours.geometry) == 3 * 9 + 1
    assert "pixel_values" not in out
    with pytest.raises(ValueError, match="same frame count"):
        ours(text=["<video>a", "<video>b"], videos=[frames, frames[:2]])


def test_wrong_counts_and_unknown_family_are_clear_errors(procs, tmp_path):
    _, ours = procs["llava_next"]
    with pytest.raises(ValueError, match=r"hold 2 <image> placeholder\(s\) but 1 image"):
        ours(text="<image><image> hi", images=[_image(10, 10, 0)])
    with pytest.raises(ValueError, match=r"hold 0 <image> placeholder\(s\) but 1 image"):
        ours(text="hi", images=[_image(10, 10, 0)])
    for prompt in ("<video>", "hi"):  # "hi": a Jinja template that prints no video placeholder (llava-hf 1.5's)
        with pytest.raises(ValueError, match="videos are supported by llava_onevision"):
            ours(text=prompt, videos=[[_image(10, 10, 0)]])
    _, ov = procs["llava_onevision"]
    with pytest.raises(ValueError, match="video 0 is a str, not a list of frames"):  # was read letter by letter
        ov(text="<video>", videos=["clip.mp4"])
    frames = [np.asarray(_image(30, 40, i)) for i in range(4)]
    want = ov(text="<video>", videos=[[Image.fromarray(f) for f in frames]])["pixel_values_videos"]
    for given in (np.stack(frames), [np.stack(frames)], torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)):
        assert torch.equal(ov(text="<video>", videos=given)["pixel_values_videos"], want)  # a 4-D array: one video
    with pytest.raises(ValueError, match=r"image 2 of 2 \(.*bad.png\): cannot decode image"):
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        ours(text="<image><image>", images=[_image(10, 10, 0), str(bad)])
    with pytest.raises(ValueError, match="unknown model family 'gemma'"):
        LlavaProcessor(ours.tokenizer, ImageConfig(tile=56), ImageGeometry("gemma", 56, 14))


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_save_pretrained_loads_in_transformers_and_back(procs, tmp_path, family):
    from transformers import AutoProcessor

    _, ours = procs[family]
    ours.save_pretrained(tmp_path / "again")
    again = LlavaProcessor.from_pretrained(tmp_path / "again")
    assert again.geometry == ours.geometry and again.image_config == ours.image_config
    ref = AutoProcessor.from_pretrained(tmp_path / "again")
    img = _image(77, 190, 5)
    _check(again(text="<image>\nhi", images=[img]), ref(text="<image>\nhi", images=[img], return_tensors="pt"))


def test_onevision_save_roundtrip(procs, tmp_path):
    _, ours = procs["llava_onevision"]
    ours.save_pretrained(tmp_path)
    again = LlavaProcessor.from_pretrained(tmp_path)
    assert again.geometry == ours.geometry and again.image_config == ours.image_config
    assert again.video_config == ours.video_config
    imgs = [_image(90, 200, 1), _image(30, 40, 2)]
    a, b = ours(text="<image><image>x", images=imgs), again(text="<image><image>x", images=imgs)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


@pytest.mark.parametrize("family", FAMILIES)
def test_from_parts_matches_the_processor_files(procs, family):
    _, ours = procs[family]
    config = LlavaConfig.from_hf(hf_config(family).to_dict())
    parts = LlavaProcessor.from_parts(ours.tokenizer, config)
    assert parts.geometry == ours.geometry
    assert parts.image_config == ours.image_config
    img = _image(123, 45, 9)
    a, b = parts(text="<image>\nhi", images=[img]), ours(text="<image>\nhi", images=[img])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_chat_template_shipped_with_the_checkpoint(tmp_path):
    hf = hf_processor("llava", tmp_path, chat_template=LLAVA15_HF_TEMPLATE)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava")
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Color?"}]},
    ]
    text = ours.apply_chat_template(msgs)
    assert text == hf.apply_chat_template(msgs, add_generation_prompt=True)
    assert text == "USER: <image>\nWhat is it? ASSISTANT: A cat. USER: Color? ASSISTANT:"
    # without a shipped template the named one is used
    plain = LlavaProcessor.from_pretrained(tmp_path / "llava", template="vicuna_v1")
    plain.chat_template = None
    assert plain.apply_chat_template(msgs[:1]).endswith("USER: <image>\nWhat is it? ASSISTANT:")


def test_a_template_that_writes_bos_gets_one_bos(tmp_path):
    """Llama-3 / Mistral style templates start with {{ bos_token }}: the rendered prompt tokenizes with one BOS,
    as transformers' apply_chat_template(tokenize=True) gives (it no longer adds its own)."""
    template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'][0]['text'] }}\n{% endfor %}"
    hf = hf_processor("llava", tmp_path, chat_template=template)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava")
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    text = ours.apply_chat_template(msgs, add_generation_prompt=False)
    assert text.startswith("<s>")
    ids = ours(text=text, return_tensors=None)["input_ids"][0]
    assert ids == hf.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"][0]
    assert ids[0] == 1 and ids[1] != 1
    assert ours(text="hi", return_tensors=None)["input_ids"][0][0] == 1  # plain text still gets its BOS


def test_decode_and_batch_decode(procs):
    _, ours = procs["llava"]
    out = ours(text=["what is the cat?", "hi"])
    rows = out["input_ids"]
    assert ours.batch_decode(rows) == ["what is the cat?", "hi"]
    assert ours.decode(rows[1], skip_special_tokens=False).endswith("<s>hi")
    assert ours(text="hi", return_tensors=None)["input_ids"] == [[1, *[ours.tokenizer.token_to_id(c) for c in "hi"]]]


def test_padding_side_defaults_to_the_tokenizers(tmp_path):
    hf = hf_processor("llava_next", tmp_path, padding_side=None)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava_next")
    assert ours.tokenizer.padding_side == hf.tokenizer.padding_side == "right"
    imgs = [_image(40, 90, 1), _image(90, 40, 2)]
    texts = ["<image>\nshort", "<image>\na much longer question about the cat"]
    _check(ours(text=texts, images=imgs), hf(text=texts, images=imgs, return_tensors="pt", padding=True))
    left = ours(text=texts, images=imgs, padding_side="left")["attention_mask"]
    assert left[0, 0] == 0 and left[0, -1] == 1  # the engine asks for left padding explicitly


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_transparent_images_from_files_and_pil_match_transformers(procs, tmp_path, family):
    """A path goes through transformers' load_image (alpha dropped); a PIL image through convert_to_rgb (white)."""
    hf, ours = procs[family]
    rgba = np.random.default_rng(4).integers(0, 256, (60, 130, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rgba[..., 3] > 100, 255, 0)
    img = Image.fromarray(rgba, "RGBA")
    img.save(tmp_path / "t.png")
    for src in (str(tmp_path / "t.png"), img, img.convert("LA"), img.convert("P")):
        _check(ours(text="<image>\nx", images=[src]), hf(text="<image>\nx", images=[src], return_tensors="pt"))
    a = ours(text="<image>\nx", images=[str(tmp_path / "t.png")])["pixel_values"]
    assert not torch.equal(a, ours(text="<image>\nx", images=[img])["pixel_values"])


def test_chat_template_with_openai_parts_renders_like_transformers(tmp_path):
    hf = hf_processor("llava", tmp_path, chat_template=LLAVA15_HF_TEMPLATE)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava")
    msgs = [
        {"role": "user", "name": None, "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "What is it?"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}], "tool_calls": None},
        {"role": "user", "content": [{"type": "image", "image": _image(8, 8, 0)}, {"type": "text", "text": "And?"}]},
    ]  # fmt: skip
    for gen in (True, False):
        text = ours.apply_chat_template(msgs, add_generation_prompt=gen)
        assert text == hf.apply_chat_template(msgs, add_generation_prompt=gen)
    assert text == "USER: <image>\nWhat is it? ASSISTANT: A cat. USER: <image>\nAnd? "
    assert msgs[0]["content"][0]["type"] == "image_url"  # the caller's messages are left alone


def test_string_content_reaches_a_template_that_prints_parts(tmp_path):
    """llava-hf templates print list content only: a string answer or question (as `llava chat` stores answers and
    OpenAI clients send text) is handed to them as one text part instead of vanishing from the prompt."""
    from llavakit.processing.hf_messages import takes_string_content
    from llavakit.processing.jinja_export import jinja_template

    hf = hf_processor("llava", tmp_path, chat_template=LLAVA15_HF_TEMPLATE)
    ours = LlavaProcessor.from_pretrained(tmp_path / "llava")
    first = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    as_strings = [first, {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Color?"}]
    as_parts = [first] + [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in as_strings[1:]]
    want = "USER: <image>\nWhat is it? ASSISTANT: A cat. USER: Color? ASSISTANT:"
    assert ours.apply_chat_template(as_strings) == hf.apply_chat_template(as_parts, add_generation_prompt=True) == want
    # transformers hands the strings over as they are, and this template prints nothing for them
    assert (
        hf.apply_chat_template(as_strings, add_generation_prompt=True)
        == "USER: <image>\nWhat is it? ASSISTANT: USER: ASSISTANT:"
    )
    assert as_strings[1]["content"] == "A cat."  # the caller's messages are left alone
    assert not takes_string_content(LLAVA15_HF_TEMPLATE)
    assert takes_string_content(jinja_template("vicuna_v1"))  # ours print strings (and parts): kept as given


def test_a_named_template_overrides_the_checkpoints_jinja_one(tmp_path):
    from llavakit.processing.templates import render

    hf_processor("llava", tmp_path, chat_template=LLAVA15_HF_TEMPLATE)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    for name in ("llama3", "qwen_1_5"):
        named = LlavaProcessor.from_pretrained(tmp_path / "llava", template=name)
        assert named.template == name and named.chat_template is None
        assert named.apply_chat_template(msgs) == render(msgs, name, True)
    jinja = LlavaProcessor.from_pretrained(tmp_path / "llava", template="chat_template")
    assert jinja.apply_chat_template(msgs) == "USER: <image>\nhi ASSISTANT:"


def test_chat_template_files_are_found_where_transformers_looks(tmp_path):
    from transformers import AutoProcessor

    hf_processor("llava", tmp_path)
    d = tmp_path / "llava"
    (d / "chat_template.jinja").write_text("{{ 'from jinja' }}")
    assert LlavaProcessor.from_pretrained(d).chat_template == AutoProcessor.from_pretrained(d).chat_template
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'from json' }}"}))
    ours = LlavaProcessor.from_pretrained(d)
    assert ours.chat_template == AutoProcessor.from_pretrained(d).chat_template == "{{ 'from json' }}"
    assert ours.apply_chat_template([{"role": "user", "content": "hi"}]) == "from json"


def test_directories_of_other_families_are_refused(tmp_path):
    hf_processor("llava", tmp_path)
    d = tmp_path / "llava"
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match="unknown model family 'qwen2_vl'"):
        LlavaProcessor.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({"model_type": "llava_llama"}))
    with pytest.raises(ValueError, match="original-format LLaVA checkpoint .*llava convert"):
        LlavaProcessor.from_pretrained(d)
    (d / "config.json").unlink()
    cfg = json.loads((d / "processor_config.json").read_text())
    (d / "processor_config.json").write_text(json.dumps({**cfg, "processor_class": "Blip2Processor"}))
    with pytest.raises(ValueError, match="unknown processor class 'Blip2Processor'"):
        LlavaProcessor.from_pretrained(d)
    (d / "processor_config.json").write_text(json.dumps({**cfg, "processor_class": "LlavaNextProcessor"}))
    assert LlavaProcessor.from_pretrained(d).family == "llava_next"


def _next_processor(out, **image_kw):
    """transformers' LlavaNextProcessor (PIL image processor, tile 56) with ``image_kw``, saved to ``out``."""
    from transformers import LlavaNextProcessor, PreTrainedTokenizerFast
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    hf_processor("llava", out)  # writes the tiny tokenizer files to out / "tok"
    tok = PreTrainedTokenizerFast.from_pretrained(out / "tok")
    clip = dict(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    ip = LlavaNextImageProcessorPil(**clip, **image_kw)
    proc = LlavaNextProcessor(ip, tok, patch_size=14, num_additional_image_tokens=1)
    proc.save_pretrained(out / "next")
    return proc


def _edit_image_processor(folder, edit) -> None:  # noqa: ANN001
    """Apply ``edit`` to the image processor's settings (transformers 5 keeps them in processor_config.json)."""
    f = folder / "processor_config.json"
    proc = json.loads(f.read_text())
    proc["image_processor"] = edit(proc["image_processor"])
    f.write_text(json.dumps(proc))


def test_resampling_filter_of_the_config_is_used(tmp_path):
    """A config's "resample" (here bilinear) is the filter transformers resizes with; it was always bicubic."""
    hf = _next_processor(tmp_path, resample=2, image_grid_pinpoints=CLIP_PINS)
    ours = LlavaProcessor.from_pretrained(tmp_path / "next")
    assert ours.image_config.resample == 2
    for i, (h, w) in enumerate([(90, 200), (37, 41), (300, 120)]):
        img = _image(h, w, i)
        _check(ours(text="<image>\nx", images=[img]), hf(text="<image>\nx", images=[img], return_tensors="pt"))
    ours.save_pretrained(tmp_path / "again")
    assert LlavaProcessor.from_pretrained(tmp_path / "again").image_config.resample == 2


def test_anyres_config_without_pinpoints_takes_transformers_defaults(tmp_path):
    """No image_grid_pinpoints in the image processor's config: transformers takes its class default (the v1.6
    list); llavakit processed such an image at single resolution (576 instead of AnyRes's tokens)."""
    hf = _next_processor(tmp_path)
    _edit_image_processor(tmp_path / "next", lambda d: {k: v for k, v in d.items() if k != "image_grid_pinpoints"})
    ours = LlavaProcessor.from_pretrained(tmp_path / "next")
    assert ours.image_config.pinpoints == tuple(tuple(p) for p in hf.image_processor.image_grid_pinpoints)
    img = _image(100, 300, 5)
    _check(ours(text="<image>\nx", images=[img]), hf(text="<image>\nx", images=[img], return_tensors="pt"))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"do_normalize": False}, "do_normalize=false is not supported"),
        ({"do_rescale": False, "do_resize": False}, "do_resize=false, do_rescale=false is not supported"),
        ({"size": {"shortest_edge": 64}}, "resizing the shortest edge to 64 then cropping 56 is not supported"),
        ({"resample": 9}, "resample 9 is not a PIL filter code"),
    ],
)
def test_image_processor_settings_we_would_ignore_are_refused(procs, tmp_path, change, message):
    import shutil

    src = tmp_path / "src"
    hf_processor("llava_next", src)
    dst = tmp_path / "dst"
    shutil.copytree(src / "llava_next", dst)
    _edit_image_processor(dst, lambda d: d | change)
    with pytest.raises(ValueError, match=message) as e:
        LlavaProcessor.from_pretrained(dst)
    assert str(e.value).startswith(f"{dst / 'processor_config.json'}: ")  # the file that holds the settings


@pytest.mark.parametrize("family", FAMILIES)
def test_numpy_and_torch_images_match_transformers(procs, family):
    """uint8 arrays as transformers takes them: (H, W, C) numpy, (C, H, W) torch (torchvision's layout), and a
    4-D batch; each gives transformers' pixels for the same array."""
    hf, ours = procs[family]
    arrays = [np.asarray(_image(h, w, i)) for i, (h, w) in enumerate([(40, 160), (300, 90), (56, 56)])]
    texts = [f"<image>\nQ{i} what is" for i in range(3)]
    ref = hf(text=texts, images=arrays, return_tensors="pt", padding=True)
    _check(ours(text=texts, images=arrays), ref)
    _check(ours(text=texts, images=[torch.from_numpy(a).permute(2, 0, 1) for a in arrays]), ref)
    same = [np.asarray(_image(70, 90, i)) for i in range(2)]
    batch = np.stack(same)  # (2, 70, 90, 3)
    ref = hf(text=texts[:2], images=same, return_tensors="pt", padding=True)
    _check(ours(text=texts[:2], images=batch), ref)
    _check(ours(text=texts[:2], images=torch.from_numpy(batch).permute(0, 3, 1, 2)), ref)
    two = ["<image><image>\nQ0 what is", "<image><image>\nQ1 what is"]  # a list of 4-D batches: flattened
    ref = hf(text=two, images=[same, same], return_tensors="pt", padding=True)  # per prompt: OneVision's multi-image
    _check(ours(text=two, images=[batch, batch]), ref)
    with pytest.raises(ValueError, match="prompt 1 holds 2 <image> placeholder.* its list has 1 image"):
        ours(text=two, images=[batch, batch[:1]])
