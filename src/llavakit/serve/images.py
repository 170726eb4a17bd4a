"""Images sent to the server: ``data:`` URLs and (opt-in) remote URLs, checked before any model work.

Every failure is an ``ImageError`` carrying the HTTP status it deserves: 400 for what cannot be decoded or is not
allowed, 413 for what is too large (bytes, or pixels: a decompression bomb is refused from its header, before
its pixels are decoded). Remote fetches go only to public addresses (no loopback, private, link-local, multicast
or reserved ranges, checked again on every redirect and pinned to the checked address against DNS rebinding),
with limits on bytes, time and redirects.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from PIL import Image, UnidentifiedImageError

from ..processing.image_load import FORMATS_HINT, bomb_message, load_image

# MPO: a JPEG with more pictures after the first (phone cameras write it); Pillow names it apart, read as its first
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
ACCEPTED = "PNG, JPEG, WebP or GIF"  # FORMATS, as the error messages name them
MIME_TYPES = set(FORMATS.values()) | {"image/jpg"}


class ImageError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # encoded size of one image
    max_pixels: int = 40_000_000  # width * height of one image
    max_images: int = 8  # per request
    allow_remote: bool = False
    fetch_timeout: float = 10.0  # seconds for the whole fetch, redirects included
    max_redirects: int = 3


def decode_data_url(url: str, limits: ImageLimits, what: str) -> bytes:
    """``data:image/png;base64,iVBOR...`` -> the encoded image bytes."""
    return data_url_bytes(
        url, what, max_bytes=limits.max_bytes, kind="image", mime_ok=MIME_TYPES.__contains__, accepted=ACCEPTED
    )


def data_url_bytes(
    url: str, what: str, *, max_bytes: int, kind: str, mime_ok: Callable[[str], bool], accepted: str
) -> bytes:
    """The bytes of a base64 ``data:`` URL of an image or a video (``kind``); the size checked before decoding."""
    example = "data:image/png;base64,<data>" if kind == "image" else "data:video/mp4;base64,<data>"
    head, sep, payload = url.partition(",")
    if not sep:
        raise ImageError(f"{what}: data: URL without a comma; expected {example}")
    meta = head[len("data:") :].split(";")
    mime = meta[0].strip().lower()
    if mime and not mime_ok(mime):
        raise ImageError(f"{what}: unsupported {kind} type {mime!r}; send {accepted}")
    if "base64" not in [m.strip().lower() for m in meta[1:]]:
        raise ImageError(f"{what}: data: URL must be base64 encoded ({example})")
    if len(payload) * 3 // 4 > max_bytes:
        fix = "; send a shorter or more compressed video" if kind == "video" else ""
        raise ImageError(f"{what}: {kind} is over the limit of {max_bytes} bytes{fix}", 413)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"{what}: data: URL is not valid base64 ({e})") from None


def open_image(data: bytes, limits: ImageLimits, what: str) -> Image.Image:
    """Check ``data`` (format, bytes, pixels from the header) and decode it as ``llava generate`` reads a file.

    The result is the RGB image the processor would make of these bytes (``load_image``: EXIF orientation
    applied, ``convert("RGB")``), stripped of its metadata so that the processor, given this PIL image, changes
    nothing more: the pixels equal those of ``llava generate`` on the same file, and the image is decoded once.
    """
    if not data:
        raise ImageError(f"{what}: empty image (no bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(f"{what}: {len(data)} bytes is over the limit of {limits.max_bytes} bytes", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in FORMATS:
                raise ImageError(f"{what}: unsupported image format {img.format}; send {ACCEPTED}")
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(f"{what}: zero-size image ({w}x{h})")
            if w * h > limits.max_pixels:
                raise ImageError(
                    f"{what}: {w}x{h} = {w * h} pixels is over the limit of {limits.max_pixels} pixels; downscale it",
                    413,
                )
            rgb = load_image(data, max_pixels=limits.max_pixels, name=what)  # decodes fully: truncation shows here
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's guard (at 2x its MAX_IMAGE_PIXELS) fires before ours
        raise ImageError(bomb_message(what, str(e), limits.max_pixels), 413) from None
    except UnidentifiedImageError:
        raise ImageError(f"{what}: cannot decode image: not a {ACCEPTED} file (or corrupt)") from None
    except ValueError as e:  # load_image's own message: "image <what>: cannot decode image: ... (accepted: <all>)"
        raise ImageError(str(e).removeprefix("image ").replace(FORMATS_HINT, ACCEPTED)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds on hostile input; all mean "cannot decode"
        raise ImageError(f"{what}: cannot decode image ({type(e).__name__}: {e})") from None
    rgb.info = {}  # no EXIF orientation or transparency left for the processor to apply a second time
    return rgb


def check_image(data: bytes, limits: ImageLimits, what: str) -> tuple[int, int]:
    """(height, width) of the image as the model sees it (EXIF orientation applied), after ``open_image``."""
    img = open_image(data, limits, what)
    return img.height, img.width


def is_public(ip: str) -> bool:
    """True for a globally routable unicast address; loopback, private, link-local, etc. are refused.

    >>> is_public("93.184.216.34"), is_public("127.0.0.1"), is_public("::ffff:10.0.0.1"), is_public("169.254.169.254")
    (True, False, False, False)
    """
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bad = (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )
    return addr.is_global and not bad


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def fetch_image(
    url: str,
    limits: ImageLimits,
    what: str,
    *,
    resolver: Resolver = resolve,
    allow_address: Callable[[str], bool] = is_public,
) -> bytes:
    """GET an http(s) image within the limits; every hop's host must resolve only to allowed addresses."""
    accept = ", ".join(FORMATS.values())
    return fetch_url(url, limits, what, resolver=resolver, allow_address=allow_address, accept=accept)


