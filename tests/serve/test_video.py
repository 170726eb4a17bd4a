"""``video_url`` parts (OneVision): the server's greedy answer for a video equals the pipeline's for the frames
``read_video`` picks from the same file; a video request is prefilled alone and decodes beside image requests;
every bad video is one line with a 4xx status."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import httpx
import pytest
from serve_helpers import app_server, data_url, image_bytes

pytest.importorskip("av", reason="the video tests need PyAV (the [video] extra, in [dev])")

from llavakit.processing.anyres import num_video_tokens  # noqa: E402
from llavakit.processing.video_load import read_video  # noqa: E402
from llavakit.serve.app import ServeConfig, create_app  # noqa: E402
from llavakit.serve.batcher import Batcher  # noqa: E402
from llavakit.serve.images import ImageLimits  # noqa: E402
from llavakit.serve.videos import VideoLimits  # noqa: E402
from video_files import write_video  # noqa: E402

MODEL, FRAMES, NEW_TOKENS = "tiny-ov", 4, 10
MAX_VIDEO_BYTES, MAX_PIXELS = 60_000, 2_000  # a 32x32 clip passes, 48x48 frames are over the pixel limit


def video_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(part: dict, text: str = "What happens?") -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", n=12)


@pytest.fixture(scope="module")
def ov_url(ov_pipe):  # noqa: ANN001, ANN201
    config = ServeConfig(
        model_name=MODEL, videos=VideoLimits(max_bytes=MAX_VIDEO_BYTES, max_frames=FRAMES, max_pixels=MAX_PIXELS)
    )
    with app_server(create_app(ov_pipe, config)) as url:
        yield url


def post(url: str, messages: list[dict], **kw) -> httpx.Response:  # noqa: ANN003
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": NEW_TOKENS, **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_video_answer_equals_the_pipeline_for_the_same_frames(ov_pipe, ov_url: str, clip: Path) -> None:  # noqa: ANN001
    frames = read_video(clip, FRAMES)  # what the server takes of the 12-frame clip: 4 frames spread evenly
    ref = ov_pipe.reply(ask({"type": "video", "video": frames}), max_new_tokens=NEW_TOKENS)
    ov_pipe.reset()
    r = post(ov_url, ask(video_part(video_url(clip.read_bytes()))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == ref.text
    assert body["choices"][0]["finish_reason"] == ref.finish_reason
    usage = body["usage"]
    assert usage["prompt_tokens"] == ref.prompt_tokens and usage["completion_tokens"] == ref.completion_tokens
    assert usage["prompt_tokens_details"]["video_tokens"] == num_video_tokens(FRAMES, ov_pipe.processor.geometry)
    # streamed, the same text
    with httpx.stream(
        "POST",
        f"{ov_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": ask(video_part(video_url(clip.read_bytes()))),
            "temperature": 0,
            "max_tokens": NEW_TOKENS,
            "stream": True,
        },  # fmt: skip
        timeout=120,
    ) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data: {")]
    text = "".join(
        json.loads(ln[6:])["choices"][0]["delta"].get("content") or "" for ln in lines if '"choices": [{' in ln
    )
    assert text == ref.text


def test_video_requests_are_prefilled_alone_and_decode_beside_image_requests(
    ov_pipe,
    ov_url: str,
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Two videos of different frame counts and two images arrive together: each video job is prefilled alone (the
    image jobs may share a prefill), and every answer equals the one it gets alone."""
    short = write_video(tmp_path / "short.mp4", n=3)  # 3 frames: fewer than FRAMES
    requests = [
        ask(video_part(video_url(clip.read_bytes()))),
        ask(video_part(video_url(short.read_bytes())), "And this one?"),
        ask({"type": "image_url", "image_url": {"url": data_url(image_bytes(40, 30, seed=1))}}),
        ask({"type": "image_url", "image_url": {"url": data_url(image_bytes(30, 44, seed=2))}}, "Colours?"),
    ]
    alone = [post(ov_url, m).json()["choices"][0]["message"]["content"] for m in requests]
    groups: list[list[bool]] = []
    prefill = Batcher._prefill

    def spy(self, jobs):  # noqa: ANN001, ANN202
        groups.append(["pixel_values_videos" in j.vision for j in jobs])
        return prefill(self, jobs)

    monkeypatch.setattr(Batcher, "_prefill", spy)
    out: dict[int, httpx.Response] = {}
    threads = [
        threading.Thread(target=lambda i=i, m=m: out.__setitem__(i, post(ov_url, m))) for i, m in enumerate(requests)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[i].status_code for i in range(4)] == [200] * 4, [out[i].text for i in range(4)]
    assert [out[i].json()["choices"][0]["message"]["content"] for i in range(4)] == alone
    assert sum(sum(g) for g in groups) == 2 and all(len(g) == 1 for g in groups if any(g)), groups


