"""Video sources, checked and read: a video file (anything ``cv2.VideoCapture`` reads) or a folder of frames.

``probe_stream(path, problems)`` checks one source and returns a ``Stream`` (its frame count, frame size, frame rate
and, for a folder, its frame files in sorted stem order, ``data.paired.images_by_stem``), or appends every problem
and returns None: a missing path, a video that does not open or decode or records no frame count or rate, an empty
folder, unreadable frames, frames of differing sizes. A video is checked from its container and its first decoded
frame; a frame folder has every frame decoded (``data.probe``). ``Stream.read()`` yields the frames as BGR uint8,
one decoded at a time, and raises ``VideoStreamError`` when a source breaks midway (a video that ends before its
declared frame count, a frame that no longer decodes).

Every reader of streams goes through here: streaming fusion (``streaming``), the temporal metrics' command
(``temporal``) and the sudden-change report (``sudden_change``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.paired import images_by_stem
from data.probe import probe_images


class VideoStreamError(ValueError):
    """A stream broke while being read (a video that ends before its declared frame count, a frame that no longer
    decodes); streaming fusion then writes nothing."""


def _read_bgr(path: Path) -> np.ndarray:
    """A frame file as data.io reads images for fusing: IMREAD_COLOR (16-bit: the upper byte), EXIF orientation
    ignored, decoded from the bytes (non-ASCII paths)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise VideoStreamError(f"cannot decode frame {path}")
    return image


@dataclass(frozen=True)
class Stream:
    """One checked source: where it is, how many frames of which size at which rate, and how to read them."""

    path: Path
    kind: str  # "video" or "frames"
    frames: int
    size: tuple[int, int]  # (width, height)
    fps: float | None  # None for a frame folder until the pairing gives it one
    files: tuple[Path, ...] = ()  # a frame folder's files, in order

    def names(self) -> list[str]:
        """Output frame names: a folder's stems, else the zero-padded index."""
        return [p.stem for p in self.files] if self.files else [f"{i:06d}" for i in range(self.frames)]

    def read(self) -> Iterator[np.ndarray]:
        """The frames in order, as BGR uint8 (H, W, 3); one decoded at a time."""
        if self.kind == "frames":
            yield from (_read_bgr(path) for path in self.files)
            return
        capture = cv2.VideoCapture(str(self.path))
        try:
            for index in range(self.frames):
                ok, frame = capture.read()
                if not ok:
                    raise VideoStreamError(f"{self.path} ended after {index} of its {self.frames} declared frames")
                yield frame
        finally:
            capture.release()


def _probe_video(path: Path, problems: list[str]) -> Stream | None:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            problems.append(f"cannot open {path} as a video (not a format this OpenCV reads, or damaged)")
            return None
        ok, first = capture.read()
        if not ok or first is None:
            problems.append(f"{path} opens as a video but no frame decodes")
            return None
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    if count <= 0:
        problems.append(f"{path} records no frame count (a live stream?); remux it into a file")
        return None
    if not (math.isfinite(fps) and fps > 0):
        problems.append(f"{path} records no frame rate")
        return None
    return Stream(path, "video", count, (int(first.shape[1]), int(first.shape[0])), fps)


def _probe_folder(path: Path, problems: list[str]) -> Stream | None:
    files = [file for _, file in sorted(images_by_stem(path, problems).items())]  # stem order, whatever the suffix
    if not files:
        problems.append(f"no image frames in {path}")
        return None
    sizes = probe_images(files)
    bad = [f"unreadable frame {p}: {s}" for p, s in sizes.items() if isinstance(s, str)]
    problems.extend(bad)
    distinct = sorted({s for s in sizes.values() if isinstance(s, tuple)})
    if len(distinct) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in distinct)
        problems.append(f"frames of {path} differ in size ({listed}): a stream has one frame size")
    if bad or len(distinct) != 1:
        return None
    return Stream(path, "frames", len(files), distinct[0], None, tuple(files))


def probe_stream(path: str | Path, problems: list[str]) -> Stream | None:
    """Check one source; appends its problems and returns None when it cannot be streamed."""
    path = Path(path)
    if path.is_dir():
        return _probe_folder(path, problems)
    if path.is_file():
        return _probe_video(path, problems)
    problems.append(f"source does not exist: {path}")
    return None
