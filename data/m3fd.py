"""Reader for the M3FD detection dataset in its native layout, with validation and scene-preserving splits.

Layout (TarDAL, CVPR 2022)::

    ROOT/Ir/<id>.<ext>          infrared, 1- or 3-channel, 8- or 16-bit (any extension in data.io.IMAGE_EXTENSIONS;
                                data.io.read_ir documents the 16-bit rule)
    ROOT/Vis/<id>.<ext>         visible, colour or grey
    ROOT/Annotation/<id>.xml    Pascal VOC, 1-based inclusive pixel boxes, classes :data:`M3FD_CLASSES`
    ROOT/meta/                  optional: train.txt, val.txt, test.txt (one id per line), scenario.json,
                                <scenario>.txt and <scenario>_<split>.txt id lists

:func:`load_m3fd` reads and validates everything up front and raises one :class:`data.errors.DatasetError`
naming every offending file: partners missing on either side (or a missing annotation), images that do not
decode, infrared/visible size mismatches, annotations that do not parse, unknown class names, an annotation
size that disagrees with the image, absurd boxes, split lists naming ids that do not exist, or one id in two
split lists.

Boxes a pixel or two outside the image (up to :data:`BOX_CLIP_TOLERANCE_PX`, e.g. a 0-based ``xmin = 0`` or
``xmax = width + 1``) are clipped to the image. That is reported with Python's ``warnings`` module
(category :class:`data.errors.DatasetWarning`, one warning per load listing every clipped box) so tests and callers can
capture or escalate it (``warnings.simplefilter("error", DatasetWarning)``). Images that are in no split list
are reported the same way, with a count.

Splits (see :mod:`data.splits`): the ``meta/{train,val,test}.txt`` lists as given; else the per-scenario
``meta/<scenario>_<split>.txt`` lists united; else a seeded split that keeps every scene of
``meta/scenario.json`` whole (stratified by scenario); else contiguous id blocks. ``split_info["method"]``
says which (``"meta-lists"``, ``"scenario-scenes"``, ``"id-blocks"``).

CLI: ``python -m data --dataset m3fd --root DIR --summary`` (or ``python -m data.m3fd --root DIR --summary``)
prints images and boxes per class per split and per scenario, and whether any scene crosses splits.

The checks themselves are every reader's (:mod:`data.datasets.checks`); this module only knows M3FD's layout,
its classes, its scenarios and its ``meta/`` files.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .datasets.base import CheckedDataset, format_summary, format_table  # noqa: F401  (re-exported)
from .datasets.checks import Found, build_dataset, read_split_lists
from .datasets.labels import BOX_CLIP_TOLERANCE_PX, check_annotation, read_id_list, read_voc  # noqa: F401
from .errors import DatasetError, DatasetWarning  # noqa: F401  (DatasetWarning: callers import it from here)
from .splits import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FRACTIONS,
    SPLIT_NAMES,
    SplitRule,
    frame_number,
    parse_scenario_json,
)

NAME = "m3fd"
IR_DIR, VIS_DIR, ANNOTATION_DIR, META_DIR = "Ir", "Vis", "Annotation", "meta"
# M3FD's six classes in the fixed order every detector export uses (TarDAL, CVPR 2022, M3FD benchmark).
M3FD_CLASSES: tuple[str, ...] = ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
# M3FD's four scenarios, in the order its paper reports them (scenario.json may add others; they are accepted).
M3FD_SCENARIOS: tuple[str, ...] = ("daytime", "night", "overcast", "challenge")

# The validated dataset every reader returns; the name stays for callers that type against it.
M3FDDataset = CheckedDataset


def is_m3fd_root(root: str | Path) -> bool:
    """True when ``root`` has the ``Ir/``, ``Vis/`` and ``Annotation/`` folders of M3FD's native layout."""
    root = Path(root)
    return all((root / name).is_dir() for name in (IR_DIR, VIS_DIR, ANNOTATION_DIR))


