"""Paired-folder reader for the fusion test sets (``TNO/{ir,vi}``, ``RoadScene/{ir,vi}``, ``MRI_CT/{CT,MRI}`` ...).

Pairs are matched by file stem. Which folder plays the infrared role and which the visible role is data. For the
medical sets the colour image takes the "vis" role, because fusers keep the chroma of that role's image: MRI-CT
pairs CT ("ir", as in the reference evaluator's ``test_MIF.py``) with MRI ("vis"); MRI-PET and MRI-SPECT pair MRI
("ir") with the colour PET or SPECT image ("vis"), whose colour would otherwise be lost. The fusion metrics are
symmetric in the two sources, so the roles change no score.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import DatasetError
from .io import IMAGE_EXTENSIONS
from .probe import probe_images
from .types import Pair

# Folder names recognised for each role when a dataset root is given without explicit folder names; the first
# present name wins. MRI is in both lists, last: beside CT it plays "vis" (CT comes first for "ir"), beside PET or
# SPECT it plays "ir" (they come first for "vis", to keep their colour).
IR_DIR_NAMES: tuple[str, ...] = ("ir", "Ir", "IR", "infrared", "Infrared", "CT", "MRI")
VIS_DIR_NAMES: tuple[str, ...] = ("vi", "Vis", "vis", "VI", "visible", "Visible", "PET", "SPECT", "MRI")


def images_by_stem(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Image files of ``folder`` by stem; a stem used twice (e.g. ``a.png`` and ``a.jpg``) is a problem. Hidden
    files are not images of the set (macOS ``._a.png`` metadata, a killed writer's ``.a.png.<pid>.x.tmp.png``)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            problems.append(f"two images share the stem '{path.stem}': {found[path.stem]} and {path}")
            continue
        found[path.stem] = path
    return found


def resolve_pair_dirs(root: str | Path, ir_dir: str | None = None, vis_dir: str | None = None) -> tuple[Path, Path]:
    """Find the two role folders under ``root``: the given names, or the first recognised name for each role."""
    root = Path(root)

    def pick(given: str | None, names: Sequence[str]) -> Path | None:
        if given is not None:
            return root / given
        return next((root / name for name in names if (root / name).is_dir()), None)

    ir, vis = pick(ir_dir, IR_DIR_NAMES), pick(vis_dir, VIS_DIR_NAMES)
    problems = [f"no {role} folder: expected one of {', '.join(names)} (or name it explicitly)"
                for found, role, names in ((ir, "infrared", IR_DIR_NAMES), (vis, "visible", VIS_DIR_NAMES))
                if found is None]
    if not problems and ir.resolve() == vis.resolve():
        # e.g. a root holding only an MRI folder (recognised for both roles): every image would pair with itself
        problems.append(f"the folder {ir} would play both the infrared and the visible role; name the two folders")
    if problems:
        raise DatasetError(str(root), problems)
    return ir, vis


def match_pairs(ir_dir: str | Path, vis_dir: str | Path) -> tuple[list[Pair], list[str]]:
    """Match the images of two folders by stem, without decoding them: (the stems found on both sides, every
    problem: a missing or shared folder, a stem on one side only or used twice in one folder, no pair at all)."""
    ir_dir, vis_dir = Path(ir_dir), Path(vis_dir)
    problems = [f"folder does not exist: {folder}" for folder in (ir_dir, vis_dir) if not folder.is_dir()]
    if problems:
        return [], problems
    if ir_dir.resolve() == vis_dir.resolve():
        return [], [f"{ir_dir} is given for both the infrared and the visible role: every image would pair "
                    "with itself"]
    ir_files = images_by_stem(ir_dir, problems)
    vis_files = images_by_stem(vis_dir, problems)
    for stem in sorted(set(ir_files) - set(vis_files)):
        problems.append(f"{ir_files[stem]} has no partner in {vis_dir}")
    for stem in sorted(set(vis_files) - set(ir_files)):
        problems.append(f"{vis_files[stem]} has no partner in {ir_dir}")
    stems = sorted(set(ir_files) & set(vis_files))
    if not stems and not problems:
        problems.append(f"no image pairs found in {ir_dir} and {vis_dir}")
    return [Pair(stem, {"ir": ir_files[stem], "vis": vis_files[stem]}) for stem in stems], problems


def find_pairs(ir_dir: str | Path, vis_dir: str | Path, *, check_images: bool = True) -> list[Pair]:
    """Match the images of two folders by stem (``match_pairs``) and validate them.

    Checks, all before returning: both folders exist, every stem exists on both sides, stems are unique per
    folder, every image decodes, and the two images of a pair have the same size. Every problem found is
    reported in one ``DatasetError``.
    """
    pairs, problems = match_pairs(ir_dir, vis_dir)
    if check_images:
        problems.extend(check_pair_images(pairs))
    if problems:
        raise DatasetError(f"pairs {ir_dir} + {vis_dir}", problems)
    return pairs


def check_pair_images(pairs: Sequence[Pair]) -> list[str]:
    """Decode every image of every pair (all its sources); return one problem line per unreadable file or size
    mismatch."""
    return check_image_groups([(pair.stem, tuple(pair.sources.values())) for pair in pairs])[0]


def check_image_groups(groups: Sequence[tuple[str, Sequence[Path]]]
                       ) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Decode every file once (a file in several groups too) and check each group's images share one size.

    ``groups`` are (stem, paths) such as a pair or a (fused, ir, vis) triple. Returns (one problem line per
    unreadable file and per group whose decodable images differ in size, {stem: (width, height)} for every group
    whose images all decode with one size).
    """
    paths = list(dict.fromkeys(path for _, group in groups for path in group))
    sizes = probe_images(paths)
    problems = [f"unreadable image {path}: {sizes[path]}" for path in paths if isinstance(sizes[path], str)]
    agreed: dict[str, tuple[int, int]] = {}
    for stem, group in groups:
        readable = [(path, sizes[path]) for path in group if isinstance(sizes[path], tuple)]
        distinct = {size for _, size in readable}
        if len(distinct) > 1:
            listed = ", ".join(f"{path} is {w}x{h}" for path, (w, h) in readable)
            problems.append(f"size mismatch for '{stem}': {listed}")
        elif len(readable) == len(group):
            agreed[stem] = distinct.pop()
    return problems, agreed
