"""edge.images: image files and bytes decoded to BGR, refused from their header when too large."""
from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import images
from edge.images import MAX_IMAGE_PIXELS, ImageError, ImageTooLarge, decode_image, image_size

ROOT = Path(__file__).resolve().parents[1]


def zero_png(width: int, height: int, block: int = 1 << 18) -> bytes:
    """A valid all-black RGB PNG of any size, made in milliseconds and small on disk.

    The pixels are all zero, so the deflate stream is one compressed block of
    ``block`` zero bytes repeated: after a full flush zlib compresses the same
    input to the same bytes. The Adler-32 of n zero bytes is ``(n % 65521) << 16 | 1``.
    """
    raw = (width * 3 + 1) * height  # a filter byte (0: none) before each row
    if raw <= 4 * block:
        stream = zlib.compress(bytes(raw), 9)
    else:
        n, rest = divmod(raw, block)
        zeros = bytes(block)
        c = zlib.compressobj(9)
        first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
        again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
        assert c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) == again
        tail = c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH)
        stream = first + again * (n - 1) + tail[:-4] + struct.pack(">I", ((raw % 65521) << 16) | 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    step = 1 << 20
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + b"".join(chunk(b"IDAT", stream[i:i + step]) for i in range(0, len(stream), step))
            + chunk(b"IEND", b""))


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches OpenCV's decoder."""
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(images.cv2, "imdecode", refuse)


IMAGE = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)