def find_m3fd(root: str | Path, *, name: str = NAME, folders: dict[str, str] | None = None) -> Found:
    """List an M3FD-layout folder (nothing checked yet): images, annotations, classes and ``meta/``.

    ``folders`` maps modality -> folder name (default ``{"ir": "Ir", "vis": "Vis"}``); the synthetic reader
    adds its extra bands this way.
    """
    root = Path(root)
    folders = folders or {"ir": IR_DIR, "vis": VIS_DIR}
    if not is_m3fd_root(root) or not all((root / f).is_dir() for f in folders.values()):
        missing = [f for f in (*folders.values(), ANNOTATION_DIR) if not (root / f).is_dir()]
        raise DatasetError(str(root), [f"not an M3FD-layout folder: missing {', '.join(f'{m}/' for m in missing)}"])
    found = Found(name=name, root=root, folders={m: root / f for m, f in folders.items()}, colour="vis",
                  label_folder=root / ANNOTATION_DIR, label_format="voc", class_names=M3FD_CLASSES,
                  scenario_order=M3FD_SCENARIOS)
    stems = {p.stem for folder in (*found.folders.values(), root / ANNOTATION_DIR) for p in folder.iterdir()}
    _read_meta(root, sorted(stems), found)
    return found


def load_m3fd(
    root: str | Path,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    validate: bool = True,
) -> CheckedDataset:
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
    rule = SplitRule(seed=seed, fractions=fractions, block_size=block_size, given_method="meta-lists")
    return build_dataset(find_m3fd(root), rule, validate=validate)


# ------------------------------------------------------------------------------------------------------ meta


def _read_meta(root: Path, ids: Sequence[str], found: Found) -> None:
    """Scenarios, scenes and split lists from ``ROOT/meta`` into ``found``; problems and notes appended."""
    meta_dir = root / META_DIR
    if not meta_dir.is_dir():
        return
    scenario_names = set(M3FD_SCENARIOS)
    scenario_sources: list[str] = []
    if (meta_dir / "scenario.json").is_file():
        scenario_names |= _read_scenario_json(meta_dir / "scenario.json", ids, found)
        scenario_sources.append("scenario.json")
    split_files, scenario_files = _classify_lists(meta_dir, scenario_names, found.notes)
    found.split_lists = read_split_lists(split_files, found.problems)
    if found.split_lists is not None:
        found.split_sources = {name: [str(p) for p in files] for name, files in split_files.items()}
    known, conflicts = set(ids), 0
    for scenario, path in scenario_files:
        scenario_sources.append(path.name)
        listed = (read_split_lists({"_": [path]}, found.problems) or {}).get("_", [])
        for image_id in known.intersection(listed):  # a list may cover more than is present
            if found.scenario.setdefault(image_id, scenario) != scenario:
                conflicts += 1
    if conflicts:
        found.notes.append(
            f"{meta_dir}: {conflicts} id(s) get different scenarios from different meta files; "
            "scenario.json wins, then the lists in name order"
        )
    found.split_details["scenario_sources"] = scenario_sources


def _read_scenario_json(path: Path, ids: Sequence[str], found: Found) -> set[str]:
    """Fill ``found`` with each id's scenario and scene from ``scenario.json``; returns the scenario names."""
    try:
        table = parse_scenario_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        found.problems.append(f"{path}: {err}")
        return set()
    found.scene_group = dict(table.group)
    for image_id in ids:
        frame = frame_number(image_id)
        if frame is not None and frame in table.scene:
            found.scenario[image_id] = table.scenario[frame]
            found.scene[image_id] = table.scene[frame]
    return set(table.scenario.values())


def _classify_lists(meta_dir: Path, scenario_names: set[str], notes: list[str]
                    ) -> tuple[dict[str, list[Path]], list[tuple[str, Path]]]:
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


# ------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data.m3fd --root DIR ...``: the data CLI with ``--dataset m3fd``."""
    from .__main__ import main as data_main

    return data_main(["--dataset", NAME, *(argv if argv is not None else sys.argv[1:])], prog="python -m data.m3fd")


if __name__ == "__main__":
    sys.exit(main())
