"""Reader for the M3FD detection dataset in its native layout, with validation and scene-preserving splits.

Layout (TarDAL, CVPR 2022)::

    ROOT/Ir/<id>.<ext>          infrared, 1- or 3-channel, 8- or 16-bit (any extension in data.io.IMAGE_EXTENSIONS;
                                data.io.read_ir documents the 16-bit rule)
    ROOT/Vis/<id>.<ext>         visible, colour or grey
    ROOT/Annotation/<id>.xml    Pascal VOC, 1-based inclusive pixel boxes, classes data.types.CLASS_NAMES
    ROOT/meta/                  optional: train.txt, val.txt, test.txt (one id per line), scenario.json,
                                <scenario>.txt and <scenario>_<split>.txt id lists

:func:`load_m3fd` reads and validates everything up front and raises one :class:`data.errors.DatasetError`
naming every offending file: partners missing on either side (or a missing annotation), images that do not
decode, infrared/visible size mismatches, annotations that do not parse, unknown class names, an annotation
size that disagrees with the image, absurd boxes, split lists naming ids that do not exist, or one id in two
split lists.

Boxes a pixel or two outside the image (up to :data:`BOX_CLIP_TOLERANCE_PX`, e.g. a 0-based ``xmin = 0`` or
``xmax = width + 1``) are clipped to the image. That is reported with Python's ``warnings`` module
(category :class:`DatasetWarning`, one warning per load listing every clipped box) so tests and callers can
capture or escalate it (``warnings.simplefilter("error", DatasetWarning)``). Images that are in no split list
are reported the same way, with a count.

Splits (see :mod:`data.splits`): the ``meta/{train,val,test}.txt`` lists as given; else the per-scenario
``meta/<scenario>_<split>.txt`` lists united; else a seeded split that keeps every scene of
``meta/scenario.json`` whole (stratified by scenario); else contiguous id blocks. ``split_info["method"]``
says which (``"meta-lists"``, ``"scenario-scenes"``, ``"id-blocks"``).

CLI: ``python -m data.m3fd --root DIR --summary`` prints images and boxes per class per split and per scenario,
and whether any scene crosses splits.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DatasetError, DatasetWarning
from .io import IMAGE_EXTENSIONS, atomic_write_json
from .paired import check_image_groups, images_by_stem  # the paired reader's stem and image rules
from .splits import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FRACTIONS,
    DEFAULT_MAX_GAP,
    SPLIT_NAMES,
    adjacent_frames_split_apart,
    check_fractions,
    frame_number,
    id_blocks,
    labels_crossing_splits,
    parse_scenario_json,
    scene_groups,
    split_ids,
    split_of,
)
from .types import CLASS_NAMES, Annotation, Box, Pair

IR_DIR, VIS_DIR, ANNOTATION_DIR, META_DIR = "Ir", "Vis", "Annotation", "meta"
# M3FD's four scenarios, in the order its paper reports them (scenario.json may add others; they are accepted).
M3FD_SCENARIOS: tuple[str, ...] = ("daytime", "night", "overcast", "challenge")
# A box coordinate at most this many pixels outside 1..width (1..height) is clipped with a warning; further
# out it is an error. Two pixels covers 0-based/1-based confusion and an inclusive/exclusive max.
BOX_CLIP_TOLERANCE_PX = 2.0
# How many clipped boxes a warning lists before it only counts the rest.
_MAX_LISTED = 20


def is_m3fd_root(root: str | Path) -> bool:
    """True when ``root`` has the ``Ir/``, ``Vis/`` and ``Annotation/`` folders of M3FD's native layout."""
    root = Path(root)
    return all((root / name).is_dir() for name in (IR_DIR, VIS_DIR, ANNOTATION_DIR))


# ----------------------------------------------------------------------------------------------- annotations


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