def encoded(ext: str, image: np.ndarray = IMAGE, params: tuple = ()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def test_zero_png_is_a_valid_png() -> None:
    data = zero_png(2000, 1500)  # 9 MB of raw rows: 34 repeated blocks
    assert len(data) < 20_000
    image = decode_image(data)
    assert image.shape == (1500, 2000, 3) and image.dtype == np.uint8 and not image.any()


def test_oversized_png_is_refused_from_its_header_before_decoding(tmp_path: Path, no_decoding: None) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(zero_png(30000, 30000))
    assert big.stat().st_size < 4_000_000  # 2.7 GB of pixels once decoded
    with pytest.raises(ImageTooLarge) as err:
        decode_image(big)
    assert (err.value.width, err.value.height, err.value.name) == (30000, 30000, str(big))
    assert str(err.value) == (f"{big}: too large to decode: 30000x30000 pixels (900.0 Mpx), more than the "
                              f"{MAX_IMAGE_PIXELS / 1e6:g} Mpx an image may have")
    with pytest.raises(ImageTooLarge, match=r"^<bytes>: too large to decode: 30000x30000"):
        decode_image(big.read_bytes())


@pytest.mark.parametrize("kind,data", [
    ("JPEG", encoded(".jpg")),
    ("PNG", encoded(".png")),
    ("BMP", encoded(".bmp")),
    ("WebP", encoded(".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 90))),  # lossy: VP8
    ("WebP", encoded(".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 101))),  # lossless: VP8L
    ("TIFF", encoded(".tiff")),
    ("PNM", encoded(".ppm")),
    ("PNM", encoded(".pgm", IMAGE[..., 0].copy())),
    ("PNM", encoded(".pam")),
])
def test_size_from_the_header_of_each_format(kind: str, data: bytes) -> None:
    assert image_size(data) == (kind, 53, 37)
    assert decode_image(data).shape == (37, 53, 3)


def _jpeg_with(data: bytes, segment: bytes) -> bytes:
    """``data`` with ``segment`` inserted right after the SOI marker."""
    return data[:2] + segment + data[2:]


def _forged(kind: str) -> bytes:
    """An image header of ``kind`` that declares far more pixels than its file holds (20000x20000, or the
    largest a WebP VP8 or VP8L frame can declare)."""
    if kind == "JPEG":
        data = bytearray(_jpeg_with(encoded(".jpg"), b"\xff\xe1" + struct.pack(">H", 60_002) + bytes(60_000)))
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
        return bytes(data)
    if kind == "PNG":
        data = bytearray(encoded(".png"))
        data[16:24] = struct.pack(">II", 20000, 20000)
        return bytes(data)
    if kind == "BMP":
        data = bytearray(encoded(".bmp"))
        data[18:26] = struct.pack("<ii", 20000, -20000)  # negative: a top-down bitmap
        return bytes(data)
    if kind == "WebP VP8":
        data = bytearray(encoded(".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 90)))
        data[26:30] = struct.pack("<HH", 16383, 16383)
        return bytes(data)
    if kind == "WebP VP8L":
        data = bytearray(encoded(".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 101)))
        data[21:25] = struct.pack("<I", 16383 | 16383 << 14)
        return bytes(data)
    if kind == "WebP VP8X":
        canvas = (19999).to_bytes(3, "little") * 2
        return b"RIFF" + struct.pack("<I", 22) + b"WEBP" + b"VP8X" + struct.pack("<I", 10) + bytes(4) + canvas
    if kind == "TIFF":
        ifd = struct.pack("<H", 2) + struct.pack("<HHII", 256, 4, 1, 20000) + struct.pack("<HHII", 257, 3, 1, 20000)
        return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(4)
    if kind == "BigTIFF":
        ifd = struct.pack(">Q", 2) + struct.pack(">HHQQ", 256, 16, 1, 20000) + struct.pack(">HHQ", 257, 3, 1)
        return b"MM\x00+" + struct.pack(">HHQ", 8, 0, 16) + ifd + struct.pack(">H", 20000) + bytes(6) + bytes(8)
    if kind == "PNM":
        return b"P6\n# a comment 1 2\n20000\n20000 255\n" + bytes(64)
    if kind == "PAM":
        return b"P7\nWIDTH 20000\nHEIGHT 20000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + bytes(64)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "BMP", "WebP VP8", "WebP VP8L", "WebP VP8X", "TIFF", "BigTIFF",
                                  "PNM", "PAM"])
def test_forged_headers_declaring_too_many_pixels_are_refused(kind: str, tmp_path: Path, no_decoding: None) -> None:
    path = tmp_path / "forged"
    path.write_bytes(_forged(kind))
    with pytest.raises(ImageTooLarge) as err:
        decode_image(path)
    side = {"WebP VP8": 16383, "WebP VP8L": 16384}.get(kind, 20000)
    assert (err.value.width, err.value.height) == (side, side)
    assert str(err.value).startswith(f"{path}: too large to decode: ")


def test_the_bound_is_inclusive_and_can_be_lowered() -> None:
    data = encoded(".png")
    assert decode_image(data, max_pixels=53 * 37).shape == (37, 53, 3)
    with pytest.raises(ImageTooLarge, match=r"53x37 pixels \(0\.0 Mpx\), more than the 0\.00196 Mpx"):
        decode_image(data, max_pixels=53 * 37 - 1)


def test_a_jpeg_frame_header_after_large_segments_and_stray_bytes_is_found() -> None:
    data = _jpeg_with(encoded(".jpg"), b"\xff\xe1" + struct.pack(">H", 65_535) + bytes(65_533)  # EXIF-sized APP1
                      + b"\xff\xe2" + struct.pack(">H", 65_535) + bytes(65_533)  # an ICC profile part
                      + b"\x00\x00\x00" + b"\xff\xff\xfe\x00\x03x")  # stray bytes, fill bytes, a comment
    assert image_size(data) == ("JPEG", 53, 37)
    assert decode_image(data).shape == (37, 53, 3)


def _png(width: int = 53, height: int = 37) -> bytes:
    data = bytearray(encoded(".png"))
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


@pytest.mark.parametrize("content,reason", [
    (b"", "not a decodable image (the file is empty)"),
    (b"GIF89a\x10\x00\x10\x00" + bytes(32), "not a decodable image (not JPEG, PNG, BMP, WebP, TIFF or PNM)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a decodable image (PNG header: the header is cut short)"),
    (b"\xff\xd8\xff\xe0 this is not a JPEG", "not a decodable image (JPEG header: the header is cut short)"),
    (b"\xff\xd8\xff\xda\x00\x02", "not a decodable image (JPEG header: no frame header before the scan)"),
    (_png(0, 37), "not a decodable image (PNG header gives 0x37 pixels)"),
    (encoded(".png")[:60], "not a decodable image (truncated or corrupt)"),
    (encoded(".jpg")[:200] + bytes(100), "not a decodable image (truncated or corrupt)"),
])
def test_a_file_that_is_no_image_is_an_error_naming_it_and_why(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        decode_image(path)
    assert str(err.value) == f"{path}: {reason}" and err.value.reason == reason and err.value.name == str(path)
    assert isinstance(err.value, ValueError)


def test_missing_files_directories_fifos_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.jpg: file not found$"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match=r": not a regular file$"):
        decode_image(tmp_path)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    done: list[BaseException] = []

    def read_fifo() -> None:
        with pytest.raises(ImageError) as refused:
            decode_image(fifo)
        done.append(refused.value)

    # No writer ever opens the FIFO: opening it for reading without O_NONBLOCK would never return.
    t = threading.Thread(target=read_fifo, daemon=True)
    t.start()
    t.join(10)
    assert done and str(done[0]) == f"{fifo}: not a regular file"
    path = tmp_path / "big.png"
    path.write_bytes(encoded(".png"))
    size = path.stat().st_size
    with pytest.raises(ImageError, match=fr"big\.png: too large to decode: {size} bytes, more than the 100 an "):
        decode_image(path, max_bytes=100)
    with pytest.raises(ImageError, match=r"^<bytes>: not a decodable image \(no bytes\)$"):
        decode_image(b"")
    assert decode_image(path, name="camera 3").shape == (37, 53, 3)
    with pytest.raises(ImageError, match=r"^camera 3: too large to decode"):
        decode_image(path.read_bytes(), name="camera 3", max_bytes=100)


@pytest.mark.parametrize("raised,reason", [
    (cv2.error("OpenCV(5.0.0) loadsave.cpp:79: error: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS"),
     "not a decodable image ((-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS)"),
    (MemoryError(), "not decoded (out of memory)"),
])
def test_what_the_decoder_raises_is_an_image_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   raised: BaseException, reason: str) -> None:
    def decoder(*args, **kwargs):
        raise raised

    monkeypatch.setattr(images.cv2, "imdecode", decoder)
    path = tmp_path / "x.jpg"
    path.write_bytes(encoded(".jpg"))
    with pytest.raises(ImageError) as err:
        decode_image(path)
    assert str(err.value) == f"{path}: {reason}"


def test_the_command_line_loads_opencv_with_the_same_pixel_bound(tmp_path: Path) -> None:
    """``python -m edge`` imports edge.images before anything loads OpenCV, so OpenCV's own bound is ours too:
    a second guard, should a header parser and a decoder ever disagree."""
    path = tmp_path / "56mpx.png"
    path.write_bytes(zero_png(8000, 7000))
    code = ("import sys, edge.__main__, cv2, numpy as np\n"
            "try:\n"
            f"    cv2.imdecode(np.fromfile({str(path)!r}, np.uint8), cv2.IMREAD_COLOR)\n"
            "except cv2.error as exc:\n"
            "    sys.exit('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(exc) else str(exc))\n"
            "sys.exit('decoded')\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stderr.strip().endswith("refused"), proc.stderr


def test_the_folder_source_logs_and_skips_an_oversized_image(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from edge.config import parse_config
    from edge.sources import FolderSource

    (tmp_path / "a.jpg").write_bytes(encoded(".jpg"))
    (tmp_path / "b.png").write_bytes(zero_png(30000, 30000))
    (tmp_path / "c.png").write_bytes(encoded(".png"))
    source = FolderSource(parse_config({"camera": {"type": "folder", "path": str(tmp_path), "realtime": False}}).camera)
    with caplog.at_level(logging.WARNING, logger="edge.sources"):
        frames = list(source.frames(threading.Event()))
    assert [(f.origin, f.seq, f.image.shape) for f in frames] == [
        (str(tmp_path / "a.jpg"), 0, (37, 53, 3)), (str(tmp_path / "c.png"), 2, (37, 53, 3))]
    assert source.errors == 1
    assert f"{tmp_path / 'b.png'} (seq 1): too large to decode: 30000x30000 pixels" in caplog.text


def test_one_definition_of_image_suffixes_and_default_models() -> None:
    import edge.__main__
    import edge.health
    import edge.model
    import edge.pipeline
    import edge.sources

    assert edge.sources.IMAGE_SUFFIXES is images.IMAGE_SUFFIXES
    assert all(m.DEFAULT_MODELS is edge.model.DEFAULT_MODELS for m in (edge.__main__, edge.health, edge.pipeline))
    assert (edge.model.DEFAULT_MODELS / "reader.tflite").is_file()
