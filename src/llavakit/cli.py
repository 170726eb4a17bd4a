"""``llava <command>``: each subcommand is a plain typed function; argparse only wires flags to arguments."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import QUANTIZE_MODES


def cmd_convert(
    src: str, dst: str, vision_tower: str | None = None, dtype: str | None = None, template: str | None = None
) -> int:
    """Convert an original-format (liuhaotian / lmms-lab) or old-layout HF checkpoint to the current HF layout."""
    from .checkpoint.convert import convert
    from .commands import check_given, new_output_dir, output_error

    check_given(src, "SRC", "the checkpoint directory or hub id to convert")
    target = new_output_dir(dst, "DST", "the converted checkpoint")
    try:
        out = convert(src, dst, vision_tower=vision_tower, dtype=dtype, template=template)
    except OSError as e:
        raise output_error(e, target, "the converted checkpoint", "DST") from None
    print(f"wrote {out}")
    return 0


def cmd_demo(model: str | None = None, seed: int = 0, sides: list[int] | None = None) -> int:
    """Run the main job on the default model (until it ships: on a tiny random-weight model, said plainly)."""
    from .commands import check_model
    from .data.synth import check_sides
    from .demo import DEFAULT_SIDES, run_demo

    check_model(model)
    if sides:
        check_sides(*sides, default="the model's training.json, else {} {}".format(*DEFAULT_SIDES))
    return run_demo(model=model, seed=seed, sides=tuple(sides) if sides else None)


def cmd_data_synth(out: str, n: int, seed: int, kind: str, sides: list[int] | None) -> int:
    """Deterministic synthetic scenes + questions (the data of the bundled model's recipe)."""
    from .commands import check_given, output_error
    from .data.synth import MAX_SIDE, MIN_SIDE, synth_command

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    check_given(out, "--out", "the directory to write the dataset to")
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot write the dataset to {out}: it is a file; pass a directory path with --out")
    try:
        return synth_command(out, n, seed, kind, (sides[0], sides[1]) if sides else (MIN_SIDE, MAX_SIDE))
    except OSError as e:
        raise output_error(e, target, "the dataset", "--out") from None


def cmd_data_check(
    data: str,
    image_folder: str | None,
    template: str | None,
    model_or_processor: str | None,
    max_length: int | None,
    workers: int = 1,
) -> int:
    """Report bad training records (counts and ids); 1 when any are found."""
    from .commands import check_given
    from .train.check import data_check_command

    check_given(data, "DATA", "the training data file (.json array or .jsonl)")
    if image_folder is not None:
        check_given(image_folder, "--image-folder", "the folder the image paths start in")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"--max-length must be >= 1 (tokens), got {max_length}")
    if image_folder is not None and not Path(image_folder).is_dir():
        raise ValueError(f"--image-folder {image_folder} is not a directory; pass the folder the image paths start in")
    if template is not None:  # checked even when no processor uses it: a typo must not pass as "OK"
        from .processing.templates import check_template_name

        check_template_name(template, has_chat_template=True)
    if Path(data).is_file() and Path(data).stat().st_size == 0:
        raise ValueError(f"{data} is empty (0 bytes): no records to check; pass the training data file")

    return data_check_command(data, image_folder, template, model_or_processor, max_length, workers)


def cmd_generate(
    model: str | None,
    images: list[str],
    prompt: str,
    dtype: str,
    quantize: str | None,
    compile: bool = False,
    video: str | None = None,
    frames: int | None = None,
    **s: Any,
) -> int:
    from .commands import check_model, check_prompt, check_sampling, generate, open_pipeline, stdout_gone

    check_model(model)
    clip = _video_frames(video, frames)
    check_prompt(prompt, images + ["video"] * bool(clip))
    check_sampling(**s)
    _decodable(images)
    _shown_as_can_be()
    pipe = open_pipeline(model, dtype, quantize, compile)
    try:
        generate(pipe, prompt, images, frames=clip, **s)
    except BrokenPipeError:
        return stdout_gone()
    return 0


def _decodable(images: list[str]) -> None:
    """--image files checked and decoded before the model loads (minutes for a 7B model): a file that is not an
    image, or a truncated one, is refused now (in chat it would fail every message)."""
    from .commands import check_images
    from .processing.image_load import load_image

    check_images(images)
    for image in images:
        load_image(image)