def check_annotation(
    raw: Annotation,
    image_size: tuple[int, int] | None,
    path: Path,
    *,
    tolerance: float = BOX_CLIP_TOLERANCE_PX,
) -> tuple[Annotation, list[str], list[str]]:
    """Check a parsed annotation against its image; returns (validated annotation, problems, clip notes).

    Args:
        raw: from :func:`read_voc`.
        image_size: (width, height) of the image, or None when images were not decoded (the declared size is
            used then, and box ranges are not checked when there is none).
        path: the annotation file, named in every message.
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
        if box.name not in CLASS_NAMES:
            problems.append(f"{path}: object #{k + 1} has unknown class '{box.name}' (known: {', '.join(CLASS_NAMES)})")
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


# ------------------------------------------------------------------------------------------------------ meta


@dataclass
class _Meta:
    """What ``ROOT/meta`` says, restricted to the dataset's ids."""

    split_lists: dict[str, list[str]] | None = None
    split_sources: list[str] = field(default_factory=list)
    scenario: dict[str, str] = field(default_factory=dict)
    scene: dict[str, str] = field(default_factory=dict)
    scene_group: dict[str, str] = field(default_factory=dict)
    scenario_sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def _read_meta(root: Path, ids: Sequence[str], problems: list[str]) -> _Meta:
    """Scenarios, scenes and split lists from ``ROOT/meta``; problems are appended, oddities go to ``notes``."""
    meta_dir = root / META_DIR
    meta = _Meta()
    if not meta_dir.is_dir():
        return meta
    scenario_names = set(M3FD_SCENARIOS)
    if (meta_dir / "scenario.json").is_file():
        scenario_names |= _read_scenario_json(meta_dir / "scenario.json", ids, meta, problems)
    split_files, scenario_files = _classify_lists(meta_dir, scenario_names, meta.notes)
    known = set(ids)
    if any(split_files.values()):
        meta.split_lists = _read_split_lists(split_files, known, problems)
        meta.split_sources = [p.name for files in split_files.values() for p in files]
    conflicts = 0
    for scenario, path in scenario_files:
        meta.scenario_sources.append(path.name)
        for image_id in known.intersection(_read_lists([path], problems)):  # a list may cover more than is present
            if meta.scenario.setdefault(image_id, scenario) != scenario:
                conflicts += 1
    if conflicts:
        meta.notes.append(
            f"{meta_dir}: {conflicts} id(s) get different scenarios from different meta files; "
            "scenario.json wins, then the lists in name order"
        )
    return meta


def _read_scenario_json(path: Path, ids: Sequence[str], meta: _Meta, problems: list[str]) -> set[str]:
    """Fill ``meta`` with each id's scenario and scene from ``scenario.json``; returns the scenario names."""
    try:
        table = parse_scenario_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        problems.append(f"{path}: {err}")
        return set()
    meta.scene_group = dict(table.group)
    for image_id in ids:
        frame = frame_number(image_id)
        if frame is not None and frame in table.scene:
            meta.scenario[image_id] = table.scenario[frame]
            meta.scene[image_id] = table.scene[frame]
    meta.scenario_sources.append(path.name)
    return set(table.scenario.values())


def _classify_lists(meta_dir: Path, scenario_names: set[str], notes: list[str]) -> tuple[dict[str, list[Path]], list[tuple[str, Path]]]:
    """(split -> the list files that define it, [(scenario, list file)]). ``train.txt`` & co. define the splits
    when any of them exists, otherwise the ``<scenario>_<split>.txt`` files do; both kinds name scenarios."""
    plain: dict[str, list[Path]] = {name: [] for name in SPLIT_NAMES}
    per_scenario: dict[str, list[Path]] = {name: [] for name in SPLIT_NAMES}
    scenario_files: list[tuple[str, Path]] = []
    split_suffix = re.compile(rf"(.+)_({'|'.join(SPLIT_NAMES)})")
    for path in sorted(meta_dir.glob("*.txt")):
        match = split_suffix.fullmatch(path.stem)
        if path.stem in SPLIT_NAMES:
            plain[path.stem].append(path)
        elif match and match.group(1) in scenario_names:
            per_scenario[match.group(2)].append(path)
            scenario_files.append((match.group(1), path))
        elif path.stem in scenario_names:
            scenario_files.append((path.stem, path))
        else:
            notes.append(f"{path} ignored: neither a split list nor a list of a known scenario")
    return (plain if any(plain.values()) else per_scenario), scenario_files


def _read_lists(paths: Iterable[Path], problems: list[str]) -> list[str]:
    """The ids of several lists in order, without duplicates; an unreadable list is a problem and adds nothing."""
    ids: dict[str, None] = {}
    for path in paths:
        try:
            ids.update(dict.fromkeys(read_id_list(path)))
        except (ValueError, OSError) as err:
            problems.append(str(err) if str(path) in str(err) else f"{path}: {err}")
    return list(ids)