@pytest.mark.parametrize(
    "case, status, text",
    [
        ("corrupt", 400, "cannot decode the video"),
        ("truncated", 400, "cannot decode the video"),
        ("too big", 413, f"over the limit of {MAX_VIDEO_BYTES} bytes"),
        ("frames too large", 413, f"over the limit of {MAX_PIXELS} pixels; downscale the video"),
        ("not a video type", 400, "unsupported video type 'image/png'"),
        ("not base64", 400, "not valid base64"),
        ("remote", 400, "remote video URLs are disabled; send a data: URL (or start the server with --allow-remote"),
        ("local path", 400, "video_url.url must be a data: URL"),
        ("file url", 400, "video_url.url must be a data: URL"),
        ("two videos", 400, "2 videos in the request; this server takes at most 1"),
        ("assistant video", 400, "videos can only be sent in user messages"),
    ],
)
def test_bad_videos_are_one_line_4xx(
    ov_url: str, clip: Path, tmp_path: Path, case: str, status: int, text: str
) -> None:
    data = clip.read_bytes()
    urls = {
        "corrupt": video_url(b"\x00\x00\x00\x18ftypmp42 this is no video at all" * 20),
        "truncated": video_url(data[: len(data) // 2]),
        "too big": video_url(b"\x00" * (MAX_VIDEO_BYTES + 10)),
        "frames too large": video_url(write_video(tmp_path / "big.mp4", n=2, size=48).read_bytes()),
        "not a video type": video_url(data, "image/png"),
        "not base64": "data:video/mp4;base64,%%%not-base64%%%",
        "remote": "https://example.com/clip.mp4",
        "local path": str(clip),
        "file url": clip.as_uri(),
    }
    if case == "two videos":
        messages = [{"role": "user", "content": [video_part(video_url(data)), video_part(video_url(data))]}]
    elif case == "assistant video":
        messages = [
            *ask({"type": "text", "text": "hi"}),
            {"role": "assistant", "content": [video_part(video_url(data))]},
        ]
        messages.append({"role": "user", "content": "and?"})
    else:
        messages = ask(video_part(urls[case]))
    r = post(ov_url, messages)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert text in message and "\n" not in message and "Traceback" not in message, message
    if case not in ("two videos",):
        assert r.json()["error"]["param"].endswith("video_url"), r.json()


def test_video_without_pyav_names_the_extra(ov_url: str, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llavakit.serve.videos as videos

    monkeypatch.setattr(videos, "_av", lambda: None)
    r = post(ov_url, ask(video_part(video_url(clip.read_bytes()))))
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "needs PyAV" in message and "pip install 'llavakit[video]'" in message and "\n" not in message


def test_video_to_a_model_without_video_is_refused(server, clip: Path) -> None:  # noqa: ANN001
    """The shared server runs a llava_next model: a video part is refused before anything is decoded."""
    r = server.post({"model": server.model, "messages": ask(video_part(video_url(clip.read_bytes())))})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "does not take video" in message and "LLaVA-OneVision" in message and "\n" not in message


def test_remote_video_urls_follow_the_image_policy() -> None:
    """http(s) video URLs: refused unless --allow-remote-images; with it, only public hosts (as images)."""
    from llavakit.serve.images import ImageError
    from llavakit.serve.videos import request_video_bytes

    url = "http://127.0.0.1:9/clip.mp4"
    with pytest.raises(ImageError, match="remote video URLs are disabled"):
        request_video_bytes(url, ImageLimits(), VideoLimits(), "v")
    with pytest.raises(ImageError, match="non-public"):
        request_video_bytes(url, ImageLimits(allow_remote=True), VideoLimits(), "v")
