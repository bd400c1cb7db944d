"""Decoding image files and buffers for the edge, bounded before anything is decoded.

A compressed image can be tiny on disk and huge decoded: a 30000x30000 PNG of
2.6 MB asks for 2.7 GB of pixels, more than a Raspberry Pi has. So every
image is refused before decoding when its file is larger than
``MAX_IMAGE_BYTES`` or when its header declares more than
``MAX_IMAGE_PIXELS`` pixels. The size is read by a small parser of the JPEG
(SOF marker), PNG (IHDR), BMP, WebP (VP8, VP8L, VP8X), TIFF/BigTIFF (first
IFD) and PNM/PAM/PFM headers; an image in any other format is refused, since
its size cannot be checked first. OpenCV's own bound
(``OPENCV_IO_MAX_IMAGE_PIXELS``, default 2^30) is set to the same value as a
second line of defence; OpenCV reads it once, when it is loaded, so it only
holds where this module is imported before anything else imports ``cv2``.

Every failure is an ``ImageError`` (a ``ValueError``) whose message names the
file and the reason: missing, not a regular file, unreadable, empty, too many
bytes, too many pixels (with the dimensions), not an image, truncated or
corrupt.
"""
from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Pixels an image may have: 50 Mpx, above 8K video (7680x4320, 33 Mpx) and 48 Mpx phone photos.
#: Decoded as BGR that is at most 150 MB.
MAX_IMAGE_PIXELS = 50_000_000
#: Bytes an image file may have: an uncompressed 32-bit BMP at the pixel bound.
MAX_IMAGE_BYTES = 4 * MAX_IMAGE_PIXELS
#: File suffixes taken as images where a folder is scanned (the daemon's folder source).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
#: The formats whose size is checked before decoding; others are refused.
FORMATS = "JPEG, PNG, BMP, WebP, TIFF or PNM"

# OpenCV reads this once, when it is loaded; a value already in the environment is the operator's choice.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402  (after its pixel bound is set)
import numpy as np  # noqa: E402

#: JPEG markers that start a frame (SOF0-SOF15 less DHT, JPG and DAC) and so carry the image size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Marker segments looked at before giving up on finding a JPEG's frame header (real files have tens).
_MAX_JPEG_SEGMENTS = 4096
#: Stray bytes skipped where a JPEG marker is due before the file is taken as no JPEG.
_MAX_JPEG_STRAY = 65536
#: Bytes of a PNM header read to find its size (comments may precede it).
_PNM_HEAD = 4096