def _read_split_lists(split_files: dict[str, list[Path]], known: set[str], problems: list[str]) -> dict[str, list[str]]:
    """The ids of each split, in list order; listed ids that do not exist and ids in two splits are problems."""
    splits: dict[str, list[str]] = {}
    first_split: dict[str, str] = {}
    for name, files in split_files.items():
        splits[name] = _read_lists(files, problems)
        missing = [i for i in splits[name] if i not in known]
        if missing:
            problems.append(
                f"{' + '.join(map(str, files))} lists {len(missing)} id(s) with no complete Ir/Vis/Annotation "
                f"triple: {', '.join(missing)}"
            )
        for image_id in splits[name]:
            if first_split.setdefault(image_id, name) != name:
                problems.append(f"id {image_id} is in both the {first_split[image_id]} and the {name} split list")
    return splits


# --------------------------------------------------------------------------------------------------- dataset


class M3FDDataset:
    """A validated M3FD dataset: ids, paths, annotations, scenarios/scenes and the split. Build it with
    :func:`load_m3fd`.

    Attributes:
        root: the dataset folder.
        ids: sorted ids that have an IR image, a visible image and an annotation.
        splits: ``"train"``, ``"val"``, ``"test"`` -> ids.
        split_info: how the split was made: ``method`` (``"meta-lists"``, ``"scenario-scenes"``,
            ``"id-blocks"``), ``seed`` and ``fractions`` (None for given lists), and details.
    """

    def __init__(
        self,
        *,
        root: Path,
        ids: list[str],
        splits: dict[str, list[str]],
        split_info: dict,
        ir: dict[str, Path],
        vis: dict[str, Path],
        annotations: dict[str, Annotation],
        scenario: dict[str, str],
        scene: dict[str, str],
        groups: dict[str, str],
    ):
        self.root = root
        self.ids = ids
        self.splits = splits
        self.split_info = split_info
        self._ir = ir
        self._vis = vis
        self._annotations = annotations
        self._scenario = scenario
        self._scene = scene
        self._groups = groups
        self._split_of = split_of(splits)
        # The classes its annotations use, in label-index order: what the export, the detector and the report
        # name (M3FD's six; a loader of another dataset sets its own).
        self.class_names: tuple[str, ...] = CLASS_NAMES

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(ids)}" for name, ids in self.splits.items())
        return f"M3FDDataset({str(self.root)!r}, {len(self.ids)} images, {sizes}, method={self.split_info['method']!r})"

    def _check(self, image_id: str) -> None:
        if image_id not in self._annotations:
            raise KeyError(f"no image '{image_id}' in {self.root}")

    def _ids_of(self, split: str | None) -> list[str]:
        if split is None:
            return self.ids
        if split not in self.splits:
            raise KeyError(f"unknown split '{split}'; known: {', '.join(self.splits)}")
        return self.splits[split]

    def ir_path(self, image_id: str) -> Path:
        self._check(image_id)
        return self._ir[image_id]

    def vis_path(self, image_id: str) -> Path:
        self._check(image_id)
        return self._vis[image_id]

    def annotation(self, image_id: str) -> Annotation:
        """The validated annotation: known classes, boxes clipped into the image, width/height of the image."""
        self._check(image_id)
        return self._annotations[image_id]

    def annotations(self, split: str | None = None) -> dict[str, Annotation]:
        """id -> annotation for a split (all ids when None), in split order."""
        return {image_id: self._annotations[image_id] for image_id in self._ids_of(split)}

    def pairs(self, split: str | None = None) -> list[Pair]:
        """The (IR, visible) pairs of a split (all when None); ``meta`` holds ``scenario`` and ``scene``."""
        return [
            Pair(i, self._ir[i], self._vis[i], {"scenario": self._scenario.get(i), "scene": self._scene.get(i)})
            for i in self._ids_of(split)
        ]

    def scenario_of(self, image_id: str) -> str | None:
        """``daytime``/``night``/``overcast``/``challenge`` (as the meta files say), or None when unknown."""
        self._check(image_id)
        return self._scenario.get(image_id)

    def scene_of(self, image_id: str) -> str | None:
        """``"<scenario>/<scene>"`` from scenario.json (e.g. ``"night/alley"``), or None when unknown."""
        self._check(image_id)
        return self._scene.get(image_id)

    def split_of(self, image_id: str) -> str | None:
        """The split an id is in, or None when it is in none (given lists that leave it out)."""
        self._check(image_id)
        return self._split_of.get(image_id)

    def scenario_ids(self, split: str) -> dict[str, list[str]]:
        """scenario -> ids of that scenario within ``split``; only scenarios present, M3FD's order first."""
        found: dict[str, list[str]] = {}
        for image_id in self._ids_of(split):
            scenario = self._scenario.get(image_id)
            if scenario is not None:
                found.setdefault(scenario, []).append(image_id)
        return {name: found[name] for name in _scenario_order(found)}

    def write_split(self, path: Path) -> None:
        """Write ``split.json`` (atomically): ids per split, and the split/scenario/scene/group of each id,
        with the method, seed and fractions that made it."""
        atomic_write_json(
            path,
            {
                "dataset": str(self.root),
                "method": self.split_info["method"],
                "seed": self.split_info.get("seed"),
                "fractions": self.split_info.get("fractions"),
                "split_info": self.split_info,
                "splits": self.splits,
                "ids": {
                    i: {
                        "split": self._split_of.get(i),
                        "scenario": self._scenario.get(i),
                        "scene": self._scene.get(i),
                        "group": self._groups.get(i),
                    }
                    for i in self.ids
                },
            },
        )

    def summary(self) -> dict:
        """Images and boxes per class per split and per scenario, and the scene leakage check.

        Returns a JSON-ready dict: ``root``, ``method``, ``images``, ``boxes``, ``unassigned`` (images in no
        split), ``splits`` (split -> ``{"images", "boxes": {class: n}, "total_boxes"}``), ``scenarios``
        (split -> scenario -> the same), and ``leakage``: ``scenes_crossing_splits`` (scene -> splits),
        ``ok`` (no scene crosses splits), ``scenes_checked``, and ``adjacent_frames_split_apart``: consecutive
        frames in different splits with no known scene boundary between them (possible near-duplicates where
        scenario.json is silent, e.g. at a block cut of the id-block fallback).
        """

        def counts(ids: Iterable[str]) -> dict[str, Any]:
            ids = list(ids)
            per_class = Counter(b.name for i in ids for b in self._annotations[i].boxes)
            boxes = {name: per_class.get(name, 0) for name in CLASS_NAMES}
            return {"images": len(ids), "boxes": boxes, "total_boxes": sum(boxes.values())}

        crossing = labels_crossing_splits(self.splits, self._scene)
        adjacent = adjacent_frames_split_apart(self.splits, self._scene)
        return {
            "root": str(self.root),
            "method": self.split_info["method"],
            "images": len(self.ids),
            "boxes": sum(len(a.boxes) for a in self._annotations.values()),
            "unassigned": len(self.ids) - len(self._split_of),
            "splits": {name: counts(ids) for name, ids in self.splits.items()},
            "scenarios": {
                name: {scenario: counts(ids) for scenario, ids in self.scenario_ids(name).items()}
                for name in self.splits
            },
            "leakage": {
                "scenes_checked": len({s for s in self._scene.values()}),
                "scenes_crossing_splits": crossing,
                "adjacent_frames_split_apart": [list(p) for p in adjacent],
                "ok": not crossing,
            },
        }


