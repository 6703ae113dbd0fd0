"""The one place where every reader's findings are checked and turned into a :class:`CheckedDataset`.

A reader only lists what is on disk (a :class:`Found`: image files per modality, label files, class list,
split lists, scenes); :func:`build_dataset` then checks all of it the same way for every dataset, before any
heavy work, and raises one :class:`data.errors.DatasetError` naming every offender:

* a sample missing an image of some modality, or its label file (unless the reader allows unlabelled ids), and
  a label file with no images: each named with the files that were found;
* two files for one id in one folder (``a.png`` and ``a.jpg``; ``a.xml`` and ``a.XML``);
* images that do not decode, and the modalities of one id disagreeing in size;
* label files that do not parse, an annotation's declared size disagreeing with the image, boxes of unknown
  classes, with min > max, outside the image by more than :data:`BOX_CLIP_TOLERANCE_PX` or wholly off it;
* split lists naming ids that do not exist, one id in two split lists, and problems the reader found itself.

Harmless repairs go to one :class:`data.errors.DatasetWarning` each (boxes clipped by a pixel or two, labelled
ids in no split list, unlabelled ids, ignored files), listing the first :data:`MAX_LISTED` and counting the rest.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError, DatasetWarning
from ..paired import check_image_groups, images_by_stem
from ..probe import probe_images
from ..splits import SPLIT_NAMES, SplitRule, settle_split, split_of
from ..types import Annotation
from .base import CheckedDataset
from .labels import BOX_CLIP_TOLERANCE_PX, LABEL_FORMATS, check_annotation, read_id_list, read_voc, read_yolo

# How many offenders a warning lists before it only counts the rest.
MAX_LISTED = 20
# Files in a label folder that are no sample's labels: labelImg's YOLO mode writes the class list there.
NOT_LABELS = frozenset({"classes.txt"})
# What an id without a label file is: a problem, an unlabelled sample (in no split; fusion may still use it),
# or a background image with no objects (YOLO's convention for a missing .txt).
MISSING_LABEL_POLICIES: tuple[str, ...] = ("error", "unlabelled", "background")


@dataclass
class Found:
    """What a reader found on disk, before any check.

    Attributes:
        name: the reader's registry name.
        root: the dataset folder (named in the error).
        folders: modality -> its folder (or folders, e.g. LLVIP's ``infrared/train`` and ``infrared/test``), in
            the dataset's modality order (names the modalities).
        colour: the colour modality, or None.
        label_folder: where the label files are; None for a dataset without labels (every id unlabelled).
        label_format: ``"voc"`` or ``"yolo"``.
        class_names: the classes in label-index order; None: the VOC names found, sorted (YOLO needs a list).
        missing_labels: one of :data:`MISSING_LABEL_POLICIES`.
        split_lists: split -> ids as the dataset lists them (unfiltered), or None when it lists none.
        split_sources: split -> where its list came from (list files, a folder), named in messages.
        scenario, scene, scene_group: id -> scenario, id -> scene, scene -> merged scene group.
        scenario_order: the order scenarios are reported in (others follow, sorted).
        split_details: added to ``split_info`` (e.g. which files named the scenarios).
        problems: what the reader found wrong while listing (unreadable meta files ...).
        notes: harmless oddities, each becomes a warning.
    """

    name: str
    root: Path
    folders: dict[str, Path | tuple[Path, ...]]
    colour: str | None
    label_folder: Path | None
    label_format: str = "voc"
    class_names: tuple[str, ...] | None = None
    missing_labels: str = "error"
    split_lists: dict[str, list[str]] | None = None
    split_sources: dict[str, list[str]] = field(default_factory=dict)
    scenario: dict[str, str] = field(default_factory=dict)
    scene: dict[str, str] = field(default_factory=dict)
    scene_group: dict[str, str] = field(default_factory=dict)
    scenario_order: tuple[str, ...] = ()
    split_details: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def images_in(folders: Path | Sequence[Path], problems: list[str]) -> dict[str, Path]:
    """Image files by stem across one or several folders; a stem twice (in one folder or in two) is a problem."""
    found: dict[str, Path] = {}
    for folder in [folders] if isinstance(folders, Path) else folders:
        for stem, path in images_by_stem(folder, problems).items():
            if stem in found:
                problems.append(f"two images share the stem '{stem}': {found[stem]} and {path}")
                continue
            found[stem] = path
    return found


def _named(folders: Path | Sequence[Path]) -> str:
    return " or ".join(f"{f}/" for f in ([folders] if isinstance(folders, Path) else folders))


def label_files(folder: Path, suffix: str, problems: list[str]) -> dict[str, Path]:
    """Label files of ``folder`` with ``suffix`` (any case) by stem; a stem twice (``a.xml``, ``a.XML``) is a
    problem. Hidden files and :data:`NOT_LABELS` are skipped."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if (path.name.startswith(".") or not path.is_file() or path.suffix.lower() != suffix
                or path.name in NOT_LABELS):
            continue
        if path.stem in found:  # which one holds the truth is not ours to guess
            problems.append(f"two annotation files for '{path.stem}': {found[path.stem]} and {path}")
            continue
        found[path.stem] = path
    return found


