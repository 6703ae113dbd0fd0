"""Label files and id lists as every reader reads them: Pascal VOC XML, YOLO txt, one-id-per-line lists, class
lists, and the one box rule (:func:`check_annotation`) that every reader and the detection export apply."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from ..io import IMAGE_EXTENSIONS
from ..types import Annotation, Box

# A box coordinate at most this many pixels outside 1..width (1..height) is clipped with a warning; further
# out it is an error. Two pixels covers 0-based/1-based confusion and an inclusive/exclusive max.
BOX_CLIP_TOLERANCE_PX = 2.0
LABEL_FORMATS: dict[str, str] = {".xml": "voc", ".txt": "yolo"}


def read_voc(path: str | Path, image_id: str | None = None) -> Annotation:
    """Parse a Pascal VOC annotation file as written, without checking it against the image.

    Returns an Annotation whose width/height are the declared ``<size>`` (0 when absent) and whose boxes are
    the raw 1-based coordinates (floats; class names not yet checked).

    Raises:
        ValueError: the XML does not parse, or an ``<object>`` lacks a name or a numeric coordinate.
    """
    path = Path(path)
    try:
        tree = ET.parse(path)
    except (ET.ParseError, LookupError, UnicodeError) as err:  # LookupError: an unknown declared encoding
        raise ValueError(f"XML does not parse ({err})") from None
    node = tree.getroot()

    def number(parent: ET.Element, tag: str, where: str) -> float:
        text = parent.findtext(tag)
        try:
            value = float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):  # 'nan' and 'inf' parse as floats but are no coordinates
            raise ValueError(f"{where}: <{tag}> is {text!r}, not a finite number")
        return value

    width = height = 0
    size = node.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        width, height = int(number(size, "width", "<size>")), int(number(size, "height", "<size>"))
    boxes = []
    for k, obj in enumerate(node.iter("object")):
        where = f"object #{k + 1}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"{where} has no <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{where} ('{name}') has no <bndbox>")
        coords = [number(bnd, tag, f"{where} ('{name}')") for tag in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(Box(name, *coords))
    return Annotation(image_id if image_id is not None else path.stem, width, height, tuple(boxes))


def read_yolo(path: str | Path, image_size: tuple[int, int], class_names: Sequence[str],
              image_id: str | None = None) -> Annotation:
    """Parse a YOLO label file (``class cx cy w h`` per line, normalised to 0..1) into VOC boxes for an image of
    ``image_size`` (width, height).

    The box spans the continuous interval ``[cx - w/2, cx + w/2] * W``, i.e. 1-based inclusive
    ``xmin = x0 + 1``, ``xmax = x1`` (the inverse of the detection export's conversion). Segment lines (more than
    five numbers) are not boxes and are an error.

    Raises:
        ValueError: naming every bad line (not five numbers, a class index outside the class list, w or h <= 0).
    """
    path = Path(path)
    width, height = image_size
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    boxes, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            values = []
        if len(values) != 5 or not all(math.isfinite(v) for v in values):
            bad.append(f"line {number} {line.strip()!r}: expected 'class cx cy w h'")
            continue
        index, cx, cy, w, h = values
        if index != int(index) or not 0 <= index < len(class_names):
            bad.append(f"line {number}: class index {fields[0]} is not in the class list (0..{len(class_names) - 1})")
            continue
        if w <= 0 or h <= 0:
            bad.append(f"line {number}: width and height must be positive, got {fields[3]} {fields[4]}")
            continue
        x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
        y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
        boxes.append(Box(class_names[int(index)], x0 + 1, y0 + 1, x1, y1))
    if bad:
        raise ValueError("; ".join(bad))
    return Annotation(image_id if image_id is not None else path.stem, width, height, tuple(boxes))


def check_annotation(
    raw: Annotation,
    image_size: tuple[int, int] | None,
    path: Path,
    *,
    class_names: Sequence[str] | None = None,
    tolerance: float = BOX_CLIP_TOLERANCE_PX,
) -> tuple[Annotation, list[str], list[str]]:
    """Check a parsed annotation against its image; returns (validated annotation, problems, clip notes).

    Args:
        raw: from :func:`read_voc` or :func:`read_yolo`.
        image_size: (width, height) of the image, or None when images were not decoded (the declared size is
            used then, and box ranges are not checked when there is none).
        path: the annotation file, named in every message.
        class_names: the dataset's classes; a box of another class is a problem. None leaves names unchecked
            (the caller checks them against its own list).
        tolerance: pixels a coordinate may lie outside 1..size and still be clipped rather than rejected.

    The validated annotation has the image's size and only boxes of known classes, clipped into the image.
    """
    problems: list[str] = []
    notes: list[str] = []
    declared = (raw.width, raw.height) if raw.width > 0 and raw.height > 0 else None
    if image_size is not None and declared is not None and declared != image_size:
        problems.append(
            f"{path}: declared size {declared[0]}x{declared[1]} but the image is {image_size[0]}x{image_size[1]}"
        )
    width, height = image_size or declared or (0, 0)
    boxes = []
    for k, box in enumerate(raw.boxes):
        where = f"{path}: object #{k + 1} '{box.name}' ({box.xmin:g}, {box.ymin:g}, {box.xmax:g}, {box.ymax:g})"
        if class_names is not None and box.name not in class_names:
            problems.append(f"{path}: object #{k + 1} has unknown class '{box.name}' (known: {', '.join(class_names)})")
            continue
        if box.xmin > box.xmax or box.ymin > box.ymax:
            problems.append(f"{where}: min > max")
            continue
        if width <= 0 or height <= 0:
            boxes.append(box)
            continue
        lo = 1 - tolerance
        if min(box.xmin, box.ymin) < lo or box.xmax > width + tolerance or box.ymax > height + tolerance:
            problems.append(f"{where}: outside the {width}x{height} image by more than {tolerance:g} px")
            continue
        if box.xmax < 1 or box.ymax < 1 or box.xmin > width or box.ymin > height:
            # within the tolerance but wholly off the image: clipping would invent a 1-pixel object
            problems.append(f"{where}: lies wholly outside the {width}x{height} image")
            continue
        clipped = Box(
            box.name,
            min(max(box.xmin, 1.0), width),
            min(max(box.ymin, 1.0), height),
            min(max(box.xmax, 1.0), width),
            min(max(box.ymax, 1.0), height),
        )
        if clipped != box:
            notes.append(f"{where} clipped to ({clipped.xmin:g}, {clipped.ymin:g}, {clipped.xmax:g}, {clipped.ymax:g})")
        boxes.append(clipped)
    return Annotation(raw.image_id, width, height, tuple(boxes)), problems, notes


def read_id_list(path: Path) -> list[str]:
    """Ids of a one-id-per-line list: blank lines and ``#`` comments skipped, file extensions and folders dropped,
    duplicates dropped (first kept).

    Raises:
        ValueError: the file is not UTF-8 text (e.g. saved as UTF-16).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    out: dict[str, None] = {}
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        name = Path(entry.replace("\\", "/"))
        out[name.stem if name.suffix.lower() in (*IMAGE_EXTENSIONS, ".xml") else name.name] = None
    return list(out)


def read_class_list(path: Path) -> tuple[str, ...]:
    """Class names, one per line in label-index order (``classes.txt``, YOLO's ``obj.names``); blank lines and
    ``#`` comments skipped.

    Raises:
        ValueError: not UTF-8, empty, or a name listed twice.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    twice = sorted({n for n in names if names.count(n) > 1})
    if not names:
        raise ValueError(f"{path}: no class names")
    if twice:
        raise ValueError(f"{path}: class(es) listed twice: {', '.join(twice)}")
    return tuple(names)
