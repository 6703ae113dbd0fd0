"""Export images + VOC annotations as an Ultralytics YOLO dataset, with COCO ground truth for pycocotools.

Layout written under ``out_dir`` (a ``data.store.KeyedStore`` folder: built in a temporary sibling folder and
renamed into place)::

    data.yaml                    absolute paths; names = the dataset's classes (class_names), index order
    images/<split>/<id><ext>     hard links to the source images (symlink, else copy, where linking fails)
    labels/<split>/<id>.txt      "class cx cy w h", normalised to 0..1; empty file for an image without objects
    annotations/<split>.json     COCO ground truth for every split (pycocotools)
    manifest.json                the store's record, written last: the content key, ids per split, counts, warnings

Conventions shared with Ultralytics' ``predictions.json`` (``DetectionValidator.pred_to_json``) so that its
predictions can be scored against these files:

* COCO ``image_id`` = the image stem as an int when it is numeric (``"00159"`` -> ``159``), else the string;
* COCO ``category_id`` = class index + 1;
* COCO ``bbox`` = ``[xmin - 1, ymin - 1, w, h]`` with ``w = xmax - xmin + 1`` (VOC boxes are 1-based, inclusive).

The store reuses the export when ``manifest.json`` carries the same content key (ids, split lists, annotations,
and each source image's path, size and modification time), so re-running costs a ``stat`` per image, and an
interrupted export (no manifest, or a temporary folder) is never taken for a finished one. ``store`` decides
``--force``: the pipeline passes its run's store, so a forced run rebuilds each export once however many stages
ask for it. Otherwise every input is validated first, before anything is written: each image's size is read from
its header (``data.probe.probe_sizes``; a file whose header cannot vouch for it, e.g. a truncated one, is decoded,
so it is reported as unreadable), and no image is decoded otherwise: an ordinary export links its images, an
early-fusion export decodes each source once, to stack it.

Early fusion (:func:`export_stacked`) writes the same layout with one N-channel TIFF per sample instead of a
link, each modality a channel, and ``channels: N`` in ``data.yaml`` (how Ultralytics trains on N channels).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from data.errors import DatasetError
from data.io import IMAGE_EXTENSIONS, gray_reference, read_8bit
from data.m3fd import check_annotation
from data.probe import probe_sizes
from data.store import KeyedStore, finished
from data.types import Annotation

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
        class_names: class index -> name, as the export was given them (the dataset's class list).
        box_counts: split name -> class name -> number of boxes (every class listed, zeros included).
        key: the content key the export was built from.
        warnings: harmless problems that were fixed (boxes clipped into the image, duplicate boxes dropped).
        channels: what each image channel holds, in the order Ultralytics' loader returns them, for an early-fusion
            export (:func:`export_stacked`, e.g. ``("ir", "vis.B", "vis.G", "vis.R")``); empty for an export of
            ordinary images (:func:`export_yolo_dataset`).
    """

    root: Path
    yaml_path: Path
    split_counts: dict[str, int]
    eval_split: str
    class_names: tuple[str, ...]
    box_counts: dict[str, dict[str, int]]
    key: str
    warnings: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

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
                   warnings=list(self.warnings), channels=list(self.channels))
        return out

    @classmethod
    def load(cls, root: str | Path) -> YoloDataset:
        """Open a finished export; raises FileNotFoundError when ``root`` holds no complete export."""
        root = Path(root).resolve()
        manifest = finished(root, record=MANIFEST_NAME)
        if manifest is None:
            raise FileNotFoundError(f"no complete YOLO dataset export at {root} "
                                    f"(missing or unreadable {MANIFEST_NAME})")
        return _dataset_from_manifest(root, manifest)