def read_split_lists(files: Mapping[str, Sequence[Path]], problems: list[str]) -> dict[str, list[str]] | None:
    """split -> ids of its list files (several files per split are united, in order); None when there are none.
    An unreadable list is a problem and adds nothing."""
    if not any(files.values()):
        return None
    out: dict[str, list[str]] = {}
    for name, paths in files.items():
        ids: dict[str, None] = {}
        for path in paths:
            try:
                ids.update(dict.fromkeys(read_id_list(path)))
            except (ValueError, OSError) as err:
                problems.append(str(err) if str(path) in str(err) else f"{path}: {err}")
        out[name] = list(ids)
    return out


def build_dataset(found: Found, rule: SplitRule = SplitRule(), *, validate: bool = True) -> CheckedDataset:
    """Check everything a reader found and settle the split; see the module docstring for what is checked.

    Args:
        found: the reader's listing.
        rule: how the split is settled (:func:`data.splits.settle_split`).
        validate: decode every image to check it and compare sizes across modalities and with the labels (the
            default). False skips decoding (a fast look at a trusted dataset): box ranges are then checked
            against the declared annotation size only; YOLO labels still need the image size and decode it.

    Raises:
        DatasetError: one error naming every problem found, before anything is returned or written.
    """
    if found.missing_labels not in MISSING_LABEL_POLICIES:
        raise ValueError(f"missing_labels must be one of {', '.join(MISSING_LABEL_POLICIES)}, got {found.missing_labels!r}")
    if found.label_format not in LABEL_FORMATS.values():
        raise ValueError(f"label_format must be one of {', '.join(LABEL_FORMATS.values())}, got {found.label_format!r}")
    root, problems = found.root, list(found.problems)
    images = {modality: images_in(folders, problems) for modality, folders in found.folders.items()}
    suffix = {v: k for k, v in LABEL_FORMATS.items()}[found.label_format]
    labels = label_files(found.label_folder, suffix, problems) if found.label_folder is not None else {}
    ids, labelled = _complete_samples(found, images, labels, suffix, problems)

    sizes: dict[str, tuple[int, int]] = {}
    if validate:
        image_problems, sizes = check_image_groups([(i, [images[m][i] for m in found.folders]) for i in ids])
        problems.extend(image_problems)
    elif found.label_format == "yolo":
        probed = probe_images([images[next(iter(found.folders))][i] for i in labelled])
        sizes = {i: s for i, s in zip(labelled, probed.values()) if isinstance(s, tuple)}

    annotations, class_names, clip_notes = _read_labels(found, labelled, labels, sizes, validate, problems)
    given = _given_splits(found, ids, set(annotations), problems)
    if problems:
        raise DatasetError(str(root), problems)
    try:
        splits, split_info, groups, split_notes = settle_split(
            sorted(annotations), rule, given=given,
            given_sources=[Path(s).name for sources in found.split_sources.values() for s in sources],
            scenario=_restrict(found.scenario, annotations), scene=_restrict(found.scene, annotations),
            scene_group=found.scene_group)
    except ValueError as err:
        raise DatasetError(str(root), [str(err)]) from None
    split_info.update(found.split_details)

    unlisted = [i for i in sorted(annotations) if i not in split_of(splits)]
    unlabelled = [i for i in ids if i not in annotations]
    if clip_notes:
        warn(f"{root}: {len(clip_notes)} box(es) up to {BOX_CLIP_TOLERANCE_PX:g} px outside the image were clipped",
             clip_notes)
    if unlisted:
        warn(f"{root}: {len(unlisted)} image(s) are in no split list and are left out of every split", unlisted)
    if unlabelled:
        warn(f"{root}: {len(unlabelled)} image(s) have no label file: unlabelled, in no split "
             "(fusion may still use them)", unlabelled)
    for note in [*found.notes, *split_notes]:
        warnings.warn(note, DatasetWarning, stacklevel=3)
    return CheckedDataset(
        name=found.name, root=root, modalities=tuple(found.folders), colour=found.colour,
        sources={i: {m: images[m][i] for m in found.folders} for i in ids}, annotations=annotations,
        class_names=class_names, splits=splits, split_info=split_info,
        scenario=_restrict(found.scenario, ids), scene=_restrict(found.scene, ids), groups=groups,
        scenario_order=found.scenario_order)


