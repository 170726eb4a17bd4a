"""Image intake without a model: data: URLs, address checks, and remote fetches (against a local HTTP server,
with the address check widened to 127.0.0.1 only where a test says so)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from serve_helpers import data_url, image_bytes

from llavakit.serve.images import (
    ImageError,
    ImageLimits,
    check_image,
    decode_data_url,
    fetch_image,
    is_public,
    load_request_image,
)

PNG = image_bytes(20, 10)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/img.png":
            self._send(PNG)
        elif self.path == "/host":
            self._send(self.headers["Host"].encode())
        elif self.path == "/big.png":
            self._send(PNG + b"\0" * 5000)
        elif self.path.startswith("/hop/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/img.png" if n == 0 else f"/hop/{n - 1}")
            self.end_headers()
        elif self.path == "/to-private":
            self.send_response(301)
            self.send_header("Location", f"http://127.0.0.2:{self.server.server_port}/img.png")
            self.end_headers()
        elif self.path.startswith("/bad-location/"):
            self.send_response(302)
            self.send_header(
                "Location",
                {"port": "http://images.test:99999/x.png", "ipv6": "http://[::1/x.png"}[self.path.rsplit("/", 1)[1]],
            )
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:  # the client gave up, as it should
                pass
        else:
            self.send_response(404)
            self.end_headers()

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://images.test:{srv.server_port}"
    srv.shutdown()


def _resolver(host: str, port: int) -> list[str]:
    return {"images.test": ["127.0.0.1"], "127.0.0.2": ["127.0.0.2"]}.get(host, [])


def _fetch(url: str, **limits) -> bytes:  # noqa: ANN003
    only_loopback_1 = lambda ip: ip == "127.0.0.1"  # stands in for "a public address" in these tests
    return fetch_image(
        url, ImageLimits(allow_remote=True, **limits), "img", resolver=_resolver, allow_address=only_loopback_1
    )


@pytest.mark.parametrize(
    "ip, public",
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.8", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("100.64.0.1", False),
    ],
)
def test_is_public(ip: str, public: bool) -> None:
    assert is_public(ip) is public


def test_fetch_ok_and_redirects(origin: str) -> None:
    assert _fetch(f"{origin}/img.png") == PNG
    assert _fetch(f"{origin}/hop/2", max_redirects=3) == PNG
    with pytest.raises(ImageError, match="more than 3 redirects"):
        _fetch(f"{origin}/hop/5", max_redirects=3)


def test_fetch_refuses_redirect_to_other_address(origin: str) -> None:
    with pytest.raises(ImageError, match="non-public"):
        _fetch(f"{origin}/to-private")


def test_fetch_limits(origin: str) -> None:
    with pytest.raises(ImageError, match="over the limit of 1000 bytes") as e:
        _fetch(f"{origin}/big.png", max_bytes=1000)
    assert e.value.status == 413
    t0 = time.monotonic()
    with pytest.raises(ImageError, match="longer than 0.5 s|ReadTimeout"):
        _fetch(f"{origin}/slow", fetch_timeout=0.5)
    assert time.monotonic() - t0 < 3
    with pytest.raises(ImageError, match="HTTP 404"):
        _fetch(f"{origin}/missing.png")
    with pytest.raises(ImageError, match="cannot resolve|non-public"):
        _fetch("http://unknown.test/x.png")


def test_default_checks_refuse_loopback(origin: str) -> None:
    port = origin.rsplit(":", 1)[1]
    with pytest.raises(ImageError, match="non-public"):
        fetch_image(f"http://127.0.0.1:{port}/img.png", ImageLimits(allow_remote=True), "img")
    with pytest.raises(ImageError, match="disabled"):
        load_request_image(f"http://127.0.0.1:{port}/img.png", ImageLimits(), "img")


def test_data_urls_and_checks() -> None:
    limits = ImageLimits()
    assert decode_data_url(data_url(PNG), limits, "x") == PNG
    assert decode_data_url(data_url(PNG, "image/jpeg"), limits, "x") == PNG  # the bytes decide the format
    img = load_request_image(data_url(PNG), limits, "x")
    assert (img.mode, img.size, img.info) == ("RGB", (20, 10), {})
    gif = image_bytes(7, 5, fmt="GIF")
    webp = image_bytes(7, 5, fmt="WEBP")
    assert check_image(gif, limits, "x") == (5, 7) and check_image(webp, limits, "x") == (5, 7)
    with pytest.raises(ImageError, match="over the limit of 100 pixels") as e:
        check_image(PNG, ImageLimits(max_pixels=100), "x")
    assert e.value.status == 413
    with pytest.raises(ImageError, match="over the limit"):
        decode_data_url(data_url(PNG), ImageLimits(max_bytes=10), "x")


def test_a_multi_picture_jpeg_from_a_phone_is_read_as_its_first_picture() -> None:
    """MPO files are JPEGs with a second picture appended; Pillow reports them as "MPO", which was refused."""
    import io

    from PIL import Image

    first, second = Image.new("RGB", (12, 8), (200, 10, 10)), Image.new("RGB", (12, 8), (10, 10, 200))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    img = load_request_image(data_url(buf.getvalue(), "image/jpeg"), ImageLimits(), "x")
    assert img.size == (12, 8) and img.getpixel((6, 4))[0] > 150  # the first (red) picture


def test_undecodable_image_names_the_formats_the_server_accepts() -> None:
    """``load_image`` (``llava generate``) reads BMP, TIFF, ...; the server does not: its message lists its own."""
    for data in (image_bytes(64, 64)[:500], b"not an image at all"):  # truncated pixel data, an unknown format
        with pytest.raises(ImageError, match="cannot decode image") as e:
            check_image(data, ImageLimits(), "img")
        assert "PNG, JPEG, WebP or GIF" in str(e.value) and "BMP" not in str(e.value) and "TIFF" not in str(e.value)


def _tricky_images() -> dict[str, bytes]:
    """Images whose RGB conversion differs between files and PIL images in transformers' rules."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    out = {}
    rgba = Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8), "RGBA")
    pal = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).convert("P")
    rotated = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    for name, im, fmt, kw in [
        ("rgba.png", rgba, "PNG", {}),
        ("palette-transparent.png", pal, "PNG", {"transparency": 3}),
        ("gray.png", rotated.convert("L"), "PNG", {}),
        ("exif-rotated.jpg", rotated, "JPEG", {"exif": exif.tobytes()}),
        ("la.webp", rotated.convert("LA"), "WEBP", {"lossless": True}),
    ]:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    return out