def default_class_names() -> tuple[str, ...]:
    """M3FD's classes: the class list of callers that pass none (a dataset's reader owns its list)."""
    try:
        from data.m3fd import M3FD_CLASSES
    except ImportError:  # a tree where the list is still data.types' global
        from data.types import CLASS_NAMES as M3FD_CLASSES
    return tuple(M3FD_CLASSES)


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
                 problems: list[str], class_names: Sequence[str]) -> _Checked | None:
    """Validate one image/annotation pair; appends to ``problems`` and returns None when it cannot be used.

    ``size`` is the image's (width, height) from ``data.probe.probe_sizes``, or why it cannot be read.
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
    class_names: Sequence[str],
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
    sizes = probe_sizes(list(usable.values()))  # from the headers; a file they cannot vouch for is decoded
    checked: dict[str, _Checked] = {}
    for id_, path in usable.items():
        item = _check_image(id_, path, sizes[path], annotations[id_], problems, class_names)
        if item is not None:
            checked[id_] = item
            warnings.extend(item.warnings)
    if problems:
        raise DatasetError("YOLO dataset export", problems)
    return checked, warnings


def _input_key(images: Mapping[str, Path | Mapping[str, Path]], annotations: Mapping[str, Annotation],
               splits: Mapping[str, Sequence[str]], eval_split: str, out_dir: Path,
               class_names: Sequence[str], layout: Mapping[str, Any] | None = None) -> str | None:
    """Hash of everything the export depends on, computed without decoding images; None if an image is missing.

    Images count by resolved path, size and modification time (a rewritten file gets a new key). An id of a
    stacked export maps to one file per modality (each counted, in the channel order); ``layout`` (its channel
    order and format) joins the header then, so an ordinary export's key is what it always was.
    """
    digest = hashlib.sha256()
    # out_dir is part of the key because the yaml holds absolute paths: a moved export is rebuilt, not reused.
    header = {"version": EXPORT_FORMAT_VERSION, "classes": list(class_names), "eval_split": eval_split,
              "root": str(out_dir), "splits": {k: list(v) for k, v in splits.items()},
              "ids": [sorted(images, key=str), sorted(annotations, key=str)]}
    if layout is not None:
        header["layout"] = dict(layout)
    digest.update(json.dumps(header, sort_keys=True).encode())
    for id_ in sorted(set(images) & set(annotations), key=str):
        sources = images[id_]
        files = list(sources.values()) if isinstance(sources, Mapping) else [sources]
        stamps = []
        for file in files:
            try:
                path = Path(file).resolve(strict=True)
                stat = path.stat()
            except OSError:
                return None
            stamps += [str(path), stat.st_size, stat.st_mtime_ns]
        ann = annotations[id_]
        boxes = [[b.name, b.xmin, b.ymin, b.xmax, b.ymax] for b in ann.boxes]
        digest.update(json.dumps([id_, *stamps, ann.image_id, ann.width, ann.height, boxes]).encode())
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
               class_names: Sequence[str]) -> dict[str, Any]:
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


def _dataset_from_manifest(root: Path, manifest: Mapping[str, Any]) -> YoloDataset:
    return YoloDataset(
        root=root, yaml_path=root / YAML_NAME,
        split_counts={k: len(v) for k, v in manifest["splits"].items()},
        eval_split=manifest["eval_split"], class_names=tuple(manifest["class_names"]),
        box_counts=manifest["box_counts"], key=manifest["key"], warnings=tuple(manifest["warnings"]),
        channels=tuple(manifest.get("channels", ())),
    )


def export_yolo_dataset(
    images: Mapping[str, Path],
    annotations: Mapping[str, Annotation],
    splits: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    *,
    eval_split: str = "val",
    class_names: Sequence[str] | None = None,
    store: KeyedStore | None = None,
) -> YoloDataset:
    """Write (or reuse) an Ultralytics dataset for the given images, annotations and splits.

    Args:
        images: image id -> image file (fused or single-modality; any format OpenCV reads, 1 or 3 channels).
        annotations: image id -> VOC annotation (1-based inclusive boxes; class names from ``class_names``).
        splits: split name -> image ids, e.g. ``{"train": [...], "val": [...]}``. Training needs ``train`` and
            ``val``; other names (``test``) are exported too.
        out_dir: the dataset folder. It is replaced atomically when its content key differs.
        eval_split: the split :attr:`YoloDataset.coco_gt_path` refers to.
        class_names: the dataset's classes in label-index order (the reader's ``class_names``; None: M3FD's,
            for callers that do not pass them yet). They travel on in the manifest, ``YoloDataset.class_names``
            and the detector's result.
        store: the keyed store that builds the folder and decides ``--force`` (the pipeline's run store: forced,
            a finished export of the same inputs is rebuilt once per run and replaced atomically); None: a store
            of its own, without ``--force``.

    Raises:
        DatasetError: before anything is written, listing every problem: an image missing or unreadable, an id
            with an image but no annotation (or the reverse), an empty split, a box outside the image (a box off
            by at most ``data.m3fd.BOX_CLIP_TOLERANCE_PX`` is clipped and reported in ``warnings`` instead), an
            unknown class name, ...
    """
    out_dir = Path(out_dir).resolve()
    class_names = tuple(class_names) if class_names is not None else default_class_names()

    def check() -> tuple[dict[str, _Checked], list[str]]:
        checked, warnings = _validate(images, annotations, splits, eval_split, class_names)
        for line in warnings:
            LOGGER.warning("YOLO export: %s", line)
        return checked, warnings

    def build(tmp: Path) -> dict[str, Any]:
        checked, warnings = check()
        return _write_export(tmp, out_dir, splits, checked, warnings, key, eval_split, class_names,
                             lambda item, target: link_file(item.image, target))

    key = _input_key(images, annotations, splits, eval_split, out_dir, class_names) or _unkeyable(check)
    # A reused export's inputs were validated when it was built.
    manifest, _ = (store or KeyedStore(out_dir.parent)).folder(out_dir, key, build, record=MANIFEST_NAME)
    return _dataset_from_manifest(out_dir, manifest)


def _unkeyable(check: Callable[[], Any]) -> str:
    """For an export whose content key could not be computed (an image missing): raise what ``check()`` finds."""
    check()
    raise DatasetError("YOLO dataset export", ["a source image changed or went missing while it was read"])


def _write_export(tmp: Path, out_dir: Path, splits: Mapping[str, Sequence[str]], checked: Mapping[str, _Checked],
                  warnings: Sequence[str], key: str, eval_split: str, class_names: Sequence[str],
                  place_image: Callable[[_Checked, Path], None], *, channels: Sequence[str] = (),
                  ) -> dict[str, Any]:
    """Write the layout of the module docstring into ``tmp`` (the store's temporary folder, renamed onto
    ``out_dir`` once finished); returns the manifest, which the store writes last.

    ``place_image(item, target)`` puts the image of ``item`` at ``target`` (``images/<split>/<id><suffix of
    item.image>``); ``channels`` (a stacked export's channel names) go into the yaml and the manifest.
    """
    box_counts = {
        split: {name: int(sum((checked[i].classes == c).sum() for i in ids)) for c, name in enumerate(class_names)}
        for split, ids in splits.items()
    }
    for split, ids in splits.items():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for id_ in ids:
            item = checked[id_]
            place_image(item, tmp / "images" / split / f"{id_}{item.image.suffix.lower()}")
            (tmp / "labels" / split / f"{id_}.txt").write_text(_label_text(item))
        (tmp / "annotations").mkdir(exist_ok=True)
        (tmp / "annotations" / f"{split}.json").write_text(json.dumps(_coco_json(split, ids, checked, class_names)))
    data_yaml: dict[str, Any] = {"path": str(out_dir),
                                 **{split: str(out_dir / "images" / split) for split in splits},
                                 "names": dict(enumerate(class_names))}
    for role in ("train", "val"):  # Ultralytics' dataset check needs both keys; a scoring-only export
        data_yaml.setdefault(role, str(out_dir / "images" / eval_split))  # (robustness) trains on neither
    if channels:
        # Ultralytics builds the first convolution for this many channels and, for any count but 1 and 3,
        # reads images with IMREAD_UNCHANGED (a multi-page TIFF's pages become the channels).
        data_yaml["channels"] = len(channels)
        data_yaml["channel_names"] = list(channels)  # not read by Ultralytics; for people and tools
    (tmp / YAML_NAME).write_text(yaml.safe_dump(data_yaml, sort_keys=False))
    manifest = {"key": key, "format_version": EXPORT_FORMAT_VERSION, "eval_split": eval_split,
                "class_names": list(class_names), "splits": {k: list(v) for k, v in splits.items()},
                "box_counts": box_counts, "warnings": list(warnings)}
    if channels:
        manifest["channels"] = list(channels)
    return manifest


# Bump when the stacked images' content or file format changes (joins a stacked export's key).
STACK_FORMAT_VERSION = 1
STACK_SUFFIX = ".tif"
# Channel suffixes of a colour modality kept whole, in OpenCV's (and so Ultralytics' loader's) order.
_COLOUR_CHANNELS = ("B", "G", "R")


def stacked_channels(modalities: Sequence[str], colour: str | None) -> tuple[str, ...]:
    """Channel names of an early-fusion image, in file and loader order: one per modality, three (``<name>.B``,
    ``.G``, ``.R``) for the ``colour`` modality. E.g. ``("ir", "vis.B", "vis.G", "vis.R")``."""
    return tuple(channel for m in modalities
                 for channel in ([f"{m}.{c}" for c in _COLOUR_CHANNELS] if m == colour else [m]))


def stack_planes(sources: Mapping[str, Path], modalities: Sequence[str], colour: str | None) -> np.ndarray:
    """The early-fusion image of one sample: uint8 (H, W, N), channels as :func:`stacked_channels` names them.

    Each file is read as 8-bit (``data.io.read_8bit``: 16-bit keeps its upper byte, alpha is dropped). A colour
    file of a modality other than ``colour`` becomes its BT.601 luma rounded (``data.io.gray_reference``, what
    the image fusions' rules read); a grey file of the ``colour`` modality fills its three channels, so every
    image of the dataset has the same channel count.
    """
    planes = []
    for modality in modalities:
        image = read_8bit(sources[modality])
        if modality == colour:
            planes.extend(cv2.split(image) if image.ndim == 3 else [image] * 3)
        else:
            planes.append(image if image.ndim == 2 else gray_reference(image).astype(np.uint8))
    return np.dstack(planes)


def write_stacked(path: Path, stack: np.ndarray) -> None:
    """Write an (H, W, N) uint8 stack as the TIFF Ultralytics' loader reads back as the same (H, W, N) array.

    Ultralytics (``utils.patches.imread``) reads 3-channel datasets with ``IMREAD_COLOR``, which keeps only the
    first page of a multi-page TIFF, so 3 channels go into one 3-channel page (OpenCV writes it as RGB and reads
    it back as the BGR array it was given). Every other count is read with ``IMREAD_UNCHANGED``, which stacks
    the pages of a multi-page grey TIFF as channels: one page per channel, no colour conversion to get wrong.
    TIFF keeps every value (lossless).
    """
    if stack.shape[2] == 3:
        written = cv2.imwrite(str(path), stack)
    else:
        written = cv2.imwritemulti(str(path), [np.ascontiguousarray(stack[..., i]) for i in range(stack.shape[2])])
    if not written:
        raise OSError(f"OpenCV could not write {path}")


def _check_stack_sources(sources_by_id: Mapping[str, Mapping[str, Path]], ids: Sequence[str],
                         modalities: Sequence[str], checked: Mapping[str, _Checked]) -> list[str]:
    """Every modality of every id present, readable and as large as the first modality's image (registered).

    The first modality's sizes come from ``checked`` (``_validate`` probed those images); an id it left out
    (its annotation had a problem) has its first image probed here, so a size mismatch is reported with it.
    Sizes are read from the headers (``data.probe.probe_sizes``): the stack decodes each source once, when it
    is built.
    """
    problems: list[str] = []
    to_probe: dict[Path, tuple[str, str]] = {}
    for id_ in ids:
        sources = sources_by_id.get(id_)
        if sources is None:
            continue  # reported by _validate (an annotation without an image)
        missing = [m for m in modalities if m not in sources]
        if missing:
            problems.append(f"{id_}: no {', '.join(missing)} image (the stack has {', '.join(modalities)})")
        for modality in modalities:
            if modality not in sources or (modality == modalities[0] and id_ in checked):
                continue
            path = Path(sources[modality])
            if modality == modalities[0]:
                if path.is_file():
                    to_probe[path] = (id_, modality)  # its own problems are _validate's to report
            elif not path.is_file():
                problems.append(f"{id_}: {modality} image file not found: {path}")
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append(f"{id_}: unsupported {modality} image extension '{path.suffix}' ({path})")
            else:
                to_probe[path] = (id_, modality)
    sizes: dict[tuple[str, str], tuple[int, int] | str] = {
        to_probe[path]: size for path, size in probe_sizes(list(to_probe)).items()}
    for (id_, modality), size in sizes.items():
        if modality == modalities[0]:
            continue
        if isinstance(size, str):
            problems.append(f"{id_}: unreadable {modality} image {sources_by_id[id_][modality]}: {size}")
            continue
        reference = ((checked[id_].width, checked[id_].height) if id_ in checked
                     else sizes.get((id_, modalities[0])))
        if isinstance(reference, tuple) and size != reference:
            problems.append(f"{id_}: {modality} image is {size[0]}x{size[1]}, {modalities[0]} is "
                            f"{reference[0]}x{reference[1]} (stacked modalities must be registered)")
    return problems


def export_stacked(
    ids_by_split: Mapping[str, Sequence[str]],
    sources_by_id: Mapping[str, Mapping[str, Path]],
    annotations: Mapping[str, Annotation],
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    colour: str | None,
    modalities: Sequence[str] | None = None,
    eval_split: str = "val",
    store: KeyedStore | None = None,
) -> YoloDataset:
    """Write (or reuse) an early-fusion dataset: each sample's modalities stacked as one N-channel image.

    The layout, labels, COCO ground truth, manifest, reuse and atomic replacement are those of
    :func:`export_yolo_dataset`; only the images differ: ``images/<split>/<id>.tif`` holds the stack
    (:func:`write_stacked`), and ``data.yaml`` says ``channels: N`` (Ultralytics then builds the detector's first
    convolution for N channels and reads the images unchanged) and ``channel_names``. The channel order is
    ``modalities`` in order, a ``colour`` modality as B, G, R (:func:`stacked_channels`); it is recorded in
    the manifest and in :attr:`YoloDataset.channels`. :func:`detection.train.train_and_evaluate` trains on the
    result as on any export.

    Colour: ``colour`` names the modality kept as its three colour channels (the dataset's colour modality,
    e.g. ``"vis"``); pass it. The image-fusion candidates keep the visible chroma around their fused luma, so a
    stack with the visible as luma only would give the detector less than every fused image gives it, and early
    fusion must not lose for that. It costs only the first convolution's width (ir + colour visible: 4 channels).
    ``colour=None`` stacks every modality as one channel (luma), e.g. to measure what the chroma is worth.

    Ultralytics' augmentations on N channels (8.4): mosaic, affine, flips and letterbox apply to every channel
    alike; its HSV jitter and Albumentations apply only to 1- or 3-channel images (treating 3 as BGR colour)
    and are skipped otherwise. So :func:`detection.train.train_and_evaluate` trains a 3-channel stack (three
    one-channel modalities) without HSV jitter, like every other stack; Albumentations' rare colour steps
    (``ToGray``, ``CLAHE``, p = 0.01 each) still treat it as colour.

    Args:
        ids_by_split: split name -> ids, as ``splits`` of :func:`export_yolo_dataset`.
        sources_by_id: id -> {modality: image file}; every modality of the stack for every id, all the same
            size (registered pairs). Extra modalities are ignored.
        annotations: id -> VOC annotation (boxes in the first modality's pixels, which every modality shares).
        class_names: the dataset's classes in label-index order.
        out_dir: the dataset folder (replaced atomically when its content key differs).
        colour: the modality kept in colour (see above), or None.
        modalities: the stack's modalities in channel order; default the order of the first id's mapping.
        eval_split, store: as for :func:`export_yolo_dataset`.

    Raises:
        ValueError: fewer than two modalities, or ``colour`` not among them.
        DatasetError: before anything is written, listing every problem: those of :func:`export_yolo_dataset`
            and a modality missing, unreadable or of another size than the first.
    """
    out_dir = Path(out_dir).resolve()
    class_names = tuple(class_names)
    if modalities is None:
        first = next(iter(sources_by_id.values()), {})
        modalities = tuple(first)
    modalities = tuple(modalities)
    if len(modalities) < 2 or len(set(modalities)) < len(modalities):
        raise ValueError(f"export_stacked needs two or more distinct modalities, got {list(modalities)} "
                         "(one modality is an ordinary export: export_yolo_dataset)")
    if colour is not None and colour not in modalities:
        raise ValueError(f"colour modality '{colour}' is not one of the stack's modalities {list(modalities)}")
    channels = stacked_channels(modalities, colour)
    layout = {"stack_version": STACK_FORMAT_VERSION, "channels": list(channels), "suffix": STACK_SUFFIX}
    sources = {id_: {m: Path(mapping[m]) for m in modalities if m in mapping}  # in channel order
               for id_, mapping in sources_by_id.items()}
    def check() -> tuple[dict[str, _Checked], list[str]]:
        # The first modality stands for the sample in the shared checks (ids, boxes, its size); the others are
        # checked against it, and every problem of both is reported together.
        reference = {id_: mapping[modalities[0]] for id_, mapping in sources.items() if modalities[0] in mapping}
        problems: list[str] = []
        try:
            checked, warnings = _validate(reference, annotations, ids_by_split, eval_split, class_names)
        except DatasetError as err:
            checked, warnings, problems = {}, [], list(err.problems)
        ids = list(dict.fromkeys(i for split_ids in ids_by_split.values() for i in split_ids))
        problems += _check_stack_sources(sources, ids, modalities, checked)
        if problems:
            raise DatasetError("YOLO dataset export (stacked)", problems)
        for line in warnings:
            LOGGER.warning("YOLO export: %s", line)
        return checked, warnings

    def build(tmp: Path) -> dict[str, Any]:
        checked, warnings = check()
        LOGGER.info("early-fusion export %s: channels %s", out_dir, ", ".join(channels))
        stacked = {id_: replace(item, image=Path(f"{id_}{STACK_SUFFIX}")) for id_, item in checked.items()}

        def place(item: _Checked, target: Path) -> None:
            stack = stack_planes(sources[target.stem], modalities, colour)
            if stack.shape[:2] != (item.height, item.width):  # the labels were written for the header's size
                files = ", ".join(map(str, sources[target.stem].values()))
                raise ValueError(f"{target.stem}: the decoded images are {stack.shape[1]}x{stack.shape[0]}, their "
                                 f"headers say {item.width}x{item.height} ({files})")
            write_stacked(target, stack)

        return _write_export(tmp, out_dir, ids_by_split, stacked, warnings, key, eval_split, class_names, place,
                             channels=channels)

    key = (_input_key(sources, annotations, ids_by_split, eval_split, out_dir, class_names, layout)
           or _unkeyable(check))
    manifest, _ = (store or KeyedStore(out_dir.parent)).folder(out_dir, key, build, record=MANIFEST_NAME)
    return _dataset_from_manifest(out_dir, manifest)