def warn(message: str, offenders: Sequence[str]) -> None:
    """One DatasetWarning for the reader's caller, listing the first offenders and counting the rest."""
    listed = "\n".join(f"  - {n}" for n in offenders[:MAX_LISTED])
    more = f"\n  ... and {len(offenders) - MAX_LISTED} more" if len(offenders) > MAX_LISTED else ""
    warnings.warn(f"{message}\n{listed}{more}", DatasetWarning, stacklevel=4)


def _restrict(table: Mapping[str, str], ids) -> dict[str, str]:
    return {i: table[i] for i in ids if i in table}


def _complete_samples(found: Found, images: dict[str, dict[str, Path]], labels: dict[str, Path], suffix: str,
                      problems: list[str]) -> tuple[list[str], list[str]]:
    """(ids with every modality, those of them with a label file or counted as background); every gap named."""
    root = found.root
    sides = [(_named(folders), images[m], "an image") for m, folders in found.folders.items()]
    if found.label_folder is not None:
        sides.append((_named(found.label_folder), labels, f"a {suffix} file" if suffix != ".xml" else "an .xml file"))
    everything = set(labels).union(*(set(files) for files in images.values()))
    for image_id in sorted(everything):
        present = [files[image_id] for _, files, _ in sides if image_id in files]
        for folder, files, kind in sides:
            if image_id in files:
                continue
            if files is labels and found.missing_labels != "error" and all(image_id in f for f in images.values()):
                continue
            problems.append(f"missing {kind} for '{image_id}' in {folder} (found {', '.join(map(str, present))})")
    ids = sorted(set.intersection(*(set(files) for files in images.values())) if images else set())
    if found.label_folder is None:
        labelled = []
    elif found.missing_labels == "background":
        labelled = ids
    else:
        labelled = [i for i in ids if i in labels]
    if not ids and not problems:
        names = "/".join([*found.folders, *(["label"] if found.label_folder is not None else [])])
        problems.append(f"no complete {names} samples in {root}")
    return ids, labelled


def _read_labels(found: Found, labelled: list[str], labels: dict[str, Path], sizes: dict[str, tuple[int, int]],
                 validate: bool, problems: list[str]) -> tuple[dict[str, Annotation], tuple[str, ...], list[str]]:
    """Parse and check every label file: (id -> validated annotation, class names, clip notes)."""
    class_names = found.class_names
    raw: dict[str, Annotation] = {}
    for image_id in labelled:
        path = labels.get(image_id)
        if path is None:  # background: no objects, the image's own size
            raw[image_id] = Annotation(image_id, *sizes.get(image_id, (0, 0)))
            continue
        try:
            if found.label_format == "yolo":
                if class_names is None:
                    continue  # reported once below
                if image_id not in sizes:
                    continue  # the image did not decode: already a problem
                raw[image_id] = read_yolo(path, sizes[image_id], class_names, image_id)
            else:
                raw[image_id] = read_voc(path, image_id)
        except (ValueError, OSError, OverflowError) as err:
            problems.append(f"{path}: {err}")
    if class_names is None:
        if found.label_format == "yolo" and labelled:
            problems.append(f"YOLO labels in {found.label_folder} need a class list (class index -> name): "
                            "add classes.txt, one name per line")
        class_names = tuple(sorted({b.name for a in raw.values() for b in a.boxes}))
    annotations: dict[str, Annotation] = {}
    clip_notes: list[str] = []
    for image_id, ann in raw.items():
        where = labels.get(image_id, Path(image_id))
        size = sizes.get(image_id) if validate or found.label_format == "yolo" else None
        checked, box_problems, notes = check_annotation(ann, size, where, class_names=class_names)
        problems.extend(box_problems)
        clip_notes.extend(notes)
        annotations[image_id] = checked
    return annotations, class_names, clip_notes


def _given_splits(found: Found, ids: list[str], labelled: set[str], problems: list[str]
                  ) -> dict[str, list[str]] | None:
    """The dataset's split lists restricted to its labelled ids; listed ids that do not exist and ids in two
    lists are problems."""
    if found.split_lists is None:
        return None
    known = set(ids)
    first: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for name, listed in found.split_lists.items():
        missing = [i for i in listed if i not in known]
        if missing:
            where = " + ".join(map(str, found.split_sources.get(name, []))) or f"the {name} list"
            problems.append(f"{where} lists {len(missing)} id(s) with no complete sample: "
                            f"{', '.join(missing)}")
        for image_id in listed:
            if first.setdefault(image_id, name) != name:
                problems.append(f"id {image_id} is in both the {first[image_id]} and the {name} split list")
        out[name] = [i for i in listed if i in labelled]
    return {name: out.get(name, []) for name in (*SPLIT_NAMES, *(n for n in out if n not in SPLIT_NAMES))}
