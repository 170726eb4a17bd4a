"""From a validated chat request to model inputs: images and videos checked, prompt rendered, token budget checked.

Runs in a worker thread of the handlers (image decoding and preprocessing in parallel with the model worker;
PIL and numpy release the GIL for most of it). Every problem becomes an ``ApiError`` with its HTTP status and
the request field it concerns. Each image is decoded once (``images.open_image``) and handed to the processor
as the RGB image it would have made of the file.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..pipeline import check_text, check_turns
from ..processing.anyres import num_image_tokens, num_video_tokens
from ..processing.image import check_geometry
from .errors import ApiError
from .images import ImageError, open_image, request_image_bytes
from .schemas import ChatCompletionRequest, Message
from .videos import decode_video, request_video_bytes

if TYPE_CHECKING:
    from .config import ServeConfig

__all__ = ["ApiError", "Prepared", "prepare"]


@dataclass
class Prepared:
    input_ids: torch.Tensor  # (T,)
    vision: dict[str, torch.Tensor]
    prompt_tokens: int  # T, image and video tokens included
    image_tokens: int
    max_new_tokens: int
    video_tokens: int = 0


Encoded = list[tuple[str, bytes]]  # (request field, encoded bytes) of each image
EncodedVideos = list[tuple[str, bytes, str]]  # (request field, encoded bytes, file suffix) of each video


def _count(body: ChatCompletionRequest, kind: str) -> int:
    return sum(1 for m in body.messages if isinstance(m.content, list) for p in m.content if p.type == kind)


def _messages(
    body: ChatCompletionRequest, config: ServeConfig, family: str
) -> tuple[list[dict[str, Any]], Encoded, EncodedVideos]:
    """Messages in the processor's form and the encoded bytes of their images and videos in order, with their field."""
    n_images, n_videos = _count(body, "image_url"), _count(body, "video_url")
    if n_images > config.images.max_images:
        raise ApiError(
            f"{n_images} images in the request; this server takes at most {config.images.max_images}", 400, "messages"
        )
    if n_videos > config.videos.max_videos:
        raise ApiError(
            f"{n_videos} videos in the request; this server takes at most {config.videos.max_videos} per request",
            400,
            "messages",
        )
    try:
        check_turns([m.role for m in body.messages])  # a trailing message named with the role the client sent
    except ValueError as e:
        raise ApiError(str(e), 400, "messages") from None
    msgs, images, videos = [], [], []
    for i, m in enumerate(body.messages):
        _check_content(m, i)
        role = "system" if m.role == "developer" else m.role
        if not isinstance(m.content, list):
            msgs.append({"role": role, "content": _text(m.content or "", f"messages[{i}].content")})
            continue
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(m.content):
            if part.type == "text":
                parts.append({"type": "text", "text": _text(part.text, f"messages[{i}].content[{j}].text")})
                continue
            where = f"messages[{i}].content[{j}].{part.type}"
            kind = "image" if part.type == "image_url" else "video"
            if m.role != "user":
                a = "an" if kind == "image" else "a"
                raise ApiError(
                    f"{a} {kind} in a {m.role} message: {kind}s can only be sent in user messages", 400, where
                )
            try:
                if part.type == "image_url":
                    images.append((where, request_image_bytes(part.image_url.url, config.images, where)))
                else:
                    if family != "llava_onevision":
                        raise ImageError(
                            f"{where}: this model ({family}) does not take video; video input needs a LLaVA-OneVision "
                            "checkpoint (or send the video's frames as image_url parts)"
                        )
                    data, suffix = request_video_bytes(part.video_url.url, config.images, config.videos, where)
                    videos.append((where, data, suffix))
            except ImageError as e:
                raise ApiError(str(e), e.status, where) from None
            parts.append({"type": kind})
        msgs.append({"role": role, "content": parts})
    return msgs, images, videos


def _check_content(m: Message, i: int) -> None:
    """A 400 for content that is null, missing or an empty list, as OpenAI's (the model would answer an empty
    prompt); an empty string is accepted, as OpenAI accepts it. An assistant message's content may be null at
    OpenAI only beside tool calls, which this server refuses (``schemas.Message``)."""
    if m.content is not None and m.content != []:
        return
    what = "null (or missing)" if m.content is None else "an empty list"
    fix = (
        "send the earlier answer as text (tool calls are not supported)"
        if m.role == "assistant"
        else "send a string or a list of at least one part"
    )
    raise ApiError(
        f"messages[{i}].content is {what}: {'an' if m.role == 'assistant' else 'a'} {m.role} message must have "
        f"content; {fix}",
        400,
        f"messages[{i}].content",
    )


def too_long(message: str, param: str) -> ApiError:
    """A prompt (with its max_tokens) that does not fit the model's context, with OpenAI's error code for it."""
    return ApiError(message, 400, param, code="context_length_exceeded")


def _text(text: str, where: str) -> str:
    """``text``, or a 400 if it holds an image / video placeholder string (``pipeline.check_text``)."""
    try:
        return check_text(text, where)
    except ValueError as e:
        raise ApiError(str(e), 400, where) from None


