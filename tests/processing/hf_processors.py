"""transformers' processors (PIL image processors) over the tiny character tokenizer, saved to a directory."""

from __future__ import annotations

from pathlib import Path

from llavakit.tiny import char_tokenizer

CLIP_PINS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
OV_PINS = [[i * 70, j * 70] for i in range(1, 7) for j in range(1, 7)]


def hf_processor(family: str, out: Path, do_pad: bool = True):
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor, LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    char_tokenizer().save(out / "tok")
    tok = PreTrainedTokenizerFast.from_pretrained(out / "tok")
    clip = dict(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    if family == "llava":
        ip = LlavaImageProcessorPil(do_pad=do_pad, **clip)
        proc = LlavaProcessor(
            image_processor=ip,
            tokenizer=tok,
            patch_size=14,
            num_additional_image_tokens=1,
            vision_feature_select_strategy="default",
        )
    elif family == "llava_next":
        ip = LlavaNextImageProcessorPil(image_grid_pinpoints=CLIP_PINS, **clip)
        proc = LlavaNextProcessor(
            image_processor=ip,
            tokenizer=tok,
            patch_size=14,
            num_additional_image_tokens=1,
            vision_feature_select_strategy="default",
        )
    else:
        ip = LlavaOnevisionImageProcessorPil(
            size={"height": 70, "width": 70}, image_grid_pinpoints=OV_PINS, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )

        class NoVideo(LlavaOnevisionProcessor):  # the video processor needs torchvision, absent here
            attributes = ["image_processor", "tokenizer"]

            def __init__(self, image_processor, tokenizer, **kw):
                self.num_image_tokens = kw.pop("num_image_tokens")
                self.vision_feature_select_strategy = kw.pop("vision_feature_select_strategy")
                self.image_token, self.video_token = "<image>", "<video>"
                self.image_token_id, self.video_token_id = 120, 121
                self.vision_aspect_ratio = "anyres_max_9"
                super(LlavaOnevisionProcessor, self).__init__(image_processor, tokenizer)

        proc = NoVideo(ip, tok, num_image_tokens=25, vision_feature_select_strategy="full")
    proc.save_pretrained(out / family)
    if family == "llava_onevision":  # what real OneVision checkpoints carry (our subclass does not save it)
        import json

        f = out / family / "processor_config.json"
        cfg = json.loads(f.read_text())
        cfg.update(
            num_image_tokens=25,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
            processor_class="LlavaOnevisionProcessor",
        )
        f.write_text(json.dumps(cfg))
    return proc