def test_decoded_once_gives_the_pixels_of_the_file(pipe) -> None:  # noqa: ANN001
    """The server hands the processor decoded images; they must give exactly the pixels of the bytes (generate)."""
    import torch

    limits = ImageLimits()
    for name, data in _tricky_images().items():
        img = load_request_image(data_url(data), limits, name)
        from_bytes = pipe.processor(text="<image>hi", images=[data])
        from_image = pipe.processor(text="<image>hi", images=[img])
        assert torch.equal(from_bytes["pixel_values"], from_image["pixel_values"]), name
        assert torch.equal(from_bytes["input_ids"], from_image["input_ids"]), name
    assert check_image(_tricky_images()["exif-rotated.jpg"], limits, "x") == (50, 30)  # upright: h, w swapped


def test_a_redirect_to_a_malformed_url_is_an_image_error(origin: str) -> None:
    """A Location with a port out of range or an unclosed IPv6 bracket raised urlsplit's ValueError (a 500)."""
    for case in ("port", "ipv6"):
        with pytest.raises(ImageError, match="(not a valid|Invalid) URL"):
            _fetch(f"{origin}/bad-location/{case}")


def test_urls_httpx_or_idna_refuse_are_image_errors(origin: str) -> None:
    """A host with an empty or over-long label (UnicodeError from the IDNA codec) and a URL httpx refuses (a
    control character, over 64 kB) escaped as 500s."""
    with pytest.raises(ImageError, match="cannot resolve"):
        fetch_image("http://a..b/x.png", ImageLimits(allow_remote=True), "img")
    with pytest.raises(ImageError, match="cannot resolve"):
        fetch_image(f"http://{'a' * 64}.com/x.png", ImageLimits(allow_remote=True), "img")
    for url in (f"{origin}/x\x00.png", f"{origin}/{'a' * 70_000}"):
        with pytest.raises(ImageError, match="cannot fetch"):
            _fetch(url)


def test_an_internationalized_host_is_fetched_under_its_ascii_name(origin: str) -> None:
    """A host name with non-ASCII letters (bücher.de; the system resolver takes it) went into the Host header as
    written, which httpx cannot encode: a UnicodeEncodeError, a 500. The header now holds its IDNA form."""
    port = origin.rsplit(":", 1)[1]
    got = fetch_image(
        f"http://bücher.test:{port}/host",
        ImageLimits(allow_remote=True),
        "img",
        resolver=lambda host, port: ["127.0.0.1"] if host == "bücher.test" else [],
        allow_address=lambda ip: ip == "127.0.0.1",
    )
    assert got == f"xn--bcher-kva.test:{port}".encode()
