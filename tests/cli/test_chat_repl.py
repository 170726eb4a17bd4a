"""``llava chat``'s loop (commands.chat) on a stand-in pipeline: what goes back into the conversation, and that a
failed or interrupted turn keeps the chat and its attached images (decoded when attached: the conversation keeps
the pixels its answers were about)."""

from __future__ import annotations

import io

from PIL import Image

from llavakit.commands import chat


class FakePipe:
    """Answers "red" in two deltas (the pipeline's answers start without whitespace: ``engine.text.AnswerText``);
    ``fail`` raises on the next turns."""

    def __init__(self, fail: list[BaseException | None] | None = None) -> None:
        self.seen: list[list[dict]] = []
        self.fail = list(fail or [])

    def stream(self, messages, **sampling):  # noqa: ANN001, ANN003, ANN201
        self.seen.append([dict(m) for m in messages])
        error = self.fail.pop(0) if self.fail else None
        yield "r"
        if error is not None:
            raise error
        yield "ed"

    def reset(self) -> None:
        pass


def _run(pipe: FakePipe, script: str, images: list[str] | None = None) -> str:
    out = io.StringIO()
    assert chat(pipe, images or [], script.splitlines(), out) == 0
    return out.getvalue()


def _images(messages: list[dict]) -> list[bytes]:
    """The pixels of the messages' images (decoded when attached)."""
    return [_px(p["image"]) for m in messages if m["role"] == "user" for p in m["content"] if p["type"] == "image"]