def _scenario_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [n for n in M3FD_SCENARIOS if n in names] + sorted(names - set(M3FD_SCENARIOS))


def _warn(message: str, notes: Sequence[str]) -> None:
    """One DatasetWarning for the caller of load_m3fd, listing the first notes."""
    listed = "\n".join(f"  - {n}" for n in notes[:_MAX_LISTED])
    more = f"\n  ... and {len(notes) - _MAX_LISTED} more" if len(notes) > _MAX_LISTED else ""
    warnings.warn(f"{message}\n{listed}{more}", DatasetWarning, stacklevel=3)


def load_m3fd(
    root: str | Path,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    validate: bool = True,
) -> M3FDDataset:
    """Read and validate an M3FD-layout dataset and settle its split.

    Args:
        root: folder with ``Ir/``, ``Vis/``, ``Annotation/`` (and optionally ``meta/``).
        seed: seed of the split when the split is made here (no split lists in ``meta/``).
        fractions: target (train, val, test) shares of images for a split made here.
        block_size: frames per block for the id-block fallback (see :mod:`data.splits`).
        validate: decode every image to check it and compare IR/visible/annotation sizes (the default).
            False skips decoding (fast look at a trusted dataset): box ranges are then checked against the
            declared annotation size only.

    Raises:
        DatasetError: one error naming every problem found (see the module docstring).
        ValueError: bad ``fractions`` or ``block_size``.

    Warns:
        DatasetWarning: boxes clipped into the image; images in no split list; ignored meta files.
    """
    root = Path(root)
    fractions = check_fractions(fractions)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not is_m3fd_root(root):
        missing = [name for name in (IR_DIR, VIS_DIR, ANNOTATION_DIR) if not (root / name).is_dir()]
        raise DatasetError(str(root), [f"not an M3FD-layout folder: missing {', '.join(f'{m}/' for m in missing)}"])

    problems: list[str] = []
    ir = images_by_stem(root / IR_DIR, problems)
    vis = images_by_stem(root / VIS_DIR, problems)
    xml: dict[str, Path] = {}
    for path in sorted((root / ANNOTATION_DIR).iterdir()):
        if path.is_file() and path.suffix.lower() == ".xml":
            if path.stem in xml:  # e.g. 00001.xml and 00001.XML: which one holds the truth is not ours to guess
                problems.append(f"two annotation files for '{path.stem}': {xml[path.stem]} and {path}")
            xml.setdefault(path.stem, path)
    sides = ((IR_DIR, ir, "an image"), (VIS_DIR, vis, "an image"), (ANNOTATION_DIR, xml, "an .xml file"))
    for image_id in sorted(set(ir) | set(vis) | set(xml)):
        found = ", ".join(str(files[image_id]) for _, files, _ in sides if image_id in files)
        for folder, files, kind in sides:
            if image_id not in files:
                problems.append(f"missing {kind} for '{image_id}' in {root / folder}/ (found {found})")
    ids = sorted(set(ir) & set(vis) & set(xml))
    if not ids and not problems:
        problems.append(f"no complete Ir/Vis/Annotation triples in {root}")

    raw: dict[str, Annotation] = {}
    for image_id in ids:
        try:
            raw[image_id] = read_voc(xml[image_id], image_id)
        except (ValueError, OSError, OverflowError) as err:
            problems.append(f"{xml[image_id]}: {err}")

    sizes: dict[str, tuple[int, int]] = {}
    if validate:
        image_problems, sizes = check_image_groups([(i, (ir[i], vis[i])) for i in ids])
        problems.extend(image_problems)

    annotations: dict[str, Annotation] = {}
    clip_notes: list[str] = []
    for image_id, ann in raw.items():
        checked, box_problems, notes = check_annotation(ann, sizes.get(image_id), xml[image_id])
        problems.extend(box_problems)
        clip_notes.extend(notes)
        annotations[image_id] = checked

    meta = _read_meta(root, ids, problems)
    if problems:
        raise DatasetError(str(root), problems)
    splits, split_info, groups = _settle_split(root, ids, meta, seed=seed, fractions=fractions, block_size=block_size)
    assigned = split_of(splits)
    unlisted = [i for i in ids if i not in assigned]
    if clip_notes:
        _warn(f"{root}: {len(clip_notes)} box(es) up to {BOX_CLIP_TOLERANCE_PX:g} px outside the image were clipped", clip_notes)
    if unlisted:
        _warn(f"{root}: {len(unlisted)} image(s) are in no split list and are left out of every split", unlisted)
    for note in meta.notes:
        warnings.warn(note, DatasetWarning, stacklevel=2)
    return M3FDDataset(
        root=root,
        ids=ids,
        splits=splits,
        split_info=split_info,
        ir={i: ir[i] for i in ids},
        vis={i: vis[i] for i in ids},
        annotations=annotations,
        scenario=meta.scenario,
        scene=meta.scene,
        groups=groups,
    )