class ImageError(ValueError):
    """An image that cannot be decoded: ``name`` is the file (or buffer), ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class ImageTooLarge(ImageError):
    """An image refused before decoding because its header declares too many pixels."""

    def __init__(self, name: str, width: int, height: int, max_pixels: int) -> None:
        super().__init__(name, f"too large to decode: {width}x{height} pixels ({width * height / 1e6:.1f} Mpx), "
                               f"more than the {max_pixels / 1e6:g} Mpx an image may have")
        self.width = width
        self.height = height


class _BadHeader(Exception):
    """A recognised format whose header is cut short or inconsistent."""


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise _BadHeader("the header is cut short")
    return data


def _jpeg_marker(f: BinaryIO) -> int:
    """The next marker code, skipping stray bytes and fill bytes the way libjpeg does."""
    stray = 0
    while True:
        while _read(f, 1) != b"\xff":
            stray += 1
            if stray > _MAX_JPEG_STRAY:
                raise _BadHeader(f"more than {_MAX_JPEG_STRAY} stray bytes where a marker is due")
        marker = _read(f, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read(f, 1)[0]
        if marker:
            return marker
        stray += 2  # FF 00 is no marker


def _jpeg_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        marker = _jpeg_marker(f)
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers: no length
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            raise _BadHeader("no frame header before the scan")
        length = struct.unpack(">H", _read(f, 2))[0]
        if length < 2:
            raise _BadHeader(f"marker segment 0x{marker:02X} of length {length}")
        if marker in _SOF:
            _, height, width = struct.unpack(">BHH", _read(f, 5))
            return width, height
        f.seek(length - 2, io.SEEK_CUR)
    raise _BadHeader(f"no frame header in its first {_MAX_JPEG_SEGMENTS} marker segments")


def _png_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(8)
    _, kind, width, height = struct.unpack(">I4sII", _read(f, 16))
    if kind != b"IHDR":
        raise _BadHeader("the first chunk is not IHDR")
    return width, height


def _bmp_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(14)
    header = _read(f, 12)
    if struct.unpack("<I", header[:4])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", header[4:8])
    else:
        width, height = struct.unpack("<ii", header[4:12])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def _webp_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(12)
    kind = _read(f, 8)[:4]
    data = _read(f, 10)
    if kind == b"VP8 ":
        if data[3:6] != b"\x9d\x01\x2a":
            raise _BadHeader("no VP8 start code")
        width, height = struct.unpack("<HH", data[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        if data[0] != 0x2F:
            raise _BadHeader("no VP8L signature")
        bits = struct.unpack("<I", data[1:5])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1
    raise _BadHeader(f"unknown WebP chunk {kind!r}")


def _tiff_size(f: BinaryIO) -> tuple[int, int]:
    head = _read_at(f, 0, 4)
    end = "<" if head[:2] == b"II" else ">"
    if struct.unpack(end + "H", head[2:4])[0] == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        offset = struct.unpack(end + "Q", _read_at(f, 8, 8))[0]
        count = struct.unpack(end + "Q", _read_at(f, offset, 8))[0]
        entry, value_at, value_fmt = 20, 12, {3: "H", 4: "I", 16: "Q"}
    else:
        offset = struct.unpack(end + "I", _read_at(f, 4, 4))[0]
        count = struct.unpack(end + "H", _read_at(f, offset, 2))[0]
        entry, value_at, value_fmt = 12, 8, {3: "H", 4: "I"}
    if count > 0xFFFF:
        raise _BadHeader(f"an IFD of {count} entries")
    entries = _read(f, count * entry)
    found: dict[int, int] = {}
    for i in range(count):
        e = entries[i * entry:(i + 1) * entry]
        tag, kind = struct.unpack(end + "HH", e[:4])
        if tag in (256, 257) and kind in value_fmt:  # ImageWidth, ImageLength
            fmt = end + value_fmt[kind]
            found[tag] = struct.unpack(fmt, e[value_at:value_at + struct.calcsize(fmt)])[0]
    if len(found) < 2:
        raise _BadHeader("the first IFD has no image width and length")
    return found[256], found[257]


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return _read(f, n)


def _pnm_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(0)
    head = f.read(_PNM_HEAD)
    if head[:2] == b"P7":  # PAM: WIDTH and HEIGHT lines up to ENDHDR
        fields = dict(line.split(None, 1) for line in head.split(b"\n")[1:] if len(line.split(None, 1)) == 2)
        try:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            raise _BadHeader("no WIDTH and HEIGHT before ENDHDR") from None
    tokens = [t for line in head[2:].split(b"\n") for t in line.split(b"#", 1)[0].split()]
    try:
        return int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        raise _BadHeader("no width and height after the magic number") from None


def _parser(magic: bytes) -> tuple[str | None, Callable[[BinaryIO], tuple[int, int]] | None]:
    """The format of a file starting with ``magic`` (16 bytes) and its size parser, or (None, None)."""
    if magic.startswith(b"\xff\xd8"):
        return "JPEG", _jpeg_size
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", _png_size
    if magic.startswith(b"BM"):
        return "BMP", _bmp_size
    if magic[:4] == b"RIFF" and magic[8:12] == b"WEBP":
        return "WebP", _webp_size
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF", _tiff_size
    if len(magic) >= 3 and magic[:1] == b"P" and magic[1:2] in b"1234567Ff" and magic[2:3].isspace():
        return "PNM", _pnm_size
    return None, None


def image_size(data: bytes | BinaryIO) -> tuple[str, int, int]:
    """``(format, width, height)`` from an image's header, without decoding it.

    ``data`` is the file's bytes or a seekable binary file. Raises ``ImageError``
    (named ``<image>``) when the format is not one of ``FORMATS`` or its header
    is cut short or inconsistent.
    """
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    f.seek(0)
    kind, parse = _parser(f.read(16))
    if kind is None or parse is None:
        raise ImageError("<image>", f"not a decodable image (not {FORMATS})")
    try:
        width, height = parse(f)
    except (_BadHeader, struct.error) as exc:
        raise ImageError("<image>", f"not a decodable image ({kind} header: {exc})") from None
    if width <= 0 or height <= 0:
        raise ImageError("<image>", f"not a decodable image ({kind} header gives {width}x{height} pixels)")
    return kind, width, height


def _check(data: bytes | BinaryIO, name: str, max_pixels: int) -> None:
    try:
        _, width, height = image_size(data)
    except ImageError as exc:
        raise ImageError(name, exc.reason) from None
    if width * height > max_pixels:
        raise ImageTooLarge(name, width, height, max_pixels)


def _file_bytes(path: Path, name: str, max_bytes: int, max_pixels: int) -> bytes:
    """The bytes of the image file at ``path``, read only once its size and header have been checked."""
    try:
        # O_NONBLOCK: opening a FIFO put where an image was expected must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except OSError as exc:
        raise ImageError(name, f"cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(name, "not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        if st.st_size == 0:
            raise ImageError(name, "not a decodable image (the file is empty)")
        if st.st_size > max_bytes:
            raise ImageError(name, f"too large to decode: {st.st_size} bytes, more than the {max_bytes} an image "
                                   "file may have")
        try:
            _check(f, name, max_pixels)  # from the header alone: nothing else has been read yet
            f.seek(0)
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(name, f"cannot be read ({exc.strerror or exc})") from None
        except MemoryError:
            raise ImageError(name, f"cannot be read (out of memory for its {st.st_size} bytes)") from None
    if len(data) > max_bytes:  # grew since it was looked at
        raise ImageError(name, f"too large to decode: more than the {max_bytes} bytes an image file may have")
    return data


def decode_image(source: str | os.PathLike | bytes, name: str | None = None, *,
                 max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """Decode an image file (a path) or its bytes to a BGR ``uint8`` array.

    ``name`` is what messages call the image (default: the path as given, or
    ``<bytes>``). Files over ``max_bytes`` and images whose header declares
    more than ``max_pixels`` pixels are refused before decoding. Raises
    ``ImageError`` (``ImageTooLarge`` for too many pixels) naming the image and
    the reason.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise ImageError(name, "not a decodable image (no bytes)")
        if len(data) > max_bytes:
            raise ImageError(name, f"too large to decode: {len(data)} bytes, more than the {max_bytes} an image "
                                   "file may have")
    else:
        name = name or os.fspath(source)
        data = _file_bytes(Path(source), name, max_bytes, max_pixels)
    # Checked again on the bytes that are decoded: the file may have been rewritten since its header was read.
    _check(data, name, max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own checks (and failed allocations) raise rather than return None
        raise ImageError(name, f"not a decodable image ({str(exc).rsplit('error: ', 1)[-1].strip()})") from None
    except MemoryError:
        raise ImageError(name, "not decoded (out of memory)") from None
    if image is None:
        raise ImageError(name, "not a decodable image (truncated or corrupt)")
    return image