def _px(image) -> bytes:  # noqa: ANN001 - a PIL image, or a file's path
    return (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB").tobytes()


def test_answers_go_back_as_they_were_streamed():
    pipe = FakePipe()
    text = _run(pipe, "colour?\nand now?\n/exit")
    assert pipe.seen[1][1] == {"role": "assistant", "content": "red"}
    assert ">>> red\n" in text


def test_a_failed_or_interrupted_turn_keeps_the_chat_and_its_images(tmp_path):
    img = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(img)
    pipe = FakePipe(fail=[ValueError("the model refused it"), KeyboardInterrupt()])
    text = _run(pipe, f"/image {img}\nfirst\nsecond\nthird\n/exit")
    assert "error: the model refused it; 1 image(s) stay attached" in text
    assert "(answer interrupted" in text
    assert [_images(m) for m in pipe.seen] == [[_px(img)]] * 3  # the image goes with each retry until answered
    assert [len(m) for m in pipe.seen] == [1, 1, 1]  # failed turns left nothing behind


def test_a_bad_image_is_refused_when_attached_and_a_moved_or_changed_one_changes_nothing(tmp_path):
    good, bad = tmp_path / "red.png", tmp_path / "notes.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(good)
    bad.write_text("not an image")
    pipe = FakePipe()
    text = _run(pipe, f"/image {good}\n/image {bad}\nwhat?\n/exit")
    assert "cannot decode image" in text and _images(pipe.seen[0]) == [_px(good)]
    gone, changed = tmp_path / "gone.png", tmp_path / "changed.png"
    Image.new("RGB", (20, 20), (0, 0, 200)).save(gone)
    Image.new("RGB", (20, 20), (0, 200, 0)).save(changed)
    blue, green = _px(gone), _px(changed)
    pipe = FakePipe()

    def lines():
        yield f"/image {gone}"
        gone.unlink()  # deleted between attaching and asking
        yield "what?"
        yield f"/image {changed}"
        yield "and this?"
        Image.new("RGB", (20, 20), (250, 250, 0)).save(changed)  # overwritten after its answer
        yield "still there?"

    out = io.StringIO()
    assert chat(pipe, [], lines(), out) == 0
    assert "error" not in out.getvalue()
    # every turn was answered, each later one with the earlier turns' images as they were when attached (re-read
    # from their files on each turn, a deleted one broke every later turn, an overwritten one changed them)
    assert [_images(m) for m in pipe.seen] == [[blue], [blue, green], [blue, green]]


def test_image_paths_quoted_or_escaped_as_terminals_paste_them(tmp_path):
    img = tmp_path / "my photo.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(img)
    spellings = [f"'{img}'", f'"{img}"', str(img).replace(" ", "\\ "), str(img)]
    pipe = FakePipe()
    _run(pipe, "\n".join(f"/image {s}\nwhat?" for s in spellings))
    assert [_images(m[-1:]) for m in pipe.seen] == [[_px(img)]] * 4


def test_unquoted_paths_keep_their_backslashes():
    from llavakit.commands import _typed_path

    assert _typed_path(r"C:\photos\cat.png") == r"C:\photos\cat.png"
    assert _typed_path(r"/tmp/my\ photo.png") == "/tmp/my photo.png"


def test_a_path_under_the_home_directory_as_a_shell_reads_it(tmp_path, monkeypatch):
    """~ is the home directory unquoted, with escaped spaces too (~/my\\ photo.png gave "image file not found:
    ~/my photo.png"); quoted, a shell keeps it as it is."""
    from llavakit.commands import _typed_path

    monkeypatch.setenv("HOME", str(tmp_path))
    assert _typed_path("~/cat.png") == str(tmp_path / "cat.png")
    assert _typed_path(r"~/my\ photo.png") == str(tmp_path / "my photo.png")
    assert _typed_path("'~/my photo.png'") == "~/my photo.png"


def _videos(messages: list[dict]) -> list[list[bytes]]:
    return [[_px(f) for f in p["video"]] for m in messages if m["role"] == "user" for p in m["content"] if
            p["type"] == "video"]  # fmt: skip


def test_video_attaches_to_the_next_message_and_stays_after_a_failure(tmp_path):
    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(12):
        Image.new("RGB", (16, 12), (10 * i, 0, 0)).save(frames / f"f{i}.png")
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    pipe = FakePipe(fail=[ValueError("too long")])
    text = _run(pipe, f"/video {tmp_path / 'clip.mp4'}\n/video {frames}\nfirst\nsecond\nthird\n/exit")
    assert "error: " in text and "cannot be read as a video" in text  # refused when attached, the chat goes on
    assert "(video attached: 12 frames from" in text
    assert "the video stays attached to your next message" in text
    want = [_px(frames / f"f{i}.png") for i in range(12)]  # natural order: f2 before f10
    assert [_videos(m) for m in pipe.seen] == [[want], [want], [want]]  # failed, retried, then a follow-up
    assert [len(m[-1]["content"]) for m in pipe.seen] == [2, 2, 1]  # answered: the follow-up carries no video again


def test_video_given_at_start_and_dropped_by_reset(tmp_path):
    frames = [tmp_path / f"{i}.png" for i in range(3)]
    for f in frames:
        Image.new("RGB", (16, 12)).save(f)
    pipe = FakePipe()
    out = io.StringIO()
    assert chat(pipe, [], ["first", "/reset", "again", "/exit"], out, frames=frames) == 0
    assert _videos(pipe.seen[0]) == [[_px(f) for f in frames]]
    assert _videos(pipe.seen[1]) == []


def test_a_second_video_takes_the_conversations_frame_count_or_is_refused(tmp_path):
    """A conversation's videos share one frame count (they batch into one tensor): /video took up to 32 frames
    whatever --frames said, and a second video of another length broke every later message until /reset."""

    def clip(name: str, n: int):
        d = tmp_path / name
        d.mkdir()
        for i in range(n):
            Image.new("RGB", (16, 12), (20 * i, 0, 0)).save(d / f"f{i}.png")
        return d

    long, medium, short = clip("long", 12), clip("medium", 5), clip("short", 3)
    pipe = FakePipe()
    out = io.StringIO()
    script = [f"/video {long}", "first", f"/video {medium}", "second", f"/video {short}", "third", "/exit"]
    assert chat(pipe, [], script, out, max_frames=4) == 0
    text = out.getvalue()
    assert "(video attached: 4 frames from" in text  # --frames 4 caps /video
    assert f"{short} gives 3 frames, and this conversation's video has 4" in text
    assert [[len(v) for v in _videos(m)] for m in pipe.seen] == [[4], [4, 4], [4, 4]]  # third: no new video
