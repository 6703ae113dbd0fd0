"""Export images + VOC annotations as an Ultralytics YOLO dataset, with COCO ground truth for pycocotools.

Layout written under ``out_dir`` (built in a temporary sibling folder and renamed into place)::

    data.yaml                    absolute paths; names 0..5 = People, Car, Bus, Motorcycle, Lamp, Truck
    images/<split>/<id><ext>     hard links to the source images (symlink, else copy, where linking fails)
    labels/<split>/<id>.txt      "class cx cy w h", normalised to 0..1; empty file for an image without objects
    annotations/<split>.json     COCO ground truth for every split (pycocotools)
    manifest.json                written last: the content key, ids per split, counts and warnings

Conventions shared with Ultralytics' ``predictions.json`` (``DetectionValidator.pred_to_json``) so that its
predictions can be scored against these files:

* COCO ``image_id`` = the image stem as an int when it is numeric (``"00159"`` -> ``159``), else the string;
* COCO ``category_id`` = class index + 1;
* COCO ``bbox`` = ``[xmin - 1, ymin - 1, w, h]`` with ``w = xmax - xmin + 1`` (VOC boxes are 1-based, inclusive).

The export is reused when ``manifest.json`` carries the same content key (ids, split lists, annotations, and
each source image's path, size and modification time), so re-running costs a ``stat`` per image, and an
interrupted export (no manifest, or a temporary folder) is never taken for a finished one. Otherwise every
input is validated first (each image decoded once by ``data.probe.probe_images``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from data.errors import DatasetError
from data.io import IMAGE_EXTENSIONS, atomic_dir, read_record, write_record
from data.m3fd import check_annotation
from data.probe import probe_images
from data.types import CLASS_NAMES, Annotation

LOGGER = logging.getLogger(__name__)

# Bump when the layout or the conversion changes, so old exports are rebuilt instead of reused.
EXPORT_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
YAML_NAME = "data.yaml"


@dataclass(frozen=True)
class YoloDataset:
    """A finished export (see the module docstring for the layout).

    Attributes:
        root: the dataset folder (``out_dir`` of :func:`export_yolo_dataset`).
        yaml_path: the Ultralytics dataset yaml (absolute paths).
        split_counts: split name -> number of images, in the order given.
        eval_split: the split evaluated by default; :attr:`coco_gt_path` is its COCO ground truth.
        class_names: class index -> name, as the export was given them (M3FD's ``data.types.CLASS_NAMES``).
        box_counts: split name -> class name -> number of boxes (every class listed, zeros included).
        key: the content key the export was built from.
        warnings: harmless problems that were fixed (boxes clipped into the image, duplicate boxes dropped).
    """

    root: Path
    yaml_path: Path
    split_counts: dict[str, int]
    eval_split: str
    class_names: tuple[str, ...]
    box_counts: dict[str, dict[str, int]]
    key: str
    warnings: tuple[str, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_counts)

    @property
    def coco_gt_path(self) -> Path:
        return self.coco_gt(self.eval_split)

    def coco_gt(self, split: str) -> Path:
        """COCO ground-truth json of ``split``."""
        if split not in self.split_counts:
            raise KeyError(f"unknown split '{split}'; this dataset has: {', '.join(self.split_counts)}")
        return self.root / "annotations" / f"{split}.json"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(root=str(self.root), yaml_path=str(self.yaml_path), class_names=list(self.class_names),
                   warnings=list(self.warnings))
        return out

    @classmethod
    def load(cls, root: str | Path) -> YoloDataset:
        """Open a finished export; raises FileNotFoundError when ``root`` holds no complete export."""
        root = Path(root).resolve()
        manifest = _read_manifest(root)
        if manifest is None:
            raise FileNotFoundError(f"no complete YOLO dataset export at {root} "
                                    f"(missing or unreadable {MANIFEST_NAME})")
        return _dataset_from_manifest(root, manifest)


def coco_image_id(stem: str) -> int | str:
    """The COCO image id Ultralytics writes into ``predictions.json`` for an image file stem."""
    return int(stem) if stem.isnumeric() else stem


def voc_to_yolo(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """VOC boxes (N, 4) ``xmin, ymin, xmax, ymax`` (1-based, inclusive) -> YOLO (N, 4) ``cx, cy, w, h`` in 0..1.

    The box covers pixels ``xmin - 1 .. xmax - 1`` (0-based), i.e. the continuous span ``[xmin - 1, xmax]``:
    ``cx = (xmin - 1 + xmax) / 2 / W`` and ``w = (xmax - xmin + 1) / W`` (the same for y with H).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes[:, 0] - 1, boxes[:, 1] - 1, boxes[:, 2], boxes[:, 3]
    return np.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], axis=1)


