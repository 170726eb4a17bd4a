"""The high-level API: ``llavakit.load(path)`` -> a pipeline that answers OpenAI-style messages.

    pipe = llavakit.load("llava-hf/llava-v1.6-mistral-7b-hf", dtype="bfloat16")
    pipe.chat([{"role": "user", "content": [{"type": "image", "image": "cat.jpg"},
                                            {"type": "text", "text": "What is this?"}]}])
    for delta in pipe.stream(messages, temperature=0.7, seed=0): print(delta, end="")

Images in content parts may be paths, PIL images, raw bytes, uint8 arrays (numpy (H, W, C), torch (C, H, W)), or
``image_url`` parts with a path or a ``data:`` URL (remote URLs are the server's business, with its own limits).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from .engine.generate import StepFn, check_context, decode_step, eos_ids
from .engine.sampling import SamplingParams
from .engine.session import ChatSession
from .engine.text import AnswerText
from .processing.templates import message_text
from .processing.video_load import MAX_FRAMES, is_video_file, read_video

Messages = list[dict[str, Any]]


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    image_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def split_messages(messages: Messages, videos: list[list[Any]] | None = None) -> tuple[Messages, list[Any]]:
    """Messages with image parts normalised to ``{"type": "image"}`` plus the images in order of appearance.

    ``videos``: a list that receives each video part's frames (``{"type": "video", "video": [frame, ...]}``, frames
    as images are given), the part becoming ``{"type": "video"}``; None refuses video parts.

    Text may not hold ``<image>`` / ``<video>``: those strings are the placeholders images become, so a literal one
    would ask for an image that is not there (images go in image parts)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
    check_turns([m["role"] for m in messages])
    out, images = [], []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        role = "system" if msg["role"] == "developer" else msg["role"]  # OpenAI's newer name, as the server maps it
        if isinstance(content, str) or content is None:
            out.append({"role": role, "content": check_text(content or "", f"message {i}")})
            continue
        if not isinstance(content, list):
            raise ValueError(
                f"message {i}: content must be a string or a list of parts like {{'type': 'text', 'text': ...}}, "
                f"not {type(content).__name__}"
            )
        parts = []
        for j, part in enumerate(content):
            where = f"message {i}, part {j}"
            if not isinstance(part, dict):
                raise ValueError(
                    f"{where}: a content part must be a dict like {{'type': 'text', 'text': ...}} or "
                    f"{{'type': 'image', 'image': PATH}}, not {type(part).__name__}"
                )
            kind = part.get("type")
            if kind in ("image", "image_url", "video", "video_url") and msg["role"] != "user":
                raise ValueError(
                    f"{where}: {'an image' if kind.startswith('image') else 'a video'} in a {msg['role']} message; "
                    "images and videos go in user messages"
                )
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ValueError(f"{where}: a text part needs 'text' as a string, got {type(text).__name__}")
                parts.append({"type": "text", "text": check_text(text, where)})
            elif kind in ("image", "image_url"):
                images.append(_image_source(part, where))
                parts.append({"type": "image"})
            elif kind == "video" and videos is not None:
                frames = part.get("video")
                if isinstance(frames, (str, Path)) and is_video_file(frames):  # a video file: its frames, decoded
                    frames = read_video(frames, part.get("max_frames", MAX_FRAMES))
                if not isinstance(frames, (list, tuple)) or not frames:
                    raise ValueError(
                        f"{where}: a video part needs 'video' as a video file's path or a non-empty list of frames "
                        f"(paths, bytes, PIL images or data: URLs), got {type(frames).__name__}"
                    )
                videos.append([_image_source({"type": "image", "image": f}, f"{where}, frame {k}") for k, f in
                               enumerate(frames)])  # fmt: skip
                parts.append({"type": "video"})
            elif kind in ("video", "video_url"):
                raise ValueError(
                    f"{where}: video parts take a video file's path or a list of frames ({{'type': 'video', 'video': "
                    "'clip.mp4' or [frame, ...]}, OneVision models); video_url parts (data: URLs) are the server's"
                )
            else:
                raise ValueError(f"{where}: unsupported content part type {kind!r} (use text, image, image_url)")
        out.append({"role": role, "content": parts})
    return out, images


