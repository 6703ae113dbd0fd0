"""data.probe's header reader: the size every format the datasets use says in its header is the size OpenCV decodes,
nothing is decoded to learn it, and a file the header cannot vouch for (truncated, another format, an unusual
variant) is decoded, so it fails or passes with the message decoding always gave."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.probe import header_size, probe_images, probe_sizes

W, H = 101, 77  # odd sizes: BMP rows padded, JPEG blocks and TIFF strips partial
_RNG = np.random.default_rng(0)
COLOUR8 = _RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
COLOUR16 = _RNG.integers(0, 1 << 16, (H, W, 3), dtype=np.uint16)
BGRA8 = _RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
GREY8, GREY16 = COLOUR8[..., 0].copy(), COLOUR16[..., 0].copy()
PROGRESSIVE = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]

# name -> (image, imwrite flags): every format and depth the dataset readers meet, as OpenCV writes them.
WRITTEN = {
    "grey8.png": (GREY8, []), "colour8.png": (COLOUR8, []), "grey16.png": (GREY16, []),
    "colour16.png": (COLOUR16, []), "bgra8.png": (BGRA8, []),
    "colour.jpg": (COLOUR8, []), "grey.jpg": (GREY8, []), "progressive.jpg": (COLOUR8, PROGRESSIVE),
    "grey_progressive.jpeg": (GREY8, PROGRESSIVE),
    "colour.bmp": (COLOUR8, []), "grey.bmp": (GREY8, []), "bgra.bmp": (BGRA8, []),
    "colour8.tif": (COLOUR8, []), "grey8.tif": (GREY8, []), "grey16.tif": (GREY16, []),
    "colour16.tif": (COLOUR16, []), "bgra8.tif": (BGRA8, []),
    "uncompressed.tiff": (COLOUR8, [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def palette_png(path: Path) -> Path:
    """An 8-bit palette PNG (colour type 3; OpenCV writes none), ``W`` x ``H``."""
    rows = b"".join(b"\x00" + bytes(GREY8[r] % 16) for r in range(H))
    palette = bytes(v for i in range(16) for v in (i * 16, 255 - i * 16, i * 8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 3, 0, 0, 0))
                     + _chunk(b"PLTE", palette) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    return path


def big_endian_tiff(path: Path) -> Path:
    """An uncompressed 8-bit grey TIFF in Motorola byte order (OpenCV writes Intel order), one strip."""
    pixels = GREY8.tobytes()
    fields = [(256, 3, W), (257, 3, H), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
              (278, 3, H), (279, 4, len(pixels))]
    ifd_size = 2 + 12 * len(fields) + 4
    entries = b"".join(struct.pack(">HHI", tag, kind, 1) + (struct.pack(">HH", value, 0) if kind == 3 else
                                                          struct.pack(">I", 8 + ifd_size if tag == 273 else value))
                       for tag, kind, value in fields)
    path.write_bytes(b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", len(fields)) + entries + b"\x00" * 4
                     + pixels)
    return path


def top_down_bmp(path: Path) -> Path:
    """OpenCV's colour BMP rewritten top-down (negative height, rows in reading order)."""
    cv2.imwrite(str(path), COLOUR8)
    data = bytearray(path.read_bytes())
    offset, stride = struct.unpack("<I", data[10:14])[0], (W * 3 + 3) // 4 * 4
    rows = [data[offset + r * stride: offset + (r + 1) * stride] for r in range(H)]
    data[22:26] = struct.pack("<i", -H)
    data[offset:] = b"".join(reversed(rows))
    path.write_bytes(bytes(data))
    return path


def jpeg_with_orientation(path: Path) -> Path:
    """A JPEG whose EXIF says 'rotate 90°': the readers ignore it, so the stored size is the size."""
    _, encoded = cv2.imencode(".jpg", COLOUR8)
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    path.write_bytes(b"\xff\xd8\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + encoded.tobytes()[2:])
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("formats")
    paths = []
    for name, (image, flags) in WRITTEN.items():
        assert cv2.imwrite(str(folder / name), image, flags), name
        paths.append(folder / name)
    assert cv2.imwritemulti(str(folder / "pages.tif"), [GREY8, GREY8[:50, :60], GREY8])  # OpenCV reads page 1
    paths += [folder / "pages.tif", palette_png(folder / "palette.png"), big_endian_tiff(folder / "motorola.tif"),
              top_down_bmp(folder / "top_down.bmp"), jpeg_with_orientation(folder / "exif_rotated.jpg")]
    return paths


def _decoded_size(path: Path) -> tuple[int, int]:
    image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    assert image is not None, path
    return image.shape[1], image.shape[0]


@pytest.fixture
def imdecodes(monkeypatch) -> list[int]:
    """Every cv2.imdecode call of this process, counted (one entry per call)."""
    calls: list[int] = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


def test_header_sizes_are_the_decoded_sizes_of_every_format(images, imdecodes):
    sizes = {path.name: header_size(path) for path in images}
    assert not imdecodes, "read from the headers"
    assert sizes == {path.name: _decoded_size(path) for path in images}
    assert set(sizes.values()) == {(W, H)}
    assert probe_sizes(images) == probe_images(images)


@pytest.mark.parametrize("cut", ["1 byte", "12 bytes", "half"])
def test_a_truncated_file_is_decoded_and_reported_as_before(images, tmp_path, cut):
    """The header cannot vouch for a truncated file, so it is decoded: the same verdict as decoding it always was
    (OpenCV rejects every truncated file here, except a TIFF whose lost bytes held no pixel of its first page)."""
    truncated = []
    for path in images:
        data = path.read_bytes()
        keep = {"1 byte": len(data) - 1, "12 bytes": len(data) - 12, "half": len(data) // 2}[cut]
        (tmp_path / path.name).write_bytes(data[:keep])
        truncated.append(tmp_path / path.name)
    decoded = probe_images(truncated)
    assert probe_sizes(truncated) == decoded
    unreadable = {path.name for path in truncated if isinstance(decoded[path], str)}
    assert unreadable >= {path.name for path in truncated if path.suffix != ".tif"}
    assert all(header_size(path) is None for path in truncated if path.name in unreadable)
    assert {decoded[path] for path in truncated if path.name in unreadable} == {"cannot decode image"}


def test_what_the_header_cannot_vouch_for_is_decoded(tmp_path, imdecodes):
    """Another format (WebP), data after a JPEG's end, an empty, garbled or missing file: decoded, each with the
    answer or the message of decoding it."""
    webp, trailing = tmp_path / "a.webp", tmp_path / "trailing.jpg"
    cv2.imwrite(str(webp), COLOUR8)
    _, encoded = cv2.imencode(".jpg", COLOUR8)
    trailing.write_bytes(encoded.tobytes() + b"camera maker's trailer")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbled.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")
    paths = [webp, trailing, tmp_path / "empty.png", tmp_path / "garbled.png", tmp_path / "missing.png"]
    assert [header_size(p) for p in paths[:4]] == [None] * 4 and not imdecodes
    sizes = probe_sizes(paths, workers=1)
    assert len(imdecodes) == 3  # WebP, the JPEG (at 1/8, its header cross-checked) and the garbled file
    assert sizes == probe_images(paths, workers=1)
    assert [sizes[p] for p in paths[:4]] == [(W, H), (W, H), "empty file", "cannot decode image"]
    assert "No such file" in sizes[paths[4]]