def _settle_split(
    root: Path, ids: list[str], meta: _Meta, *, seed: int, fractions: tuple[float, float, float], block_size: int
) -> tuple[dict[str, list[str]], dict, dict[str, str]]:
    """The split (given lists, or made here), its description for ``split_info``, and id -> split group."""
    if meta.split_lists is not None:
        splits = meta.split_lists
        info = {
            "method": "meta-lists",
            "seed": None,
            "fractions": None,
            "sources": meta.split_sources,
            "unassigned": len(ids) - len(split_of(splits)),
        }
        return splits, _with_achieved(info, splits), {i: meta.scene[i] for i in ids if i in meta.scene}

    if meta.scene:
        method = "scenario-scenes"
        groups = scene_groups(ids, meta.scene, merged=meta.scene_group, block_size=block_size, block_labels=meta.scenario)
    else:
        method = "id-blocks"
        groups = id_blocks(ids, block_size=block_size, labels=meta.scenario)
    try:
        splits = split_ids(ids, groups, fractions=fractions, seed=seed, strata=meta.scenario or None)
    except ValueError as err:
        raise DatasetError(str(root), [str(err)]) from None
    info = {
        "method": method,
        "seed": seed,
        "fractions": list(fractions),
        "block_size": block_size,
        "max_gap": DEFAULT_MAX_GAP,
        "stratified_by": "scenario" if meta.scenario else None,
        "scenario_sources": meta.scenario_sources,
        "groups": len(set(groups.values())),
        "ids_without_scene": sum(1 for i in ids if i not in meta.scene),
        "unassigned": 0,
    }
    return splits, _with_achieved(info, splits), groups


