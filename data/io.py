"""Image reading and atomic file writing.

Reading conventions
-------------------
* ``read_gray_reference`` reproduces the field's reference evaluator (CDDFuse ``utils/Evaluator.py``,
  ``image_read_cv2(path, 'GRAY')``): ``cv2.imread`` default flag (3-channel BGR, 8-bit), cast to float32,
  OpenCV BGR->GRAY on the float array, ``np.round`` (half to even). Fusion metrics read images this way so
  their numbers are comparable with published tables.
* ``read_ir`` gives the infrared image as uint8 (H, W). 1- or 3-channel files are accepted (3-channel IR is
  reduced to its luma as above). **16-bit rule:** 16-bit files are reduced to 8 bits by keeping the upper byte
  (``v >> 8``), exactly what ``cv2.imread`` does, so the image fused is the image the reference evaluator scores.
* ``read_visible`` gives (luma float32 (H, W) in 0..255, BGR uint8 (H, W, 3) or None for a grey image).
  The luma is ITU-R BT.601 Y = 0.299 R + 0.587 G + 0.114 B (OpenCV's BGR->GRAY / the Y of YCbCr).
* Inside ``decoding_once()`` a thread decodes each file once: one sample's sources, read by a fuser and then by the
  metrics, cost one decode each.

Writing
-------
Everything the project writes goes to a temporary sibling first and is renamed into place, so an interrupted
run never leaves a half-written file that a later run mistakes for a finished one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished files get the permissions open() would give them.
_FILE_MODE = 0o666 & ~_read_umask()

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


# Every reader (and data.probe) decodes the stored pixel grid and ignores an EXIF orientation tag: infrared and
# visible frames are registered pixel for pixel as stored, and a tag on one side only would silently turn a
# registered pair into a mismatched one. (The reference evaluator's cv2.imread would apply the tag.)
_IGNORE_ORIENTATION = cv2.IMREAD_IGNORE_ORIENTATION


# The decodes a thread keeps inside ``decoding_once``: {(path, flags): image}, or None outside any block.
_KEPT = threading.local()


@contextlib.contextmanager
def decoding_once() -> Iterator[None]:
    """Within the block, this thread decodes each file once per decoding mode: reading it again (through any reader
    here) returns the first decode, read-only, so no reader's caller can change what the next one gets. Every
    decode is held until the block ends: keep it to what is needed at once (one sample's files). A nested block
    shares the outer one's decodes."""
    outer = getattr(_KEPT, "images", None)
    _KEPT.images = {} if outer is None else outer
    try:
        yield
    finally:
        _KEPT.images = outer


def _imread(path: Path, flags: int) -> np.ndarray:
    kept = getattr(_KEPT, "images", None)
    key = (str(path), flags)
    if kept is not None and key in kept:
        return kept[key]
    # cv2.imread does not understand non-ASCII paths on every platform; imdecode on the bytes always works.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flags | _IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image: {path}")
    if kept is not None:
        image.flags.writeable = False
        kept[key] = image
    return image


def read_gray_reference(path: str | Path) -> np.ndarray:
    """Read an image as the reference evaluator does (BGR 8-bit, float32 BGR->GRAY, rounded half to even), except
    that an EXIF orientation tag is ignored (see ``_imread``). Returns float32 (H, W) of whole numbers 0..255."""
    return gray_reference(_imread(Path(path), cv2.IMREAD_COLOR))


def luma(bgr: np.ndarray) -> np.ndarray:
    """BT.601 luma of a BGR image (uint8 or float), as float32 (H, W), not rounded."""
    return cv2.cvtColor(bgr.astype(np.float32, copy=False), cv2.COLOR_BGR2GRAY)


def gray_reference(bgr: np.ndarray) -> np.ndarray:
    """A decoded BGR image (e.g. a video frame) as ``read_gray_reference`` returns a file: its float32 luma rounded
    half to even, whole numbers 0..255 (H, W)."""
    return np.round(luma(bgr))


def gray_reference_of(image: np.ndarray) -> np.ndarray:
    """An 8-bit image in memory, grey (H, W) or BGR (H, W, 3), as ``read_gray_reference`` reads it back once
    written to a lossless file (PNG): a grey image is decoded as three equal channels, then reduced as any other.
    E.g. a fused image just written, scored without decoding it again."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an 8-bit grey or BGR image, got {image.dtype} of shape {image.shape}")
    return gray_reference(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))


def _is_grey(bgr: np.ndarray) -> bool:
    """A 3-channel image whose three channels are identical (a grey image stored as BGR)."""
    return np.array_equal(bgr[..., 0], bgr[..., 1]) and np.array_equal(bgr[..., 1], bgr[..., 2])


def visible_from_bgr(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A decoded BGR visible image (e.g. a video frame) as ``read_visible`` returns a file: (luma float32 (H, W),
    the BGR image, or None when its three channels are identical)."""
    if _is_grey(bgr):
        return bgr[..., 0].astype(np.float32), None
    return luma(bgr), bgr


def read_image(path: str | Path) -> np.ndarray:
    """An image file as stored (uint8/uint16, grey or BGR), e.g. a fused PNG to show next to others."""
    return _imread(Path(path), cv2.IMREAD_UNCHANGED)


def read_8bit(path: str | Path) -> np.ndarray:
    """An image as 8-bit grey (H, W) or BGR (H, W, 3), as OpenCV converts to 8 bits (16-bit: the upper byte;
    alpha dropped); a 3-channel file whose channels are identical is grey. E.g. another method's fused image."""
    bgr = _imread(Path(path), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[..., 0]) if _is_grey(bgr) else bgr


def read_ir(path: str | Path) -> np.ndarray:
    """Infrared image as uint8 (H, W); see the module docstring for the 3-channel and 16-bit rules."""
    return read_gray_reference(path).astype(np.uint8)


def read_visible(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Visible image as (luma float32 (H, W) in 0..255, BGR uint8 (H, W, 3) or None when the image is grey).

    A 3-channel file whose three channels are identical counts as grey.
    """
    return visible_from_bgr(_imread(Path(path), cv2.IMREAD_COLOR))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file; raises ValueError if it does not decode."""
    image = _imread(Path(path), cv2.IMREAD_UNCHANGED)
    return int(image.shape[1]), int(image.shape[0])


def restore_colour(fused_luma: np.ndarray, vis_bgr: np.ndarray | None) -> np.ndarray:
    """Turn a fused luma (float, 0..255 scale) into the 8-bit image to save.

    For a colour visible image the fused image keeps the visible chroma: in YCbCr only Y is replaced. Because
    R, G and B each depend on Y with coefficient 1 (BT.601), replacing Y is the same as adding
    (Y_fused - Y_visible) to every channel, which is what this does. Values are clipped to 0..255 and rounded,
    never min-max stretched.
    """
    fused_luma = np.asarray(fused_luma, dtype=np.float32)
    if vis_bgr is None:
        return np.clip(np.round(fused_luma), 0, 255).astype(np.uint8)
    delta = fused_luma - luma(vis_bgr)
    out = vis_bgr.astype(np.float32) + delta[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# Temporary files and folders are named ".<name>.<pid>.<random>.tmp[suffix]": hidden (readers skip dot-files), and
# a process killed with SIGKILL (no cleanup runs) leaves ones whose pid is gone, which ``remove_stale_temps`` sweeps.
_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp(\.[^.]*)?$")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files and folders a killed process left in ``folder`` (those of ``name`` only, when
    given): ones whose writer's pid is no longer running. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_PATTERN.match(entry.name)
        if not match or (name is not None and match["name"] != name) or _pid_alive(int(match["pid"])):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def remove_stale_temps_tree(root: str | Path) -> list[Path]:
    """``remove_stale_temps`` in ``root`` and every folder below it: what writers killed anywhere in a run's output
    left behind (a plot, a report file, a stage record, a TensorBoard summary, a cache folder)."""
    removed = []
    for folder, dirs, _ in os.walk(root):
        removed += remove_stale_temps(folder)
        dirs[:] = [d for d in dirs if not _TEMP_PATTERN.match(d)]  # a live writer's temporary: not ours to look in
    return removed


def clear_dir(path: str | Path) -> None:
    """Remove a folder so that it is either whole or gone, never half-deleted: it is first renamed to a temporary
    name (one rename), then deleted; a process killed during the deletion leaves a dead writer's temporary, which
    ``remove_stale_temps`` sweeps. ``--force`` clears finished work this way before redoing it."""
    path = Path(path)
    if not path.exists():
        return
    aside = path.with_name(f"{_temp_prefix(path)}{uuid.uuid4().hex[:8]}.tmp")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode ``image`` (uint8, grey or BGR) by the file's extension and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode image for {path}")
    atomic_write_bytes(path, buf.tobytes())


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move the finished directory ``src`` onto ``dst``, replacing any existing ``dst``.

    The old ``dst`` is first renamed aside (``.NAME.old``) and removed only once the new tree is in place; if that
    second rename fails, the old tree is put back. Between the two renames ``dst`` is briefly absent, never partial.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def write_record(path: str | Path, key: str, output: Any) -> None:
    """Record, atomically, ``output`` (plain JSON data) of the work with input key ``key``.

    The one record format of the keyed store (``data.store``), ``{"key": ..., "output": ...}``: a pipeline stage's
    result, a finished folder's record (a fused folder's, a detector run's result, an export's manifest) and the
    progress record of a folder being filled (its claim: a fuser marker, a detector run's "trained or not"). A
    finished work's record is written after its files are in place, so that it exists only for finished work.
    """
    atomic_write_json(path, {"key": key, "output": output})


def read_record(path: str | Path, key: str | None = None) -> Any | None:
    """The ``output`` of the record at ``path`` when it exists, parses and was written for ``key`` (for any key
    when ``key`` is None); None otherwise: missing, damaged and stale records all mean "not finished"."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "output" not in record or (key is not None and record.get("key") != key):
        return None
    return record["output"]


def record_key(path: str | Path) -> str | None:
    """The key a record at ``path`` was written for, or None when there is no readable record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record.get("key") if isinstance(record, dict) else None


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it onto ``path`` when the block succeeds.

    An existing ``path`` is replaced. On error the temporary directory is removed and ``path`` is untouched; one
    left by a killed process is removed by the next build of the same ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)  # what an earlier, killed build of the same folder left behind
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
