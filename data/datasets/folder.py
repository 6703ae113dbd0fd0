"""Reader for a team's own data: one folder per modality, VOC or YOLO labels, optional class list, split lists
and scenes.

Layout (every name but the modality folders' can be changed with an option)::

    ROOT/<modality>/<id>.<ext>   one folder per modality, named as you name the modality (ir/, vis/, nir/,
                                 thermal/, ...); the images of one id share its file stem and its size
    ROOT/labels/<id>.xml         Pascal VOC (1-based, inclusive pixel boxes), or
    ROOT/labels/<id>.txt         YOLO: "class cx cy w h" per line, normalised to 0..1
    ROOT/classes.txt             class names, one per line, in label-index order (required for YOLO, here or
                                 as labels/classes.txt where labelImg writes it; for VOC the names found,
                                 sorted, when absent)
    ROOT/splits/{train,val,test}.txt   optional: one id per line; without them a split is made here (seeded,
                                 whole scenes or id blocks); with train but no val, val is carved from train
    ROOT/scenes.csv              optional: "id,scene[,scenario]" rows; a scene never crosses splits and
                                 per-scenario scores use the scenario

Options (``load_folder(root, **options)``, or ``--dataset-option KEY=VALUE`` on the command line):
``modalities`` (``"ir,vis,nir"``, or ``"ir=Thermal,vis=RGB"`` to map names to folders; default every
sub-folder holding images, sorted), ``colour`` (the colour modality, ``none`` for none; default ``vis``,
``rgb``, ``visible`` or ``color`` when present), ``labels``, ``classes``, ``splits``, ``scenes`` (names under
ROOT), ``missing_labels`` (``error``, ``unlabelled``: in no split, or ``background``: no objects),
``val_fraction``, ``seed``, ``fractions``, ``block_size``, ``validate``.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DatasetError
from ..io import IMAGE_EXTENSIONS
from ..splits import DEFAULT_BLOCK_SIZE, DEFAULT_FRACTIONS, SPLIT_NAMES, SplitRule
from .base import CheckedDataset
from .checks import NOT_LABELS, Found, build_dataset, read_split_lists
from .labels import LABEL_FORMATS, read_class_list

NAME = "folder"
COLOUR_NAMES: tuple[str, ...] = ("vis", "rgb", "visible", "color", "colour")
DEFAULT_VAL_FRACTION = 0.15


def parse_modalities(spec: str | Sequence[str] | Mapping[str, str] | None, root: Path,
                     reserved: set[str]) -> tuple[dict[str, str], list[str]]:
    """modality -> folder name from the option (see the module docstring); (mapping, problems)."""
    if spec is None or spec == "":
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in reserved
                         and not p.name.startswith(".")
                         and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.iterdir()))
        mapping = {name: name for name in folders}
    elif isinstance(spec, Mapping):
        mapping = {str(k): str(v) for k, v in spec.items()}
    else:
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
        mapping = {}
        for item in filter(None, items):
            name, _, folder = item.partition("=")
            mapping[name.strip()] = folder.strip() or name.strip()
    problems = [f"modality folder {root / folder}/ does not exist" for folder in mapping.values()
                if not (root / folder).is_dir()]
    if len(mapping) < 2 and not problems:
        problems.append(f"found {len(mapping)} modality folder(s) in {root} ({', '.join(mapping) or 'none'}): "
                        "fusion needs two or more; name them with modalities=ir,vis,...")
    return mapping, problems


def load_folder(
    root: str | Path,
    *,
    modalities: str | Sequence[str] | Mapping[str, str] | None = None,
    colour: str | None = "",
    labels: str = "labels",
    classes: str | Sequence[str] = "classes.txt",
    splits: str = "splits",
    scenes: str = "scenes.csv",
    missing_labels: str = "error",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    validate: bool = True,
) -> CheckedDataset:
    """Read and validate a folder dataset (layout and options in the module docstring).

    Raises:
        DatasetError: every problem found: the layout's (missing folders, a classes file that does not read,
            labels of two formats, a bad scenes.csv) and the shared checks'.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(str(root), [f"not a folder: {root}"])
    problems: list[str] = []
    folders, modality_problems = parse_modalities(modalities, root, {labels, splits})
    problems += modality_problems
    colour_name = _colour(colour, folders, problems)
    label_dir = root / labels
    label_format = "voc"
    if not label_dir.is_dir():
        problems.append(f"no label folder {label_dir}/ (name another with labels=NAME)")
    else:
        formats = {LABEL_FORMATS[p.suffix.lower()] for p in label_dir.iterdir() if p.is_file()
                   and not p.name.startswith(".") and p.suffix.lower() in LABEL_FORMATS and p.name not in NOT_LABELS}
        if len(formats) > 1:
            problems.append(f"{label_dir}/ holds both VOC .xml and YOLO .txt labels: keep one format")
        label_format = formats.pop() if len(formats) == 1 else "voc"
    if classes == "classes.txt" and not (root / classes).is_file() and (label_dir / classes).is_file():
        classes = f"{labels}/{classes}"
    class_names = _classes(classes, root, problems)
    if problems:  # the layout itself is wrong: the shared checks would only repeat it
        raise DatasetError(str(root), problems)
    found = Found(name=NAME, root=root, folders={m: root / f for m, f in folders.items()}, colour=colour_name,
                  label_folder=label_dir, label_format=label_format, class_names=class_names,
                  missing_labels=missing_labels)
    split_dir = root / splits
    if split_dir.is_dir():
        files = {name: [split_dir / f"{name}.txt"] for name in SPLIT_NAMES if (split_dir / f"{name}.txt").is_file()}
        found.split_lists = read_split_lists(files, found.problems)
        found.split_sources = {name: [str(p) for p in paths] for name, paths in files.items()}
        found.notes += [f"{p} ignored: not train.txt, val.txt or test.txt" for p in sorted(split_dir.glob("*.txt"))
                        if p.stem not in SPLIT_NAMES]
    if (root / scenes).is_file():
        _read_scenes(root / scenes, found)
    rule = SplitRule(seed=seed, fractions=fractions, block_size=block_size, given_method="split-lists",
                     carve_val=val_fraction)
    return build_dataset(found, rule, validate=validate)