def voc_to_coco(boxes: np.ndarray) -> np.ndarray:
    """VOC boxes (N, 4) (1-based, inclusive) -> COCO (N, 4) ``[x, y, w, h]`` = ``[xmin - 1, ymin - 1, w, h]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0] - 1, boxes[:, 1] - 1, boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1],
                    axis=1)


@dataclass
class _Checked:
    """One image after validation: its size, class indices and (clipped) VOC boxes."""

    image: Path
    width: int
    height: int
    classes: np.ndarray  # (N,) int
    boxes: np.ndarray  # (N, 4) float64, VOC, clipped into the image
    warnings: list[str] = field(default_factory=list)


def _check_image(image_id: str, path: Path, size: tuple[int, int] | str, ann: Annotation,
                 problems: list[str], class_names: Sequence[str] = CLASS_NAMES) -> _Checked | None:
    """Validate one image/annotation pair; appends to ``problems`` and returns None when it cannot be used.

    ``size`` is the image's (width, height) from ``data.probe.probe_images``, or its decoding error.
    """
    if isinstance(size, str):
        problems.append(f"{image_id}: unreadable image {path}: {size}")
        return None
    if ann.image_id != image_id:
        problems.append(f"{image_id}: the annotation given for this id says image_id '{ann.image_id}'")
    # The project's one box rule (data.m3fd): unknown class, min > max or far outside the image is a problem;
    # a box off the image by up to BOX_CLIP_TOLERANCE_PX is clipped and noted.
    checked, ann_problems, notes = check_annotation(ann, size, Path(image_id))
    problems.extend(ann_problems)
    if ann_problems:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({b.name for b in checked.boxes if b.name not in index})
    if unknown:
        problems.append(f"{image_id}: class(es) {', '.join(unknown)} are not among the dataset's classes "
                        f"({', '.join(class_names)})")
        return None
    classes = np.array([index[b.name] for b in checked.boxes], dtype=np.int64)
    boxes = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in checked.boxes], dtype=np.float64).reshape(-1, 4)
    # Ultralytics drops exact duplicate label rows when it reads labels; drop them here too so that its ground
    # truth and the COCO json count the same boxes.
    _, first = np.unique(np.column_stack([classes, boxes]), axis=0, return_index=True)
    if len(first) < len(classes):
        keep = np.sort(first)
        notes.append(f"{image_id}: {len(classes) - len(keep)} duplicate box(es) dropped")
        classes, boxes = classes[keep], boxes[keep]
    return _Checked(path, size[0], size[1], classes, boxes, notes)


def _validate(
    images: Mapping[str, Path],
    annotations: Mapping[str, Annotation],
    splits: Mapping[str, Sequence[str]],
    eval_split: str,
    class_names: Sequence[str] = CLASS_NAMES,
) -> tuple[dict[str, _Checked], list[str]]:
    """Check everything and return (checked images by id, warnings); raises one DatasetError listing all problems."""
    problems: list[str] = []
    if not splits:
        problems.append("no splits given")
    if eval_split not in splits:
        problems.append(f"eval_split '{eval_split}' is not one of the splits ({', '.join(splits) or 'none'})")
    for id_ in sorted(set(annotations) - set(images), key=str):
        problems.append(f"{id_}: has an annotation but no image")
    for id_ in sorted(set(images) - set(annotations), key=str):
        problems.append(f"{id_}: has an image ({images[id_]}) but no annotation")

    seen_in: dict[str, str] = {}
    warnings: list[str] = []
    for split, ids in splits.items():
        if not split or not split.replace("_", "").replace("-", "").isalnum():
            problems.append(f"split name {split!r} must be letters, digits, '-' or '_'")
        if not ids:
            problems.append(f"split '{split}' is empty")
        dupes = sorted(id_ for id_, n in Counter(ids).items() if n > 1)
        if dupes:
            problems.append(f"split '{split}' lists these ids more than once: {', '.join(dupes)}")
        by_coco_id: dict[int | str, list[str]] = {}
        for id_ in ids:
            if not id_ or "/" in id_ or "\\" in id_ or id_.startswith("."):
                problems.append(f"split '{split}': id {id_!r} cannot be a file name")
            by_coco_id.setdefault(coco_image_id(id_), []).append(id_)
            if id_ not in images and id_ not in annotations:  # the one-sided cases are reported above
                problems.append(f"split '{split}': id '{id_}' has neither an image nor an annotation")
            if id_ in seen_in and seen_in[id_] != split:
                warnings.append(f"{id_}: in both split '{seen_in[id_]}' and '{split}'")
            seen_in.setdefault(id_, split)
        for coco_id, same in by_coco_id.items():
            if len(set(same)) > 1:
                problems.append(f"split '{split}': ids {', '.join(sorted(set(same)))} map to the same COCO "
                                f"image id {coco_id!r} (numeric stems become integers)")

    usable: dict[str, Path] = {}
    for id_ in sorted(seen_in):
        if id_ not in images or id_ not in annotations:
            continue
        path = Path(images[id_])
        if not path.is_file():
            problems.append(f"{id_}: image file not found: {path}")
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(f"{id_}: unsupported image extension '{path.suffix}' ({path}); "
                            f"expected one of {', '.join(IMAGE_EXTENSIONS)}")
        else:
            usable[id_] = path
    sizes = probe_images(list(usable.values()))  # decodes every image once, in parallel
    checked: dict[str, _Checked] = {}
    for id_, path in usable.items():
        item = _check_image(id_, path, sizes[path], annotations[id_], problems, class_names)
        if item is not None:
            checked[id_] = item
            warnings.extend(item.warnings)
    if problems:
        raise DatasetError("YOLO dataset export", problems)
    return checked, warnings


def _input_key(images: Mapping[str, Path], annotations: Mapping[str, Annotation],
               splits: Mapping[str, Sequence[str]], eval_split: str, out_dir: Path,
               class_names: Sequence[str] = CLASS_NAMES) -> str | None:
    """Hash of everything the export depends on, computed without decoding images; None if an image is missing.

    Images count by resolved path, size and modification time (a rewritten file gets a new key).
    """
    digest = hashlib.sha256()
    # out_dir is part of the key because the yaml holds absolute paths: a moved export is rebuilt, not reused.
    header = {"version": EXPORT_FORMAT_VERSION, "classes": list(class_names), "eval_split": eval_split,
              "root": str(out_dir), "splits": {k: list(v) for k, v in splits.items()},
              "ids": [sorted(images, key=str), sorted(annotations, key=str)]}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for id_ in sorted(set(images) & set(annotations), key=str):
        try:
            path = Path(images[id_]).resolve(strict=True)
            stat = path.stat()
        except OSError:
            return None
        ann = annotations[id_]
        boxes = [[b.name, b.xmin, b.ymin, b.xmax, b.ymax] for b in ann.boxes]
        digest.update(json.dumps([id_, str(path), stat.st_size, stat.st_mtime_ns, ann.image_id, ann.width,
                                  ann.height, boxes]).encode())
    return digest.hexdigest()


def link_file(source: Path, target: Path) -> None:
    """Hard link ``source`` at ``target``; symlink where that fails (other file system), copy as a last resort."""
    source = source.resolve()
    try:
        os.link(source, target)
    except OSError:
        try:
            os.symlink(source, target)
        except OSError:
            shutil.copy2(source, target)


def _label_text(item: _Checked) -> str:
    xywh = voc_to_yolo(item.boxes, item.width, item.height)
    return "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, (x, y, w, h) in zip(item.classes, xywh))


def _coco_json(split: str, ids: Sequence[str], checked: Mapping[str, _Checked],
               class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    images, annotations = [], []
    for id_ in ids:
        item = checked[id_]
        coco_id = coco_image_id(id_)
        images.append({"id": coco_id, "file_name": f"{id_}{item.image.suffix.lower()}",
                       "width": item.width, "height": item.height})
        for c, (x, y, w, h) in zip(item.classes.tolist(), voc_to_coco(item.boxes).tolist()):
            # Annotation ids start at 1: pycocotools treats a matched ground-truth id of 0 as "no match".
            annotations.append({"id": len(annotations) + 1, "image_id": coco_id, "category_id": c + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"info": {"description": f"fusebench YOLO export, split {split}"}, "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]}


def _read_manifest(root: Path, key: str | None = None) -> dict[str, Any] | None:
    """The manifest of a finished export (of ``key``, when given; written last: a folder without it is never taken
    for a finished export)."""
    manifest = read_record(root / MANIFEST_NAME, key)
    return manifest if isinstance(manifest, dict) else None


def _dataset_from_manifest(root: Path, manifest: Mapping[str, Any]) -> YoloDataset:
    return YoloDataset(
        root=root, yaml_path=root / YAML_NAME,
        split_counts={k: len(v) for k, v in manifest["splits"].items()},
        eval_split=manifest["eval_split"], class_names=tuple(manifest["class_names"]),
        box_counts=manifest["box_counts"], key=manifest["key"], warnings=tuple(manifest["warnings"]),
    )


def export_yolo_dataset(
    images: Mapping[str, Path],
    annotations: Mapping[str, Annotation],
    splits: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    *,
    eval_split: str = "val",
    class_names: Sequence[str] = CLASS_NAMES,
    force: bool = False,
) -> YoloDataset:
    """Write (or reuse) an Ultralytics dataset for the given images, annotations and splits.

    Args:
        images: image id -> image file (fused or single-modality; any format OpenCV reads, 1 or 3 channels).
        annotations: image id -> VOC annotation (1-based inclusive boxes; class names from ``CLASS_NAMES``).
        splits: split name -> image ids, e.g. ``{"train": [...], "val": [...]}``. Training needs ``train`` and
            ``val``; other names (``test``) are exported too.
        out_dir: the dataset folder. It is replaced atomically when its content key differs.
        eval_split: the split :attr:`YoloDataset.coco_gt_path` refers to.
        force: rebuild even when a finished export of the same inputs is there (it is replaced atomically).
        class_names: the dataset's classes in label-index order (the loader's ``class_names``; M3FD's by
            default). They travel on in the manifest, ``YoloDataset.class_names`` and the detector's result.

    Raises:
        DatasetError: before anything is written, listing every problem: an image missing or unreadable, an id
            with an image but no annotation (or the reverse), an empty split, a box outside the image (a box off
            by at most ``data.m3fd.BOX_CLIP_TOLERANCE_PX`` is clipped and reported in ``warnings`` instead), an
            unknown class name, ...
    """
    out_dir = Path(out_dir).resolve()
    class_names = tuple(class_names)
    key = _input_key(images, annotations, splits, eval_split, out_dir, class_names)
    existing = _read_manifest(out_dir, key) if key is not None and not force else None
    if existing is not None:
        return _dataset_from_manifest(out_dir, existing)  # the same inputs were validated when it was built
    checked, warnings = _validate(images, annotations, splits, eval_split, class_names)
    for line in warnings:
        LOGGER.warning("YOLO export: %s", line)

    box_counts = {
        split: {name: int(sum((checked[i].classes == c).sum() for i in ids)) for c, name in enumerate(class_names)}
        for split, ids in splits.items()
    }
    with atomic_dir(out_dir) as tmp:
        for split, ids in splits.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for id_ in ids:
                item = checked[id_]
                link_file(item.image, tmp / "images" / split / f"{id_}{item.image.suffix.lower()}")
                (tmp / "labels" / split / f"{id_}.txt").write_text(_label_text(item))
            (tmp / "annotations").mkdir(exist_ok=True)
            (tmp / "annotations" / f"{split}.json").write_text(json.dumps(_coco_json(split, ids, checked, class_names)))
        data_yaml = {"path": str(out_dir), **{split: str(out_dir / "images" / split) for split in splits},
                     "names": dict(enumerate(class_names))}
        for role in ("train", "val"):  # Ultralytics' dataset check needs both keys; a scoring-only export
            data_yaml.setdefault(role, str(out_dir / "images" / eval_split))  # (robustness) trains on neither
        (tmp / YAML_NAME).write_text(yaml.safe_dump(data_yaml, sort_keys=False))
        manifest = {"key": key, "format_version": EXPORT_FORMAT_VERSION, "eval_split": eval_split,
                    "class_names": list(class_names), "splits": {k: list(v) for k, v in splits.items()},
                    "box_counts": box_counts, "warnings": warnings}
        # Written last: a folder without it is never taken for a finished export.
        write_record(tmp / MANIFEST_NAME, key, manifest)
    return _dataset_from_manifest(out_dir, manifest)