def check_turns(roles: list[Any]) -> None:
    """A conversation the model can answer: at least one user message, and the last message a user's (the one
    the answer is for). A trailing assistant message would be rendered as a finished answer ("... ASSISTANT:
    hello</s>") with no generation prompt after it, and the model would write on past its end-of-sequence.

    Example: ["system", "user", "assistant", "user"] passes; ["user", "assistant"] and ["system"] raise.
    """
    if "user" not in roles:
        raise ValueError("the conversation has no user message: the model answers the last user message")
    if roles[-1] != "user":
        raise ValueError(
            f"the last message must be the user's (the model answers it), and message {len(roles) - 1} has role "
            f"{roles[-1]!r}; add the next user message, or drop the trailing one"
        )


RESERVED = ("<image>", "<video>")  # the placeholders the processor expands into image / video tokens


def check_text(text: str, where: str) -> str:
    """``text`` unchanged, or a ValueError if it holds a placeholder string (see ``split_messages``) or is not
    valid Unicode: a lone surrogate (U+D800..U+DFFF, e.g. the JSON escape "\\udcff" without its pair, or a byte
    that ``errors="surrogateescape"`` kept) has no UTF-8 form, and the tokenizer refuses it with a bare TypeError.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{where}: the text is not valid Unicode: lone surrogate U+{ord(text[e.start]):04X} at position {e.start} "
            "(half of a UTF-16 surrogate pair); remove it or send the complete pair"
        ) from None
    for token in RESERVED:
        if token in text:
            raise ValueError(
                f"{where}: the text holds {token!r}, which this model reserves as the placeholder of an image or "
                "video (those are passed separately: image parts, or --image on the command line); write it "
                f"another way, e.g. {token.replace('<', '< ').replace('>', ' >')!r}"
            )
    return text


def _image_source(part: dict[str, Any], where: str = "image part") -> Any:
    if part.get("type") == "image":  # the first key that is set (None counts as absent, as in transformers)
        src = next((part[k] for k in ("image", "path", "url") if part.get(k) is not None), None)
    else:
        url = part.get("image_url")
        src = url.get("url") if isinstance(url, dict) else url
    if src is None:
        raise ValueError(f"{where}: an image part without an image: {part!r}")
    if isinstance(src, (str, Path)) and not str(src).strip():
        raise ValueError(f"{where}: the image path is empty; pass an image file's path, a PIL image or bytes")
    if isinstance(src, Path):
        return src
    if isinstance(src, str) and src[:5].lower() == "data:":
        try:
            data = re.sub(r"\s+", "", src.split(",", 1)[1])  # base64 wrapped at 76 columns (MIME, `base64`)
            return base64.b64decode(data, validate=True)
        except (IndexError, ValueError) as e:
            raise ValueError(
                f"{where}: image data: URL is not valid base64 (expected data:image/...;base64,...)"
            ) from e
    lowered = src.split("://", 1)[0].lower() if isinstance(src, str) and "://" in src else None  # URL scheme
    if lowered in ("http", "https"):
        raise ValueError(
            f"{where}: remote image URLs are not fetched by the library; download the image, pass its path"
        )
    if isinstance(src, str) and lowered == "file":
        url = urlparse(src)
        if url.netloc not in ("", "localhost"):  # file://photo.png reads "photo.png" as a host name
            raise ValueError(
                f"{where}: {src} names the host {url.netloc!r}; a file URL holds an absolute path "
                f"(file:///home/me/photo.png), or pass the path itself"
            )
        return Path(unquote(url.path))
    if isinstance(src, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", src):
        scheme = src.split("://", 1)[0]
        raise ValueError(
            f"{where}: {scheme}:// image URLs are not supported; pass a local path, a file:// or a data: URL"
        )
    return src


def _check_answerable(msgs: Messages, images: list[Any]) -> None:
    if not images and not any(message_text(m.get("content"))[0].strip() for m in msgs):
        raise ValueError("the messages hold no text and no image: nothing to answer; add a question or an image")


class Pipeline:
    """A model + its processor, answering messages. One conversation cache is kept for follow-up turns."""

    def __init__(self, model, processor, *, step: StepFn = decode_step) -> None:  # noqa: ANN001
        self.model = model
        self.processor = processor
        self.step = step  # the one-token decode step: decode_step, or compiled by load(..., compile=True)
        self.session = ChatSession(model, step=step)

    def _inputs(self, messages: Messages) -> tuple[dict[str, torch.Tensor], int]:
        videos: list[list[Any]] = []
        msgs, images = split_messages(messages, videos)
        _check_answerable(msgs, images + videos)
        prompt = self.processor.apply_chat_template(msgs, add_generation_prompt=True)
        inputs = self.processor(text=prompt, images=images or None, videos=videos or None, return_tensors="pt")
        n_img = int((inputs["input_ids"] == self.model.config.image_token_id).sum())
        return inputs, n_img

    def check_request(self, messages: Messages, max_new_tokens: int = 256) -> None:
        """Raise ValueError when ``messages`` cannot be answered whatever their images: text the template reserves,
        or a prompt that leaves no room for ``max_new_tokens`` in the context (images only add tokens)."""
        inputs, _ = self._inputs(messages)
        check_context(self.model, int(inputs["input_ids"].shape[1]), max_new_tokens)

    def stream(
        self,
        messages: Messages,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: list[str] | str | None = None,
        answer: Answer | None = None,
    ) -> Iterator[str]:
        """Yield text deltas of the answer. Pass an ``Answer`` to have it filled with the totals at the end."""
        inputs, n_img = self._inputs(messages)
        params = SamplingParams(temperature, top_p, top_k, repetition_penalty, seed)
        ids = inputs["input_ids"]
        vision = {k: inputs[k] for k in ("pixel_values", "image_sizes", "pixel_values_videos") if k in inputs}
        eos = self._eos()
        text = AnswerText(self.processor.tokenizer, stop)
        gen = self.session.generate(
            ids, max_new_tokens=max_new_tokens, params=params, eos_token_id=sorted(eos), **vision
        )
        for t in gen:  # the session stops on the ids the answer text ends on, as batch's rows do
            delta = text.push(t, eos)
            if delta:
                yield delta
            if text.reason is not None:
                break
        tail = text.finish()
        if tail:
            yield tail
        if answer is not None:
            answer.text, answer.finish_reason = text.text, text.reason or "length"
            answer.prompt_tokens, answer.completion_tokens, answer.image_tokens = ids.shape[1], text.tokens, n_img

    def chat(self, messages: Messages, **sampling: Any) -> str:
        """The whole answer as a string (same arguments as ``stream``)."""
        return "".join(self.stream(messages, **sampling))

    def reply(self, messages: Messages, **sampling: Any) -> Answer:
        """The answer with its finish reason and token counts."""
        ans = Answer("", "length", 0, 0)
        for _ in self.stream(messages, answer=ans, **sampling):
            pass
        return ans

    def _eos(self) -> set[int]:
        """The ids an answer ends on: the tokenizer's (with generation_config.json's), else the model config's."""
        return set(eos_ids(self.model, getattr(self.processor.tokenizer, "eos_token_ids", None) or None))

    def batch(self, conversations: list[Messages], *, max_new_tokens: int = 256, **sampling: Any) -> list[Answer]:
        """Answer several independent conversations in one batched pass: each answer (text, finish reason, token
        counts) equals what ``reply`` gives it alone under greedy decoding; a row ends on EOS or a stop string."""
        from .engine.generate import stream_tokens

        if not conversations:
            raise ValueError("batch needs at least one conversation (a list of message lists)")
        prompts, images, videos = [], [], []
        for i, messages in enumerate([conversations] if isinstance(conversations, str) else conversations):
            if isinstance(messages, (str, dict)):  # batch(messages) meant batch([messages])
                what = "a single message (a dict)" if isinstance(messages, dict) else "a str"
                raise ValueError(
                    f"batch takes a list of conversations, each a list of messages, and conversation {i} is {what}; "
                    "for one conversation pass batch([messages]) (or use reply / chat)"
                )
            vids: list[list[Any]] = []
            msgs, imgs = split_messages(messages, vids)
            _check_answerable(msgs, imgs + vids)
            prompts.append(self.processor.apply_chat_template(msgs, add_generation_prompt=True))
            images.extend(imgs)
            videos.extend(vids)
        inputs = self.processor(
            text=prompts, images=images or None, videos=videos or None, return_tensors="pt", padding_side="left"
        )
        keys = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")
        vision = {k: inputs[k] for k in keys if k in inputs}
        stop = sampling.get("stop")
        params = SamplingParams(**{k: sampling[k] for k in sampling if k != "stop"})
        eos = self._eos()
        rows = [AnswerText(self.processor.tokenizer, stop) for _ in prompts]
        for toks in stream_tokens(
            self.model,
            inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=max_new_tokens,
            params=params,
            eos_token_id=sorted(eos),
            step=self.step,
            **vision,
        ):
            for row, t in zip(rows, toks.tolist(), strict=True):
                if t >= 0 and row.reason is None:
                    row.push(t, eos)
            if all(row.reason is not None for row in rows):
                break
        mask, ids = inputs["attention_mask"], inputs["input_ids"]
        n_img = (ids == self.model.config.image_token_id).sum(1).tolist()
        answers = []
        for r, row in enumerate(rows):
            row.finish()
            answers.append(Answer(row.text, row.reason or "length", int(mask[r].sum()), row.tokens, n_img[r]))
        return answers

    def reset(self) -> None:
        self.session.reset()


