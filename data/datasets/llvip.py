"""Reader for LLVIP (Jia et al., ICCV Workshops 2021) in its own layout.

Layout::

    ROOT/infrared/{train,test}/<id>.jpg   infrared (stored as 3-channel JPEG)
    ROOT/visible/{train,test}/<id>.jpg    visible, colour
    ROOT/Annotations/<id>.xml             Pascal VOC, one class: person

Ids are six digits: the first two name the scene (the place the camera stood: ``01xxxx`` is one scene), the
other four the frame. The test split is LLVIP's own (``test/``); val is carved from train (``val_fraction`` of
its labelled ids, whole scenes, seeded; :func:`data.splits.carve_val`). Where train holds a single scene (the
shared 44-pair sample) no val can keep scenes whole: val is then the scene's last frames and a
:class:`data.errors.DatasetWarning` and ``split_info["carved_val"]["shares_scenes_with_train"]`` say so.

Label quirks handled (see the sample's SOURCE.md): ids without an annotation file are *unlabelled* (LLVIP's
public copies lack some labels; such an image is not an image without people), so they are in no split and a
warning lists them, while fusion may still use them; the XML's ``<depth>1</depth>`` is ignored (the infrared
JPEGs have three identical channels and are read as grey); CRLF or LF line endings, with or without an XML
declaration, and any ``<folder>`` parse the same. Overlapping boxes on one person (``010020``) are kept as
annotated: dropping one would be a guess.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DatasetError
from ..paired import images_by_stem
from ..splits import SplitRule
from .base import CheckedDataset
from .checks import Found, build_dataset

NAME = "llvip"
INFRARED_DIR, VISIBLE_DIR, ANNOTATION_DIR = "infrared", "visible", "Annotations"
GIVEN_SPLITS: tuple[str, ...] = ("train", "test")
LLVIP_CLASSES: tuple[str, ...] = ("person",)
# Share of train's labelled ids carved out as val. LLVIP gives no val; 15% keeps most of train for the detector
# while leaving val a few scenes on the full set (and 5 images on the 30 labelled train ids of the sample).
DEFAULT_VAL_FRACTION = 0.15
_ID = re.compile(r"(\d{2})(\d{4})")


def scene_of_id(image_id: str) -> str | None:
    """LLVIP's scene of an id: its first two digits (``"010023"`` -> ``"01"``); None for another id form."""
    match = _ID.fullmatch(image_id)
    return match.group(1) if match else None


def is_llvip_root(root: str | Path) -> bool:
    root = Path(root)
    return all((root / m / s).is_dir() for m in (INFRARED_DIR, VISIBLE_DIR) for s in GIVEN_SPLITS)


def find_llvip(root: str | Path) -> Found:
    """List an LLVIP-layout folder (nothing checked yet)."""
    root = Path(root)
    missing = [f"{m}/{s}/" for m in (INFRARED_DIR, VISIBLE_DIR) for s in GIVEN_SPLITS if not (root / m / s).is_dir()]
    missing += [f"{ANNOTATION_DIR}/"] if not (root / ANNOTATION_DIR).is_dir() else []
    if missing:
        raise DatasetError(str(root), [f"not an LLVIP-layout folder: missing {', '.join(missing)}"])
    found = Found(name=NAME, root=root,
                  folders={"ir": tuple(root / INFRARED_DIR / s for s in GIVEN_SPLITS),
                           "vis": tuple(root / VISIBLE_DIR / s for s in GIVEN_SPLITS)},
                  colour="vis", label_folder=root / ANNOTATION_DIR, label_format="voc", class_names=LLVIP_CLASSES,
                  missing_labels="unlabelled")
    # The split is the folder an id's images sit in; both modalities must agree (duplicates and missing
    # partners are the shared checks' to report).
    split_by: dict[str, dict[str, str]] = {}
    for modality in (INFRARED_DIR, VISIBLE_DIR):
        for split in GIVEN_SPLITS:
            for stem in images_by_stem(root / modality / split, []):
                split_by.setdefault(stem, {}).setdefault(modality, split)
    lists: dict[str, list[str]] = {s: [] for s in GIVEN_SPLITS}
    for stem, where in sorted(split_by.items()):
        if len(set(where.values())) > 1:
            found.problems.append(f"'{stem}' is in {INFRARED_DIR}/{where[INFRARED_DIR]}/ but in "
                                  f"{VISIBLE_DIR}/{where[VISIBLE_DIR]}/")
        elif len(where) == 2:
            lists[where[INFRARED_DIR]].append(stem)
    found.split_lists = lists
    found.split_sources = {s: [f"{INFRARED_DIR}/{s}", f"{VISIBLE_DIR}/{s}"] for s in GIVEN_SPLITS}
    found.scene = {stem: scene for stem in split_by if (scene := scene_of_id(stem)) is not None}
    return found


def load_llvip(
    root: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    validate: bool = True,
) -> CheckedDataset:
    """Read and validate an LLVIP-layout dataset: test as given, val carved from train keeping scenes whole.

    Args:
        root: folder with ``infrared/``, ``visible/`` and ``Annotations/``.
        seed: seed of the val carve.
        val_fraction: share of train's labelled ids that becomes val.
        validate: decode every image (the default); see :func:`data.datasets.checks.build_dataset`.

    Raises:
        DatasetError: every problem the shared checks find, and ids whose two images sit in different splits.

    Warns:
        DatasetWarning: unlabelled ids; val sharing a scene with train; boxes clipped into the image.
    """
    rule = SplitRule(seed=seed, given_method="llvip-folders", carve_val=val_fraction)
    return build_dataset(find_llvip(root), rule, validate=validate)