def _check_text_length(msgs: list[dict[str, Any]], tokenizer: Any, context: int) -> None:
    """Refuse a text that cannot fit the context before tokenizing it: tokenizing megabytes holds the GIL for
    seconds, stalling every other request. A text of more than ``context`` x (longest token) characters surely
    takes more than ``context`` tokens (``Tokenizer.max_token_chars``)."""
    chars = sum(
        len(p["text"]) if isinstance(m["content"], list) else len(m["content"])
        for m in msgs
        for p in (m["content"] if isinstance(m["content"], list) else [None])
        if p is None or p.get("type") == "text"
    )
    limit = context * tokenizer.max_token_chars
    if chars > limit:
        raise too_long(
            f"the messages hold {chars} characters of text, more than the model's context of {context} tokens "
            f"can take (at most {limit} characters); shorten the prompt",
            "messages",
        )


def _open(images: list[tuple[str, bytes]], config: ServeConfig, proc: Any) -> list[Image.Image]:
    """The decoded images, each checked against what this model's preprocessing can take (``check_geometry``)."""
    out = []
    multi = proc.family == "llava_onevision" and len(images) > 1
    for where, data in images:
        try:
            img = open_image(data, config.images, where)
            check_geometry(img.width, img.height, proc.image_config, multi_image=multi, what=where)
        except ImageError as e:
            raise ApiError(str(e), e.status, where) from None
        except ValueError as e:
            raise ApiError(str(e), 400, where) from None
        out.append(img)
    return out


def _open_videos(videos: EncodedVideos, config: ServeConfig) -> list[list[Image.Image]]:
    """Each video's frames, as the pipeline reads them from a file (``videos.decode_video``)."""
    out = []
    for where, data, suffix in videos:
        try:
            out.append(decode_video(data, suffix, config.videos, where))
        except ImageError as e:
            raise ApiError(str(e), e.status, where) from None
    return out


def prepare(
    body: ChatCompletionRequest, pipe: Any, config: ServeConfig, slots: threading.Semaphore | None = None
) -> Prepared:
    """The model inputs of ``body``; the pixel work (decoding, preprocessing) holds one of ``slots``.

    Remote images are fetched before taking a slot, so a slow host does not hold up other requests' pixels.
    """
    model_cfg = pipe.model.config
    context = model_cfg.text.context_length
    asked = body.requested_tokens()
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if asked is not None and config.max_tokens is not None and asked > config.max_tokens:
        raise ApiError(f"{field} {asked} is over this server's limit of {config.max_tokens}", 400, field)
    msgs, encoded, encoded_videos = _messages(body, config, pipe.processor.family)
    _check_text_length(msgs, pipe.processor.tokenizer, context)
    with slots if slots is not None else nullcontext():
        images = _open(encoded, config, pipe.processor)
        videos = _open_videos(encoded_videos, config)
        return _prepare(msgs, images, videos, pipe, config, asked, field, context)


def _prepare(
    msgs: list[dict[str, Any]],
    images: list[Image.Image],
    videos: list[list[Image.Image]],
    pipe: Any,
    config: ServeConfig,
    asked: int | None,
    field: str,
    context: int | None,
) -> Prepared:
    sizes = [(im.height, im.width) for im in images]
    proc = pipe.processor
    # check before preprocessing: the images and videos alone may already overflow the context
    multi = proc.family == "llava_onevision" and len(sizes) > 1
    image_tokens = sum(num_image_tokens(h, w, proc.geometry, multi_image=multi) for h, w in sizes)
    video_tokens = sum(num_video_tokens(len(frames), proc.geometry) for frames in videos)
    visual = image_tokens + video_tokens
    what = " and ".join(
        ([f"{len(sizes)} image(s)"] if sizes else [])
        + ([f"{len(videos)} video(s) of {sum(map(len, videos))} frames"] if videos else [])
    )
    fewer = "fewer or smaller images" if not videos else "fewer images or a video with fewer frames"
    if visual and context is not None and visual + (asked or 1) > context:
        if visual >= context:
            raise too_long(
                f"the {what} alone take {visual} tokens, the model's context is {context} tokens; send {fewer}",
                "messages",
            )
        raise too_long(
            f"the {what} take {visual} tokens, + {field} {asked} exceeds the model's context "
            f"of {context} tokens; lower {field} to at most {context - visual} (less the prompt's text)",
            field,
        )
    try:
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
        inputs = proc(text=prompt, images=images or None, videos=videos or None, return_tensors="pt")
    except Exception as e:  # noqa: BLE001 - templates raise their own errors (e.g. roles must alternate)
        raise ApiError(f"cannot build the prompt from these messages: {e}", 400, "messages") from None
    ids = inputs["input_ids"][0]  # (T,)
    t = int(ids.shape[0])
    of_them = f" ({visual} of them {'image and video' if videos else 'image'} tokens)" if visual else ""
    if context is not None:
        if asked is not None and t < context and t + asked > context:
            raise too_long(
                f"prompt of {t} tokens{of_them} + {field} {asked} = {t + asked} exceeds the model's context of "
                f"{context} tokens; lower {field} to at most {context - t} or shorten the prompt",
                field,
            )
        if t >= context:  # no max_tokens would help
            raise too_long(
                f"prompt of {t} tokens{of_them} leaves no room in the "
                f"model's context of {context} tokens; shorten the prompt",
                "messages",
            )
    if asked is None:
        asked = (
            config.default_max_tokens
            if config.max_tokens is None
            else min(config.default_max_tokens, config.max_tokens)
        )
        if context is not None:
            asked = min(asked, context - t)
    keys = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")
    vision = {k: inputs[k] for k in keys if k in inputs}
    return Prepared(ids, vision, t, image_tokens, asked, video_tokens)