def _colour(colour: str | None, folders: Mapping[str, str], problems: list[str]) -> str | None:
    if colour is None or str(colour).lower() == "none":
        return None
    if colour == "":
        return next((name for name in COLOUR_NAMES if name in folders), None)
    if colour not in folders:
        problems.append(f"colour modality '{colour}' is not among the modalities ({', '.join(folders)})")
        return None
    return colour


def _classes(classes: str | Sequence[str], root: Path, problems: list[str]) -> tuple[str, ...] | None:
    """The class list: a file under ROOT (``*.txt``, ``*.names`` or a path; the default one may be absent:
    None, the VOC names found), or the names themselves (``"person,car"``)."""
    if not isinstance(classes, str):
        return tuple(str(c) for c in classes)
    if not (classes.endswith((".txt", ".names")) or "/" in classes):
        return tuple(c.strip() for c in classes.split(",") if c.strip())
    path = root / classes
    if path.is_file():
        try:
            return read_class_list(path)
        except (ValueError, OSError) as err:
            problems.append(str(err))
    elif classes != "classes.txt":
        problems.append(f"class list {path} does not exist")
    return None


def _read_scenes(path: Path, found: Found) -> None:
    """``id,scene[,scenario]`` rows (a header row starting with ``id`` is skipped) into ``found``."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        found.problems.append(f"{path}: {err}")
        return
    for number, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or (number == 1 and cells[0].lower() == "id"):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            found.problems.append(f"{path}: line {number}: expected id,scene[,scenario], got {','.join(row)!r}")
            continue
        image_id, scene = cells[0], cells[1]
        if found.scene.setdefault(image_id, scene) != scene:
            found.problems.append(f"{path}: line {number}: '{image_id}' is given two scenes")
        if len(cells) > 2 and cells[2]:
            found.scenario[image_id] = cells[2]
