"""The body of ``llava serve``: load the model, build the app, run uvicorn."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import QUANTIZE_MODES
from ..processing.video_load import MAX_FRAMES
from .config import SHUTDOWN_GRACE

if TYPE_CHECKING:
    from ..pipeline import Pipeline


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"llava serve needs the [serve] extra ({e.name} is missing): pip install 'llavakit[serve]'"
        ) from None


def resolve_model(model: str | None) -> tuple[str, str]:
    """(path, served name). Without --model: the bundled default, or a tiny random model while it is missing."""
    from ..commands import default_model

    if model is not None:
        return model, Path(model.rstrip("/")).name or model
    try:
        return default_model(), "llava-default"
    except FileNotFoundError:
        from ..tiny import write_tiny_checkpoint

        path = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="llava-serve-")) / "tiny-random")
        print(
            "NOTE: no --model given and the bundled default model is not installed yet: serving a TINY "
            "RANDOM-WEIGHT model (its answers are noise). Pass --model DIR to serve a real checkpoint.",
            file=sys.stderr,
        )
        return str(path), "tiny-random"


def resolve_api_key(api_key: str | None) -> str | None:
    """The key /v1 requires: --api-key, else $LLAVA_API_KEY, else none. An empty one (``--api-key "$KEY"`` with KEY
    unset) is refused, not taken as "no key": that would serve with no authentication at all."""
    if api_key is not None:
        if not api_key.strip():
            raise ValueError(
                "--api-key is empty (an unset variable?); pass the key, or leave the flag out to serve without one"
            )
        return api_key
    env = os.environ.get("LLAVA_API_KEY")
    if env is not None and not env.strip():
        raise ValueError(
            "LLAVA_API_KEY is set but empty (an unset variable?); set it to the key, or unset it to serve without one"
        )
    return env


def check_address(host: str, port: int) -> int:
    """Refuse a host and port the server could not listen on, before the model loads and before "serving ..." is
    said; the port to serve on (port 0: a free one, chosen here). Binds each address the host resolves to with
    SO_REUSEADDR, as asyncio's create_server does for uvicorn (which also skips an address whose socket cannot be
    made), then lets go: a port taken in between still fails later (rare)."""
    if not host.strip():  # asyncio takes "" as every interface
        raise ValueError(
            "--host is empty (an unset variable?); pass 127.0.0.1 to serve this machine only, "
            "or 0.0.0.0 to listen on every interface on purpose"
        )
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0-65535, got {port} (0: a free port chosen at startup)")
    fix_host = "pass --host 127.0.0.1 for this machine only, or 0.0.0.0 for every interface"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:  # socket.gaierror: "Name or service not known"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"--host {host} does not resolve ({reason}); {fix_host}") from None
    bound, unusable = 0, []
    for family, kind, proto, _, addr in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as e:  # asyncio skips an address family this kernel lacks (IPv6 turned off): so do we
            unusable.append(f"{addr[0]} ({e.strerror or e})")
            continue
        where = f"[{addr[0]}]:{port}" if family == socket.AF_INET6 else f"{addr[0]}:{port}"
        try:
            with sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], port, *addr[2:]))
                port = port or sock.getsockname()[1]  # port 0: every address on the port the first one got
                bound += 1
        except OSError as e:
            if e.errno == errno.EADDRINUSE and bound:  # port 0: the free port of the first address is taken here
                fix = "the free port chosen on another address of this host is in use here; run it again"
            elif e.errno == errno.EADDRINUSE:
                fix = "the port is already in use; pass another --port (0: a free one), or stop the server on it"
            elif e.errno == errno.EADDRNOTAVAIL:
                fix = f"not an address of this machine; {fix_host}"
            elif e.errno == errno.EACCES:
                fix = "permission denied (ports below 1024 need root); pass a --port of 1024 or more"
            else:
                fix = f"{e.strerror or e}; pass another --host or --port"
            raise ValueError(f"cannot listen on {where}: {fix}") from None
    if not bound:
        raise ValueError(f"--host {host}: no address it resolves to can be used ({', '.join(unusable)}); {fix_host}")
    return port


def serve(
    model: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_concurrency: int = 64,
    max_batch_size: int = 8,
    allow_remote_images: bool = False,
    timeout: float = 300.0,
    max_tokens: int | None = None,
    default_max_tokens: int = 256,
    max_images: int = 8,
    max_image_bytes: int = 20 * 1024 * 1024,
    max_image_pixels: int = 40_000_000,
    max_video_bytes: int = 32 * 1024 * 1024,
    max_video_frames: int = MAX_FRAMES,
    max_video_pixels: int = 3840 * 2160,
    served_name: str | None = None,
    dtype: str = "float32",
    quantize: str | None = None,
    threads: int | None = None,
    compile: bool = False,
    shutdown_grace: float = SHUTDOWN_GRACE,
) -> int:
    _require_extra()
    import uvicorn

    from ..pipeline import load
    from .app import create_app
    from .config import ServeConfig
    from .images import ImageLimits
    from .shutdown import DrainingServer
    from .videos import VideoLimits

    for name, v in [
        ("--max-concurrency", max_concurrency),
        ("--max-batch-size", max_batch_size),
        ("--default-max-tokens", default_max_tokens),
        ("--max-images", max_images),
        ("--max-image-bytes", max_image_bytes),
        ("--max-image-pixels", max_image_pixels),
        ("--max-video-bytes", max_video_bytes),
        ("--max-video-frames", max_video_frames),
        ("--max-video-pixels", max_video_pixels),
    ]:
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if timeout <= 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {timeout}")
    if not shutdown_grace >= 0:
        raise ValueError(f"--shutdown-grace must be >= 0 seconds, got {shutdown_grace}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {max_tokens}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    api_key = resolve_api_key(api_key)
    port = check_address(host, port)  # before the model loads: a bad address is said at once
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    path, name = resolve_model(model)
    pipe = load(path, dtype=dtype, quantize=quantize, compile=compile)  # no C++ compiler: CompileUnavailable
    if compile:
        print(
            "compiling the decode step (torch.compile; a batch of 1, then of 2 or more: up to minutes) ...",
            file=sys.stderr,
            flush=True,
        )
        warm_up(pipe, max_batch_size)
    config = ServeConfig(
        model_name=served_name or name,
        api_key=api_key,
        max_batch_size=max_batch_size,
        max_concurrency=max_concurrency,
        timeout=timeout,
        max_tokens=max_tokens,
        default_max_tokens=default_max_tokens,
        images=ImageLimits(
            max_bytes=max_image_bytes,
            max_pixels=max_image_pixels,
            max_images=max_images,
            allow_remote=allow_remote_images,
        ),
        videos=VideoLimits(max_bytes=max_video_bytes, max_frames=max_video_frames, max_pixels=max_video_pixels),
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(
        f"serving {config.model_name!r} ({path}) on http://{host}:{port}  (chat page at /, API at /v1)",
        file=sys.stderr,
        flush=True,
    )
    app = create_app(pipe, config)
    settings = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    DrainingServer(settings, app.state.batcher, shutdown_grace).run()  # SIGTERM / Ctrl-C: see serve/shutdown.py
    return 0


def warm_up(pipe: Pipeline, max_batch_size: int) -> None:
    """Build the compiled decode step's graphs before serving, so that no request waits for a compilation.

    The model worker always passes a slot mask and runs batches of 1 to ``max_batch_size`` rows; dynamo makes one
    graph for a batch of 1 and one for any larger batch (the batch size, cache length and slot count are symbols),
    so two short generations build them all: one row alone, then two rows together. Without the warm-up the first
    request, and later the first one to share a step, would stall every request in flight for the compilation.
    """
    import threading
    import time
    from typing import Any

    import torch

    from ..engine.compile import CompileUnavailable
    from ..engine.sampling import SamplingParams
    from .batcher import Batcher, Job

    errors: list[Exception] = []

    def step(*args: Any) -> torch.Tensor:  # noqa: ANN401 - decode_step's arguments
        try:
            return pipe.step(*args)
        except Exception as e:  # the worker would run each row alone and go on: a failure here must be seen
            errors.append(e)
            raise

    worker = Batcher(pipe.model, pipe.processor.tokenizer, max_batch_size=max_batch_size, step=step)
    ids = torch.tensor(pipe.processor.tokenizer.encode("warm up", add_special_tokens=False) or [0])  # (T,)
    worker.start()
    try:
        for n in (1, 2) if max_batch_size > 1 else (1,):
            ends: list[tuple] = []
            finished = threading.Semaphore(0)

            def emit(ev: tuple, ends: list = ends, finished: threading.Semaphore = finished) -> None:
                if ev[0] in ("done", "error"):
                    ends.append(ev)
                    finished.release()

            with worker.cond:  # admitted together: their decode steps run as one batch of n rows
                for _ in range(n):
                    deadline = time.monotonic() + 3600
                    worker.pending.append(Job(ids, {}, 3, SamplingParams(), [], deadline, emit, ignore_eos=True))
                worker.cond.notify_all()
            for _ in range(n):
                finished.acquire()
            failed = [f"{type(e).__name__}: {e}" for e in errors] + [ev[2] for ev in ends if ev[0] == "error"]
            if failed:
                first = (failed[0].strip().splitlines() or ["no message"])[0]  # dynamo's messages run for pages
                raise CompileUnavailable(
                    f"the compiled decode step failed on a batch of {n} ({first}); serve without --compile"
                )
    finally:
        worker.stop()


def add_parser(sub) -> None:  # noqa: ANN001 - argparse's subparsers action
    """Register ``llava serve`` on the CLI's subcommands."""
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP API + web chat page (needs the [serve] extra)")
    s.add_argument("--model", help="model directory or hub id (default: the bundled model)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: a free one, printed)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: $LLAVA_API_KEY, or none)")
    s.add_argument("--max-concurrency", type=int, default=64, help="requests in flight before 429 (default 64)")
    s.add_argument("--max-batch-size", type=int, default=8, help="requests generated together (default 8)")
    s.add_argument(
        "--allow-remote-images", action="store_true", help="fetch http(s) image and video URLs (public hosts only)"
    )
    s.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queueing included")
    s.add_argument(
        "--shutdown-grace",
        type=float,
        default=SHUTDOWN_GRACE,
        metavar="SECONDS",
        help=f"on SIGTERM / Ctrl-C: seconds the answers being generated may take to finish (default "
        f"{SHUTDOWN_GRACE:g}); new connections are refused at once, queued requests (and new ones on connections "
        "already open) get a 503",
    )
    s.add_argument("--max-tokens", type=int, help="largest max_tokens a request may ask for (default: the context)")
    s.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        metavar="N",
        help="max_tokens of a request that sets none (default 256; capped by --max-tokens and the context)",
    )
    s.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    s.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024, help="encoded bytes per image (413 above)")
    s.add_argument("--max-image-pixels", type=int, default=40_000_000, help="width*height per image (413 above)")
    s.add_argument(
        "--max-video-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="encoded bytes per video_url part (413 above; OneVision models, needs the [video] extra)",
    )
    s.add_argument(
        "--max-video-frames",
        type=int,
        default=MAX_FRAMES,
        help=f"frames taken from a video, spread evenly over it (default {MAX_FRAMES}, as the pipeline)",
    )
    s.add_argument(
        "--max-video-pixels", type=int, default=3840 * 2160, help="width*height of a video's frames (413 above)"
    )
    s.add_argument("--served-model-name", help="the model id clients send (default: the model directory's name)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument(
        "--quantize", choices=QUANTIZE_MODES, help="weight-only quantization of the decoder (+head: the LM head too)"
    )
    s.add_argument("--threads", type=int, help="torch threads of the model worker (default: torch's, one per core)")
    s.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decode step (compiled at startup, before the server answers; needs a C++ compiler)",
    )
    s.set_defaults(
        func=lambda a: serve(
            a.model,
            host=a.host,
            port=a.port,
            api_key=a.api_key,
            max_concurrency=a.max_concurrency,
            max_batch_size=a.max_batch_size,
            allow_remote_images=a.allow_remote_images,
            timeout=a.timeout,
            shutdown_grace=a.shutdown_grace,
            max_tokens=a.max_tokens,
            default_max_tokens=a.default_max_tokens,
            max_images=a.max_images,
            max_image_bytes=a.max_image_bytes,
            max_image_pixels=a.max_image_pixels,
            max_video_bytes=a.max_video_bytes,
            max_video_frames=a.max_video_frames,
            max_video_pixels=a.max_video_pixels,
            served_name=a.served_model_name,
            dtype=a.dtype,
            quantize=a.quantize,
            threads=a.threads,
            compile=a.compile,
        )
    )
