"""``LlavaProcessor``: text + images -> model inputs, reading and writing HF processor files.

Every ``<image>`` placeholder is expanded to ``num_image_tokens(...)`` image tokens (the single count function),
so ``input_ids`` line up position for position with transformers' processors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import LlavaConfig
from .anyres import ImageGeometry, num_image_tokens, num_video_tokens
from .hf_files import (
    chat_template_of,
    decoder_template,
    family_of,
    image_config_from_hf,
    image_processor_dict,
    read_json,
    video_config_from_hf,
    video_processor_dict,
)
from .hf_messages import hf_messages
from .image import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, ImageConfig, preprocess, video_frames
from .image_args import check_nesting, flatten_images, image_name, is_array4
from .image_load import ImageSource, load_image
from .jinja_export import exported_name, jinja_template
from .templates import CHAT_TEMPLATE, IMAGE, VIDEO, check_template_name, render, render_chat_template
from .tokenizer import Tokenizer

# the named conversation template of a checkpoint that ships no Jinja chat template, when it is not the family's
# default (``llava convert`` picks it from the original config); transformers ignores the file
TEMPLATE_FILE = "conversation_template.json"
DEFAULT_TEMPLATE = {"llava": "llava_1_5_hf", "llava_next": "vicuna_v1", "llava_onevision": "qwen_1_5"}


class LlavaProcessor:
    """Tokenizer + image preprocessing + placeholder expansion for one model family."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_config: ImageConfig,
        geometry: ImageGeometry,
        *,
        chat_template: str | None = None,
        template: str | None = None,
        vision_feature_select_strategy: str = "default",
        num_additional_image_tokens: int = 1,
        video_config: ImageConfig | None = None,
    ) -> None:
        if geometry.family not in DEFAULT_TEMPLATE:
            raise ValueError(f"unknown model family {geometry.family!r}; expected one of {', '.join(DEFAULT_TEMPLATE)}")
        self.tokenizer = tokenizer
        self.image_config = image_config
        # OneVision videos: frames squashed to the tile, normalised like the images unless a
        # video_preprocessor_config.json says otherwise
        self.video_config = video_config or dataclasses.replace(
            image_config, resize_shortest=False, center_crop=False, pad_square=False, pinpoints=None
        )
        self.geometry = geometry
        self.family = geometry.family
        self.chat_template = chat_template
        # refused here, not at the first chat: a named template, or "chat_template" when there is a Jinja one
        self.template = check_template_name(template or DEFAULT_TEMPLATE[self.family], chat_template is not None)
        self.strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.image_token_id = tokenizer.image_token_id
        self.video_token_id = tokenizer.video_token_id
        if self.image_token_id is None:
            raise ValueError("the tokenizer has no <image> token; add it (ids follow the checkpoint's config)")

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_parts(
        cls,
        tokenizer: Tokenizer,
        config: LlavaConfig,
        *,
        template: str | None = None,
        image_config: ImageConfig | None = None,
        chat_template: str | None = None,
    ) -> LlavaProcessor:
        """For a model config (e.g. one converted from the original format)."""
        v = config.vision
        siglip = v.model_type == "siglip_vision_model"
        if image_config is None:
            image_config = ImageConfig(
                tile=v.image_size,
                mean=SIGLIP_MEAN if siglip else CLIP_MEAN,
                std=SIGLIP_STD if siglip else CLIP_STD,
                resize_shortest=not siglip,
                center_crop=not siglip,
                pad_square=config.model_type == "llava",
                pinpoints=ImageGeometry.from_config(config).pinpoints,
            )
        return cls(
            tokenizer,
            image_config,
            ImageGeometry.from_config(config),
            chat_template=chat_template,
            template=template,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=1 if v.has_cls else 0,
        )

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, *, template: str | None = None) -> LlavaProcessor:
        from ..checkpoint.hub import resolve_model_path

        path = resolve_model_path(path_or_id)
        from_file = None if template else (read_json(path / TEMPLATE_FILE) or {}).get("template")
        proc = read_json(path / "processor_config.json")
        img = proc.get("image_processor") or read_json(path / "preprocessor_config.json")
        img_file = path / ("processor_config.json" if proc.get("image_processor") else "preprocessor_config.json")
        model_cfg = read_json(path / "config.json")
        family = family_of(path, model_cfg, proc, img)
        if not img:
            raise FileNotFoundError(f"{path} has no preprocessor_config.json (nor an image_processor section)")
        image_config = image_config_from_hf(img, family, img_file)
        tile, pins_t = image_config.tile, image_config.pinpoints
        strategy = proc.get(
            "vision_feature_select_strategy", model_cfg.get("vision_feature_select_strategy", "default")
        )
        if family == "llava_onevision":
            n = proc.get("num_image_tokens", 729)
            grid = math.isqrt(n)
            patch, extra = tile // grid, -1 if strategy == "default" else 0
            aspect = proc.get("vision_aspect_ratio", model_cfg.get("vision_aspect_ratio", "anyres_max_9"))
            max_tiles = int(aspect[len("anyres_max_") :]) if aspect.startswith("anyres_max_") else None
            additional = 0
        else:
            patch = proc.get("patch_size") or model_cfg.get("vision_config", {}).get("patch_size", 14)
            additional = proc.get("num_additional_image_tokens", 1)
            extra, max_tiles = additional - (1 if strategy == "default" else 0), None
        geometry = ImageGeometry(family, tile, patch, extra, pins_t, max_tiles)
        tokenizer = Tokenizer.from_dir(path)
        vid = read_json(path / "video_preprocessor_config.json") or proc.get("video_processor") or {}
        video_config = video_config_from_hf(vid, image_config) if vid else None
        chat = chat_template_of(path, proc) or tokenizer.chat_template
        if from_file is not None:  # a name the checkpoint carries: errors point at the file
            try:
                check_template_name(from_file, chat is not None)
            except ValueError as e:
                raise ValueError(f"{path / TEMPLATE_FILE}: {e}") from None
        exported = exported_name(chat)  # ours as `save_pretrained` wrote it, unedited: render it by name, as before
        if template not in (None, CHAT_TEMPLATE):  # a name asked for: its prompts, not the checkpoint's Jinja ones
            check_template_name(template, chat is not None and exported is None)  # unknown: refused, listing names
            chat, exported = None, None
        template = template or from_file
        if template is None and chat is None:  # no template at all: the decoder tells (a llava-next-mistral, ...)
            template = decoder_template(model_cfg, DEFAULT_TEMPLATE[family], path)
        if exported is not None:  # ("chat_template", the checkpoint's Jinja one, is then that name too)
            template, chat = exported if template in (None, CHAT_TEMPLATE) else template, None
        return cls(
            tokenizer,
            image_config,
            geometry,
            chat_template=chat,
            template=template,
            vision_feature_select_strategy=strategy,
            num_additional_image_tokens=additional,
            video_config=video_config,
        )

    def save_pretrained(self, out: str | Path) -> None:
        """Tokenizer files, preprocessor_config.json, processor_config.json and the chat template, as HF writes them."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(out)
        img = image_processor_dict(self.image_config, self.family)
        (out / "preprocessor_config.json").write_text(json.dumps(img, indent=2) + "\n")
        proc: dict[str, Any] = {
            "processor_class": img.pop("processor_class"),
            "image_token": IMAGE,
            "vision_feature_select_strategy": self.strategy,
        }
        if self.family == "llava_onevision":
            n = self.geometry.max_tiles  # None: features never downsampled, "anyres" (not "anyres_max_None")
            aspect = "anyres" if n is None else f"anyres_max_{n}"
            proc.update(num_image_tokens=self.geometry.grid**2, vision_aspect_ratio=aspect, video_token=VIDEO)
        else:
            proc.update(patch_size=self.geometry.patch, num_additional_image_tokens=self.num_additional_image_tokens)
        (out / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
        if self.family == "llava_onevision":
            video = video_processor_dict(self.video_config, self.family)
            (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
        # the checkpoint's own Jinja template, else ours written as one: transformers and vLLM need it to chat
        (out / "chat_template.jinja").write_text(self.chat_template or jinja_template(self.template))
        if self.template != DEFAULT_TEMPLATE[self.family]:  # e.g. a converted llava-v1.6-mistral: mistral_instruct
            (out / TEMPLATE_FILE).write_text(json.dumps({"template": self.template}, indent=2) + "\n")

    # -- text --------------------------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **template_vars: Any
    ) -> str:
        """The prompt for OpenAI-style messages: the checkpoint's Jinja template if it ships one, else ours.

        The Jinja path prepares messages as transformers' processors do: keys whose value is None are dropped
        and OpenAI ``{"type": "image_url", "image_url": {"url": u}}`` parts become ``{"type": "image", "url":
        u}`` (llava-hf templates only place ``<image>`` for ``image`` parts); string content becomes one text
        part for templates that print list content only (llava-hf's; transformers would drop the text, see
        ``hf_messages``). ``template_vars`` (e.g. ``tools``) reach the template next to the special tokens.
        """
        if self.chat_template:
            variables = {**self.tokenizer.special_tokens, **template_vars}
            return render_chat_template(
                self.chat_template, hf_messages(messages, self.chat_template), add_generation_prompt, **variables
            )
        return render(messages, self.template, add_generation_prompt)

    def _starts_with_bos(self, text: str) -> bool:
        """True when ``text`` already begins with the BOS token (a chat template that writes ``{{ bos_token }}``):
        encoding it adds no second one, as transformers' ``apply_chat_template(tokenize=True)`` does."""
        bos = self.tokenizer.special_token("bos_token")
        return bool(bos) and text.startswith(bos)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows: Any, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    # -- the call ----------------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str],
        images: Any = None,
        videos: list[list[ImageSource]] | None = None,
        return_tensors: str | None = "pt",
        padding: bool = True,
        padding_side: str | None = None,
    ) -> dict[str, Any]:
        """Model inputs for a batch of prompts holding ``<image>`` / ``<video>`` placeholders.

        ``images``: one image, a flat list in prompt order, or one list per prompt (paths, bytes, PIL images or
        uint8 arrays, see ``load_image``; a 4-D array is a list of images).
        ``videos``: one list of frames per ``<video>``. Returns ``input_ids`` / ``attention_mask`` (B, T),
        ``pixel_values`` (N, 3, S, S) for llava or (N, max_views, 3, S, S) zero padded for AnyRes families,
        ``image_sizes`` (N, 2) (h, w), ``batch_num_images`` (B',) for onevision (prompts with images) and
        ``pixel_values_videos`` (V, F, 3, S, S). Rows are padded on ``padding_side``, by default the tokenizer's
        (as transformers does; pass "left" for batched generation).
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(
                f"text must be a prompt string or a non-empty list of them, got {text!r:.80}; "
                "images need a prompt with one <image> placeholder each"
            )
        per_text = [t.count(IMAGE) for t in texts]
        check_nesting(images, per_text)
        images = flatten_images(images)
        if sum(per_text) != len(images):
            raise ValueError(
                f"the prompt(s) hold {sum(per_text)} {IMAGE} placeholder(s) but {len(images)} image(s) were given; "
                "put one placeholder per image (apply_chat_template does this for image content parts)"
            )
        # a video may be a 4-D array (frames, H, W, C) or (frames, C, H, W), as transformers takes it
        given = [] if videos is None else [videos] if is_array4(videos) else videos
        vids = [list(v) if is_array4(v) else v for v in given]
        for i, v in enumerate(vids):
            if not isinstance(v, (list, tuple)):
                raise ValueError(
                    f"video {i} is a {type(v).__name__}, not a list of frames; pass each video as its frames "
                    "(paths, bytes, PIL images or arrays, or a 4-D array; decode a video file into frames first)"
                )
        n_vid = sum(t.count(VIDEO) for t in texts)
        if (vids or n_vid) and self.family != "llava_onevision":  # first: a template may leave the placeholder out
            raise ValueError(
                f"videos are supported by llava_onevision models only, this is {self.family}; use a llava_onevision "
                "model, or send the video's frames as images"
            )
        if n_vid != len(vids):
            raise ValueError(f"the prompt(s) hold {n_vid} {VIDEO} placeholder(s) but {len(vids)} video(s) were given")
        # OneVision: the images of a prompt with several images skip AnyRes (one view + one newline each)
        multi = [self.family == "llava_onevision" and n > 1 for n in per_text for _ in range(n)]
        pil = [load_image(im, name=image_name(i, len(images), im)) for i, im in enumerate(images)]
        counts = [num_image_tokens(im.height, im.width, self.geometry, multi_image=m) for im, m in zip(pil, multi)]
        frames = [video_frames(v, self.video_config) for v in vids]  # each (F, 3, S, S)
        vcounts = [num_video_tokens(f.shape[0], self.geometry) for f in frames]
        img_counts, vid_counts = iter(counts), iter(vcounts)
        ids = []
        for t in texts:
            expanded = _expand(_expand(t, IMAGE, img_counts), VIDEO, vid_counts)
            ids.append(self.tokenizer.encode(expanded, add_special_tokens=not self._starts_with_bos(expanded)))
        side = padding_side or self.tokenizer.padding_side
        out: dict[str, Any] = self._pad(ids, side) if padding else _unpadded(ids, return_tensors)
        if pil:
            views = [preprocess(im, self.image_config, multi_image=m) for im, m in zip(pil, multi)]
            if self.geometry.pinpoints is None:
                out["pixel_values"] = torch.cat(views)  # (N, 3, S, S)
            else:
                most = max(v.shape[0] for v in views)
                out["pixel_values"] = torch.stack(  # (N, most, 3, S, S), missing views are zeros
                    [torch.cat([v, v.new_zeros(most - v.shape[0], *v.shape[1:])]) for v in views]
                )
                out["image_sizes"] = torch.tensor([[im.height, im.width] for im in pil])
            if self.family == "llava_onevision":
                out["batch_num_images"] = torch.tensor([n for n in per_text if n])
        if frames:
            if len({f.shape[0] for f in frames}) > 1:
                got = [f.shape[0] for f in frames]
                raise ValueError(
                    f"videos in one batch (and in one conversation: its turns are one prompt) must have the same "
                    f"frame count, got {got}; pick as many frames of each (llavakit.processing.image.sample_frames)"
                )
            out["pixel_values_videos"] = torch.stack(frames)  # (V, F, 3, S, S)
        if return_tensors is None:
            out = {k: v.tolist() if isinstance(v, torch.Tensor) and k != "pixel_values" else v for k, v in out.items()}
        return out

    def _pad(self, ids: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_ids or [0])[0]
        t = max(map(len, ids))
        input_ids = torch.full((len(ids), t), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(ids), t, dtype=torch.long)  # (B, T)
        for i, row in enumerate(ids):
            sl = slice(t - len(row), t) if side == "left" else slice(0, len(row))
            input_ids[i, sl] = torch.tensor(row, dtype=torch.long)
            mask[i, sl] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


def _unpadded(ids: list[list[int]], return_tensors: str | None) -> dict[str, Any]:
    if return_tensors is None:
        return {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]}
    if len({len(r) for r in ids}) > 1:
        raise ValueError("prompts of different lengths need padding=True to become one tensor")
    input_ids = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _expand(text: str, mark: str, counts: Iterator[int]) -> str:
    """Repeat each ``mark`` in ``text`` by the next count: ("a<image>b", 3) -> "a<image><image><image>b"."""
    parts = text.split(mark)
    return parts[0] + "".join(mark * next(counts) + p for p in parts[1:])