def _shown_as_can_be() -> None:
    """An answer on a stdout that is not UTF-8 (a Latin-1 terminal, a Windows console): a character it cannot encode
    is shown as '?', not a UnicodeEncodeError that ends the answer (and the command) mid-way."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")


def _video_frames(video: str | None, frames: int | None) -> list[Any] | None:
    """The frames ``--video`` / ``--frames`` pick (``commands.find_frames``: paths, or images decoded from a video
    file), None without ``--video``."""
    from .commands import find_frames

    if frames is not None and video is None:
        raise ValueError("--frames picks frames of a --video; pass --video FRAMES_DIR (or drop --frames)")
    return None if video is None else find_frames(video) if frames is None else find_frames(video, frames)


def cmd_chat(
    model: str | None,
    images: list[str],
    dtype: str,
    quantize: str | None,
    compile: bool = False,
    video: str | None = None,
    frames: int | None = None,
    **s: Any,
) -> int:
    from .commands import chat, check_model, check_sampling, check_video_support, open_pipeline, stdout_gone

    check_model(model)
    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    clip = _video_frames(video, frames) if video is not None else None  # --frames alone: for /video
    check_sampling(**s)
    _decodable(images)
    if isinstance(sys.stdin, io.TextIOWrapper):  # a line that is not UTF-8 is refused by itself, not the whole chat
        sys.stdin.reconfigure(errors="surrogateescape")
    _shown_as_can_be()
    pipe = open_pipeline(model, dtype, quantize, compile)
    if clip:
        check_video_support(pipe)
    try:
        return chat(pipe, images, sys.stdin, frames=clip, **({"max_frames": frames} if frames else {}), **s)
    except BrokenPipeError:
        return stdout_gone()


def cmd_caption(
    model: str | None,
    pattern: str,
    out: str,
    prompt: str,
    batch_size: int,
    dtype: str,
    quantize: str | None,
    compile: bool = False,
    **s: Any,
) -> int:
    from .caption import caption, check_caption, made_by, read_done
    from .commands import check_model, default_model, open_pipeline

    check_model(model)
    _, path = check_caption(pattern, out, prompt, batch_size, s)  # before the model loads; no output file is created
    model, precision = model or default_model(), {"dtype": dtype, "quantize": quantize}
    read_done(path, prompt, made_by(model, s, precision))  # a resume into another run's file: refused before loading
    pipe = open_pipeline(model, dtype, quantize, compile)
    counts = caption(pipe, pattern, out, prompt=prompt, batch_size=batch_size, model=model, precision=precision, **s)
    print(json.dumps(counts))
    return 1 if counts["failed"] else 0


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory or hub id (default: the bundled model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--quantize", choices=QUANTIZE_MODES, help="weight-only quantization of the decoder (+head: the LM head too)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow first answer)")


def _video_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--video", help="a video file (needs llavakit[video]), a directory of frame images or a glob (OneVision models)"
    )
    p.add_argument(
        "--frames", type=int, help="--video (and chat's /video): at most this many frames, spread evenly (default 32)"
    )


def _sampling_flags(p: argparse.ArgumentParser, max_new: int = 256) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def _sampling(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_new_tokens": a.max_new_tokens,
        "temperature": a.temperature,
        "top_p": a.top_p,
        "top_k": a.top_k,
        "repetition_penalty": a.repetition_penalty,
        "seed": a.seed,
        "stop": a.stop,
    }


def _parser() -> argparse.ArgumentParser:
    p = WholeFlags(prog="llava", description="LLaVA models: run, convert, train, serve, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="original / old-layout checkpoint -> current HF layout")
    c.add_argument("src", help="checkpoint directory (or hub id)")
    c.add_argument("dst", help="output directory")
    c.add_argument("--vision-tower", help="local CLIP/SigLIP directory for original checkpoints (mm_vision_tower)")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="store weights in this dtype")
    c.add_argument("--template", help="conversation template of an original checkpoint (default: guessed from it)")
    c.set_defaults(func=lambda a: cmd_convert(a.src, a.dst, a.vision_tower, a.dtype, a.template))

    d = sub.add_parser("demo", help="answer questions about a few fresh images")
    d.add_argument("--model", help="model directory or hub id (default: the bundled model)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--sides",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="long-side bounds of the scenes, pixels (default: the model's training.json, else 128 256)",
    )
    d.set_defaults(func=lambda a: cmd_demo(a.model, a.seed, a.sides))

    from .eval.command import add_parser as add_eval_parser

    add_eval_parser(sub)  # llava eval TASK | score | compare

    data = sub.add_parser("data", help="datasets in the LLaVA format: synthetic scenes, checks")
    dsub = data.add_subparsers(dest="data_command", required=True)
    sy = dsub.add_parser("synth", help="write N synthetic scenes (PNG) with LLaVA-format JSON")
    sy.add_argument("--out", required=True)
    sy.add_argument("--n", type=int, required=True)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--kind", default="instruct", choices=["caption", "instruct", "eval"])
    sy.add_argument("--sides", type=int, nargs=2, metavar=("MIN", "MAX"), help="long-side bounds, pixels (336 1008)")
    sy.set_defaults(func=lambda a: cmd_data_synth(a.out, a.n, a.seed, a.kind, a.sides))
    ck = dsub.add_parser("check", help="find bad records: missing/unreadable images, mismatches, over-length")
    ck.add_argument("data", help="LLaVA-format .json or .jsonl file")
    ck.add_argument("--image-folder", help="folder the records' image paths are relative to")
    ck.add_argument("--template", help="conversation template (default: the processor's)")
    ck.add_argument("--model-or-processor", help="model / processor directory: enables the label and length checks")
    ck.add_argument("--max-length", type=int, help="longest training sequence in tokens")
    ck.add_argument("--workers", type=int, default=1, help="processes decoding images in parallel")
    ck.set_defaults(
        func=lambda a: cmd_data_check(a.data, a.image_folder, a.template, a.model_or_processor, a.max_length, a.workers)
    )

    from .serve.command import add_parser as add_serve_parser

    add_serve_parser(sub)  # llava serve

    from .train.commands import add_parsers as add_train_parsers

    add_train_parsers(sub)  # llava train | merge-lora

    g = sub.add_parser("generate", help="answer one prompt about one or more images or a video")
    _model_flags(g)
    g.add_argument("--image", action="append", default=[], help="image path (repeatable)")
    _video_flags(g)
    g.add_argument("--prompt", required=True)
    _sampling_flags(g)
    g.set_defaults(
        func=lambda a: cmd_generate(
            a.model, a.image, a.prompt, a.dtype, a.quantize, a.compile, a.video, a.frames, **_sampling(a)
        )
    )

    ch = sub.add_parser("chat", help="interactive multi-turn chat (/image PATH, /video VIDEO, /reset, /exit)")
    _model_flags(ch)
    ch.add_argument("--image", action="append", default=[], help="image for the first message (repeatable)")
    _video_flags(ch)
    _sampling_flags(ch)
    ch.set_defaults(
        func=lambda a: cmd_chat(a.model, a.image, a.dtype, a.quantize, a.compile, a.video, a.frames, **_sampling(a))
    )

    cp = sub.add_parser("caption", help="batch inference over many images to JSONL (resumable)")
    _model_flags(cp)
    cp.add_argument("images", help="a directory or a glob of images")
    cp.add_argument("--out", required=True, help="results .jsonl (images already in it are skipped)")
    cp.add_argument("--prompt", default="Describe the image briefly.")
    cp.add_argument("--batch-size", type=int, default=4)
    _sampling_flags(cp, max_new=64)
    cp.set_defaults(
        func=lambda a: cmd_caption(
            a.model, a.images, a.out, a.prompt, a.batch_size, a.dtype, a.quantize, a.compile, **_sampling(a)
        )
    )
    return p


class WholeFlags(argparse.ArgumentParser):
    """An argument parser without prefix matching (``llava eval pope --n 3`` read ``--n`` as ``--no-progress``, then
    refused "3"): a flag is spelled whole or refused as unknown. Subcommands' parsers are of their parent's class
    (argparse's default ``parser_class``), so every ``llava`` subcommand is one of these."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _override(arg: str) -> bool:
    """``key=value``: a dotted recipe override of ``llava train`` (a flag's spelling ``--x=y`` is not one)."""
    return "=" in arg and not arg.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = _parser()  # imports every subcommand's flags module (no torch): Ctrl-C can land here
        args, extra = parser.parse_known_args(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if getattr(args, "overrides", None) is not None:  # `llava train R.yaml --resume key=value`: overrides after a flag
        args.overrides += [x for x in extra if _override(x)]
        extra = [x for x in extra if not _override(x)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, OSError) as e:  # bad input: one clear line, no traceback
        print(f"llava {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(_interrupted(args, e), file=sys.stderr)
        return 128 + getattr(e, "signum", 2)  # 130 after Ctrl-C (SIGINT), 143 after SIGTERM (llava train)


def _interrupted(args: argparse.Namespace, e: KeyboardInterrupt) -> str:
    """What Ctrl-C (or SIGTERM) leaves: for ``llava train`` the checkpoint of the last completed step and how to
    continue."""
    checkpoint = getattr(e, "checkpoint", None)
    if args.command != "train" or not str(e):
        return "interrupted"
    if checkpoint is None:
        return f"llava train: {e}"
    again = shlex.join(["llava", "train", args.recipe, *args.overrides, "--resume"])
    return f"llava train: {e}; continue with: {again}"


if __name__ == "__main__":
    sys.exit(main())