def fetch_url(
    url: str,
    limits: ImageLimits,
    what: str,
    *,
    resolver: Resolver = resolve,
    allow_address: Callable[[str], bool] = is_public,
    kind: str = "image",
    accept: str = "*/*",
    max_bytes: int | None = None,
) -> bytes:
    """GET an http(s) image or video (``kind``) within ``limits`` (time, redirects; ``max_bytes`` if given, else
    the image limit); every hop's host must resolve only to allowed addresses."""
    import httpx

    max_bytes = limits.max_bytes if max_bytes is None else max_bytes
    deadline = time.monotonic() + limits.fetch_timeout
    for _hop in range(limits.max_redirects + 1):
        try:  # a port out of range or an unclosed IPv6 bracket: ValueError, from urlsplit or .port
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise ImageError(f"{what}: not a valid URL ({e}): {url[:100]!r}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ImageError(f"{what}: only http(s) {kind} URLs can be fetched, got {url[:100]!r}")
        try:
            addrs = resolver(host, port)
        except (OSError, UnicodeError) as e:  # UnicodeError: the IDNA codec's "label empty or too long"
            raise ImageError(f"{what}: cannot resolve host {host!r} ({e})") from None
        if not addrs or not all(allow_address(a) for a in addrs):
            raise ImageError(f"{what}: refusing to fetch from {host!r}: it resolves to a non-public address")
        ip = addrs[0]
        netloc = f"[{ip}]" if ":" in ip else ip
        pinned = parts._replace(netloc=f"{netloc}:{port}").geturl()
        # an internationalized host (bücher.de) goes in the Host header and TLS SNI in its ASCII (IDNA) form
        authority, sni = parts.netloc.rsplit("@", 1)[-1].encode("idna").decode(), host.encode("idna").decode()
        left = deadline - time.monotonic()
        if left <= 0:
            raise ImageError(f"{what}: fetching the {kind} took longer than {limits.fetch_timeout} s")
        try:
            with httpx.Client(timeout=left, follow_redirects=False, trust_env=False) as client:
                req = client.build_request(
                    "GET",
                    pinned,
                    headers={"Host": authority, "Accept": accept},
                    extensions={"sni_hostname": sni},
                )
                resp = client.send(req, stream=True)
                try:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise ImageError(f"{what}: fetching the {kind} returned HTTP {resp.status_code}")
                    size = resp.headers.get("content-length", "0")
                    if size.isdigit() and int(size) > max_bytes:
                        raise ImageError(f"{what}: {kind} is over the limit of {max_bytes} bytes", 413)
                    body = bytearray()
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ImageError(f"{what}: {kind} is over the limit of {max_bytes} bytes", 413)
                        if time.monotonic() > deadline:
                            raise ImageError(f"{what}: fetching the {kind} took longer than {limits.fetch_timeout} s")
                    return bytes(body)
                finally:
                    resp.close()
        except (httpx.HTTPError, httpx.InvalidURL) as e:  # InvalidURL: a control character, over 64 kB, ...
            raise ImageError(f"{what}: cannot fetch the {kind} ({type(e).__name__}: {e})") from None
    raise ImageError(f"{what}: more than {limits.max_redirects} redirects")


def request_image_bytes(url: str, limits: ImageLimits, what: str) -> bytes:
    """The encoded bytes of one ``image_url`` part: a ``data:`` URL decoded, or (opt-in) an http(s) URL fetched."""
    if url[:5].lower() == "data:":  # URL schemes are case-insensitive (RFC 3986)
        return decode_data_url(url, limits, what)
    if url[:8].lower().startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise ImageError(
                f"{what}: remote image URLs are disabled; send a data: URL "
                "(or start the server with --allow-remote-images)"
            )
        return fetch_image(url, limits, what)
    raise ImageError(f"{what}: image_url.url must be a data: URL (or http(s) with --allow-remote-images)")


def load_request_image(url: str, limits: ImageLimits, what: str) -> Image.Image:
    """One ``image_url`` part as the checked, decoded RGB image (see ``open_image``)."""
    return open_image(request_image_bytes(url, limits, what), limits, what)
