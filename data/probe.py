"""Fast validation of many image files: does each decode, and what is its size.

Dataset validation decodes every image once before any heavy work. For a full M3FD (8,400 images of 1024x768)
that is the slowest part of loading, so this module

* decodes JPEGs at 1/8 scale (``cv2.IMREAD_REDUCED_GRAYSCALE_8``: libjpeg skips most of the inverse DCT, about
  half the cost of a full decode) and takes the exact size from the JPEG frame header, cross-checked against
  the reduced image's size (a disagreement falls back to a full decode);
* decodes everything else fully with ``cv2.IMREAD_UNCHANGED`` (PNG cost is inflation, which no reduced mode
  avoids);
* runs the files on a thread pool (OpenCV releases the GIL while decoding).

Where only the size is wanted (an export's labels and its size checks), :func:`probe_sizes` reads it from the file's
header instead and decodes nothing, for the PNG, JPEG, BMP and TIFF variants OpenCV decodes, once the file's end is
where its header says (PNG's ``IEND``, JPEG's ``EOI``, BMP's last pixel row, TIFF's last strip or tile): a truncated
file, another format or an unusual variant is decoded as above, so it fails, or passes, with the same message.
Damage inside a complete file (a flipped bit in the pixel data) is left to the decoder that reads the pixels.

Sizes agree with :func:`data.io.image_size`.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic ...): they carry height and width.
_JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
# The JPEG frames OpenCV's libjpeg decodes whatever its build: baseline, extended and progressive Huffman, 8 bits.
_JPEG_DECODED_SOF = frozenset({0xC0, 0xC1, 0xC2})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk, empty, with its CRC
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # colour type -> bit depths
_BMP_HEADERS = frozenset({40, 52, 56, 108, 124})  # BITMAPINFOHEADER and its V2..V5 extensions
# TIFF: field type -> struct code of SHORT and LONG (the types of the fields read here); compressions OpenCV's
# libtiff decodes (none, LZW, Adobe and old deflate, PackBits).
_TIFF_TYPES = {3: "H", 4: "I"}
_TIFF_COMPRESSIONS = frozenset({1, 5, 8, 32946, 32773})
# OpenCV refuses larger images (CV_IO_MAX_IMAGE_WIDTH/HEIGHT/PIXELS defaults): such a file is decoded for its error.
_MAX_SIDE, _MAX_PIXELS = 1 << 20, 1 << 30
# Decoding is a C call that releases the GIL; more threads than this only adds memory for the file buffers.
MAX_WORKERS = 8


def _jpeg_frame(buf: bytes) -> tuple[int, int, int, int, int] | None:
    """(SOF marker, precision, width, height, components) of a JPEG's first frame header in ``buf``, or None."""
    if buf[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in _JPEG_SOF_MARKERS:
            if i + 9 > n:
                return None
            precision, height, width = struct.unpack(">BHH", buf[i + 4 : i + 9])
            components = buf[i + 9] if i + 9 < n else 0
            return (marker, precision, width, height, components) if width and height else None
        i += 2 + int.from_bytes(buf[i + 2 : i + 4], "big")
    return None


def jpeg_header_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame header, or None when not found (not a JPEG, or damaged)."""
    frame = _jpeg_frame(bytes(data[: 1 << 16]) if isinstance(data, np.ndarray) else data[: 1 << 16])
    return None if frame is None else frame[2:4]


def _read_at(file, offset: int, size: int, length: int) -> bytes | None:
    """``size`` bytes of ``file`` at ``offset``, or None when they are not all there (``length``: the file's)."""
    if offset < 0 or size < 0 or offset + size > length:
        return None
    file.seek(offset)
    return file.read(size)


def _png_size(file, head: bytes, length: int) -> tuple[int, int] | None:
    if head[8:16] != b"\x00\x00\x00\x0dIHDR" or len(head) < 33:
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if (zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big") or depth not in _PNG_DEPTHS.get(colour, ())
            or compression or filtering or interlace > 1):
        return None
    return (width, height) if _read_at(file, length - 12, 12, length) == _PNG_IEND else None


def _jpeg_size(file, head: bytes, length: int) -> tuple[int, int] | None:
    frame = _jpeg_frame(head)
    if frame is None or frame[0] not in _JPEG_DECODED_SOF or frame[1] != 8 or frame[4] not in (1, 3):
        return None
    return frame[2:4] if _read_at(file, length - 2, 2, length) == b"\xff\xd9" else None


def _bmp_size(file, head: bytes, length: int) -> tuple[int, int] | None:
    if len(head) < 34 or int.from_bytes(head[14:18], "little") not in _BMP_HEADERS:
        return None
    (offset,) = struct.unpack("<I", head[10:14])
    width, height, planes, bits, compression = struct.unpack("<iiHHI", head[18:34])
    if (width <= 0 or height == 0 or planes != 1 or bits not in (1, 4, 8, 24, 32)
            or compression not in ((0, 3) if bits == 32 else (0,))):  # 3: BI_BITFIELDS, as OpenCV writes BGRA
        return None
    stride = (width * bits + 31) // 32 * 4  # rows are padded to 4 bytes
    return (width, abs(height)) if offset + stride * abs(height) <= length else None  # negative height: top-down


def _tiff_size(file, head: bytes, length: int) -> tuple[int, int] | None:
    """The first page's size (OpenCV reads the first page), when its strips or tiles all lie inside the file."""
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    count = _read_at(file, ifd, 2, length)
    if count is None:
        return None
    (n,) = struct.unpack(order + "H", count)
    entries = _read_at(file, ifd + 2, 12 * n, length)
    if entries is None:
        return None
    fields: dict[int, tuple[int, ...]] = {}
    for k in range(n):
        tag, kind, number, value = struct.unpack(order + "HHI4s", entries[12 * k : 12 * k + 12])
        code = _TIFF_TYPES.get(kind)
        if code is None or tag in fields:
            continue
        size = struct.calcsize(code) * number
        raw = value if size <= 4 else _read_at(file, struct.unpack(order + "I", value)[0], size, length)
        if raw is None:
            return None
        fields[tag] = struct.unpack(f"{order}{number}{code}", raw[:size])
    (width,), (height,) = fields.get(256, (0,)), fields.get(257, (0,))
    bits, samples = fields.get(258, (1,)), fields.get(277, (1,))[0]
    if (not width or not height or samples not in (1, 3, 4) or len(set(bits)) != 1 or bits[0] not in (8, 16)
            or fields.get(259, (1,))[0] not in _TIFF_COMPRESSIONS or fields.get(284, (1,))[0] != 1
            or fields.get(262, (None,))[0] != (1 if samples == 1 else 2)):
        return None
    offsets, counts = (fields.get(273), fields.get(279)) if 273 in fields else (fields.get(324), fields.get(325))
    if not offsets or not counts or len(offsets) != len(counts) or not all(counts):
        return None
    return (width, height) if max(o + c for o, c in zip(offsets, counts)) <= length else None


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image file read from its header, without decoding pixels: for a PNG, JPEG, BMP or
    (first page of a) TIFF in a variant OpenCV decodes, whose end is where its header says (a truncated file is
    not vouched for). None otherwise: decode the file to know (:func:`probe_image`). Raises OSError when the
    file cannot be read."""
    with open(path, "rb") as file:
        head = file.read(1 << 16)
        length = file.seek(0, os.SEEK_END)
        if head.startswith(_PNG_SIGNATURE):
            reader = _png_size
        elif head[:3] == b"\xff\xd8\xff":
            reader = _jpeg_size
        elif head[:2] == b"BM":
            reader = _bmp_size
        elif head[:4] in (b"II*\x00", b"MM\x00*"):
            reader = _tiff_size
        else:
            return None
        try:
            size = reader(file, head, length)
        except (struct.error, ValueError):  # a field of an unexpected length or count: not a file to vouch for
            return None
    if size is None or not 0 < size[0] <= _MAX_SIDE or not 0 < size[1] <= _MAX_SIDE or size[0] * size[1] > _MAX_PIXELS:
        return None
    return int(size[0]), int(size[1])


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file after checking that it decodes. Raises ValueError when it does not."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ValueError("empty file")
    header = jpeg_header_size(data)
    if header is not None:
        small = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION)  # as data.io
        if small is None:
            raise ValueError("cannot decode image")
        width, height = header
        if small.shape[:2] == (math.ceil(height / 8), math.ceil(width / 8)):
            return header
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("cannot decode image")
    return int(image.shape[1]), int(image.shape[0])


def probe_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header (:func:`header_size`), or, when the header cannot vouch for
    the file, from decoding it (:func:`probe_image`, whose errors it raises)."""
    try:
        size = header_size(path)
    except OSError:
        size = None  # probe_image reports it as it always has
    return size or probe_image(path)


def _probe_all(probe, paths: Sequence[Path], workers: int | None) -> dict[Path, tuple[int, int] | str]:
    def one(path: Path) -> tuple[int, int] | str:
        try:
            return probe(path)
        except (ValueError, OSError, cv2.error) as err:
            return str(err) or type(err).__name__

    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 2:
        return {path: one(path) for path in paths}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(one, paths)))


def probe_images(paths: Sequence[Path], *, workers: int | None = None) -> dict[Path, tuple[int, int] | str]:
    """Probe many files in parallel: path -> (width, height), or the error message when it does not decode."""
    return _probe_all(probe_image, paths, workers)


def probe_sizes(paths: Sequence[Path], *, workers: int | None = None) -> dict[Path, tuple[int, int] | str]:
    """Sizes of many files as :func:`probe_images` gives them (the same errors for a file that does not decode),
    read from their headers where :func:`header_size` can, decoding only the others."""
    return _probe_all(probe_size, paths, workers)