def load(
    path_or_id: str | Path | None = None,
    *,
    dtype: torch.dtype | str | None = "float32",
    device: str = "cpu",
    quantize: str | None = None,
    optimize: bool = True,
    compile: bool = False,
) -> Pipeline:
    """Load a checkpoint (a local directory or a hub id; None: the bundled default model) and its processor into a
    ready pipeline.

    ``quantize``: None, "int8" or "int4" (weight-only, the decoder's Linears), or "int8+head" / "int4+head" (the LM
    head too: faster decoding, every logit then comes from quantized weights; ``engine.quantize.quantize_llava``).

    ``optimize`` swaps in the fastest correct CPU Linears for this machine (``engine.linear.optimize_model``;
    inference only): in bfloat16, long prompts and the vision tower multiply in float32 where the CPU has no
    native bf16 GEMM, and where it has one the decoder decodes through fbgemm's fp16 matrix-vector kernel.
    In float32 the decoder's large Linears and the LM head multiply a few rows (decode) as one bmm over slices of
    the weight, on all cores, and the head's weight is stored transposed (faster one-token products). It also
    keeps memory the process frees for reuse (``engine.memory.keep_freed_memory``: no page faults on every
    layer's activations; the resident size stays at its high-water mark).

    ``compile`` runs the one-token decode step through ``torch.compile`` (``engine.compile``): the first answer
    waits for the compilation (tens of seconds on a CPU), later ones reuse it. Needs a C++ compiler.
    """
    from .checkpoint.api import load_model
    from .engine.quantize import check_quantize_mode, quantize_llava
    from .processing.processor import LlavaProcessor

    if quantize is not None:  # settings first: loading a 7B model takes minutes
        check_quantize_mode(quantize)
    step = decode_step
    if compile:
        from .engine.compile import compile_decode_step

        step = compile_decode_step()  # raises CompileUnavailable (no C++ compiler) before the model is read
    if path_or_id is None:
        from .commands import default_model

        path_or_id = default_model()
    model = load_model(path_or_id, dtype=dtype, device=device)
    if quantize is not None:
        quantize_llava(model, quantize)
    if optimize and model.device.type == "cpu":
        from .engine.linear import optimize_model
        from .engine.memory import keep_freed_memory

        optimize_model(model)
        keep_freed_memory()
    return Pipeline(model, LlavaProcessor.from_pretrained(path_or_id), step=step)