def _with_achieved(info: dict, splits: dict[str, list[str]]) -> dict:
    total = sum(len(v) for v in splits.values()) or 1
    info["achieved_fractions"] = {name: round(len(v) / total, 4) for name, v in splits.items()}
    return info


# ------------------------------------------------------------------------------------------------------- CLI


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def format_summary(summary: dict) -> str:
    """The summary of :meth:`M3FDDataset.summary` as readable tables."""
    headers = ["split", "images", *CLASS_NAMES, "boxes"]

    def row(label: str, c: dict) -> list:
        return [label, c["images"], *(c["boxes"][n] for n in CLASS_NAMES), c["total_boxes"]]

    out = [
        f"M3FD dataset {summary['root']}: {summary['images']} images, {summary['boxes']} boxes, "
        f"split method {summary['method']}"
        + (f", {summary['unassigned']} image(s) in no split" if summary["unassigned"] else ""),
        "",
        format_table(headers, [row(name, c) for name, c in summary["splits"].items()]),
    ]
    scenario_rows = [row(f"{name}/{sc}", c) for name, per in summary["scenarios"].items() for sc, c in per.items()]
    if scenario_rows:
        out += ["", "Per scenario:", format_table(["split/scenario", *headers[1:]], scenario_rows)]
    leak = summary["leakage"]
    out.append("")
    if leak["scenes_crossing_splits"]:
        out.append(f"Scene leakage: {len(leak['scenes_crossing_splits'])} scene(s) cross splits:")
        out += [f"  {scene}: {', '.join(splits)}" for scene, splits in leak["scenes_crossing_splits"].items()]
    elif leak["scenes_checked"]:
        out.append(f"Scene leakage: none (no scene crosses splits; {leak['scenes_checked']} scenes checked)")
    else:
        out.append("Scene leakage: no scene information (no meta/scenario.json or scenario lists)")
    adjacent = leak["adjacent_frames_split_apart"]
    if adjacent:
        shown = ", ".join(f"{a}/{b}" for a, b in adjacent[:10]) + (" ..." if len(adjacent) > 10 else "")
        out.append(f"Adjacent frames in different splits with no known scene boundary: {len(adjacent)} ({shown})")
    else:
        out.append("Adjacent frames in different splits with no known scene boundary: none")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.m3fd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset folder with Ir/, Vis/, Annotation/")
    parser.add_argument("--summary", action="store_true", help="print images and boxes per split and scenario")
    parser.add_argument("--seed", type=int, default=0, help="split seed when no split lists are given")
    parser.add_argument("--fractions", type=float, nargs=3, default=DEFAULT_FRACTIONS, metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="frames per block (id-block fallback)")
    parser.add_argument("--no-validate", action="store_true", help="skip decoding images")
    parser.add_argument("--write-split", type=Path, metavar="SPLIT_JSON", help="write the split as JSON")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the summary as JSON")
    args = parser.parse_args(argv)
    outputs = [p for p in (args.write_split, args.json) if p is not None]
    unwritable = [f"cannot write {p}: its folder {p.parent} does not exist or is not a folder" for p in outputs
                  if not p.parent.is_dir()] + [f"cannot write {p}: it is a folder" for p in outputs if p.is_dir()]
    if unwritable:  # checked before the dataset is read, so that nothing is half written
        parser.exit(2, "error: " + "; ".join(unwritable) + "\n")
    try:
        dataset = load_m3fd(
            args.root, seed=args.seed, fractions=tuple(args.fractions), block_size=args.block_size, validate=not args.no_validate
        )
    except DatasetError as err:
        print(err, file=sys.stderr)
        return 2
    except ValueError as err:  # --fractions or --block-size out of range
        parser.exit(2, f"error: {err}\n")
    summary = dataset.summary()
    if args.summary:
        print(format_summary(summary))
    else:
        print(repr(dataset))
    try:
        if args.write_split:
            dataset.write_split(args.write_split)
        if args.json:
            atomic_write_json(args.json, summary)
    except OSError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
