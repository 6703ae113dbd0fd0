"""Training data for DAE-Fuse: which pairs to train and validate on, and paired random crops.

* ``resolve_training_pairs(root, cfg)``: an M3FD-layout root gives its train and val splits (``data.m3fd``); any
  other root is a paired folder (``data.paired``), with the role of each folder set by ``cfg.ir_dir`` /
  ``cfg.vis_dir`` or recognised by name (medical sets: the colour image plays "vis" so that its chroma is kept:
  CT "ir" and MRI "vis"; MRI "ir" and PET/SPECT "vis"; see ``data.paired``) and a deterministic validation subset.
* ``PairedCropDataset``: the same random crop and flips on both images (albumentations with ``additional_targets``),
  reproducible from (seed, epoch, index) alone, so a resumed run sees exactly the crops of an uninterrupted one
  and the result does not depend on the number of loader workers.
* ``load_validation_images``: a few validation pairs, downscaled, for per-epoch metrics and sample images.
* N modalities (a model of ``modalities`` other than ('ir', 'vis')): ``resolve_multimodal_roots`` (roots with one
  folder per modality they have; a root may lack some), ``MultiModalCropDataset`` (crops of every modality and a
  ``present`` mask, with modality dropout) and ``load_validation_samples``.

Images are the fusers' inputs: the infrared image as read by ``data.io.read_ir`` and the visible *luma*
(``data.io.read_visible``), both float32 in [0, 1].
"""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# albumentations asks pypi.org for a newer version at import unless told not to; nothing here may use the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.errors import DatasetError
from data.io import read_ir, read_visible
from data.m3fd import is_m3fd_root
from data.paired import find_pairs, resolve_pair_dirs
from data.types import Pair

from .config import DataConfig

LOGGER = logging.getLogger(__name__)


def split_validation(pairs: Sequence[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """Hold out about ``fraction`` of the pairs, evenly spread over the sorted list (deterministic).

    At least one pair is held out and at least one kept; a single pair serves as both.
    """
    pairs = list(pairs)
    if len(pairs) < 2:
        return pairs, pairs
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    val_idx = set(np.linspace(0, len(pairs) - 1, n_val).round().astype(int).tolist())
    return [p for i, p in enumerate(pairs) if i not in val_idx], [p for i, p in enumerate(pairs) if i in val_idx]


def resolve_training_pairs(root: str | Path, cfg: DataConfig, split: str = "train") -> tuple[list[Pair], list[Pair]]:
    """(train pairs, validation pairs) for ``--data root``; every problem is reported before any training.

    An M3FD root trains on its ``split`` and validates on its "val" split (or on a held-out part of ``split`` when
    that is "val" or "val" is empty). A paired folder has no splits: ``split`` must be "train", and
    ``cfg.val_fraction`` of its pairs are held out.
    """
    root = Path(root)
    if cfg.dataset is not None or (cfg.ir_dir is None and cfg.vis_dir is None and is_m3fd_root(root)):
        from data.datasets import DatasetSpecError, load_dataset

        try:
            dataset = load_dataset(cfg.dataset or "m3fd", root, **cfg.dataset_options)
        except DatasetSpecError as err:
            raise DatasetError(str(root), [str(err)]) from None
        if not dataset.splits.get(split):
            have = ", ".join(f"{name} {len(ids)}" for name, ids in dataset.splits.items())
            raise DatasetError(str(root), [f"split '{split}' is empty or missing; the dataset has: {have}"])
        train = list(dataset.pairs(split))
        val = list(dataset.pairs("val")) if split != "val" else []
        if not val:
            LOGGER.warning("no separate val split for %s: holding out part of '%s' for validation", root, split)
            return split_validation(train, cfg.val_fraction)
        return train, val
    if split != "train":
        raise ValueError(f"{root} is a paired folder without splits: cannot train on split '{split}'")
    ir_dir, vis_dir = resolve_pair_dirs(root, cfg.ir_dir, cfg.vis_dir)  # refuses one folder in both roles
    return split_validation(find_pairs(ir_dir, vis_dir), cfg.val_fraction)


def resolve_training_roots(
    roots: str | Path | Sequence[str | Path], cfg: DataConfig, split: str = "train"
) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, validation pairs) over several roots, each resolved by ``resolve_training_pairs``.

    Every root's problems are collected and raised together before any training. Validation pairs are interleaved
    root by root, so the few pairs scored per epoch (``cfg.val_max_pairs``) come from every root, not the first.
    """
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    if not roots:
        raise ValueError("no training data roots given")
    duplicates = sorted({str(r) for r in roots if [x.resolve() for x in roots].count(r.resolve()) > 1})
    if duplicates:
        raise DatasetError(", ".join(duplicates), ["the same root is given more than once (its pairs would count twice)"])
    train: list[Pair] = []
    vals: list[list[Pair]] = []
    problems: list[str] = []
    for root in roots:
        try:
            t, v = resolve_training_pairs(root, cfg, split)
        except DatasetError as err:
            problems += [f"{root}: {p}" for p in err.problems]
            continue
        except ValueError as err:
            problems.append(str(err))
            continue
        train += t
        vals.append(v)
    if problems:
        raise DatasetError(", ".join(map(str, roots)), problems)
    val = [p for group in itertools.zip_longest(*vals) for p in group if p is not None]
    return train, val


def seed_transforms(transform: A.Compose, seed: int, epoch: int, index: int, extra: int = 0) -> np.ndarray:
    """Seed ``transform`` and each of its transforms from (seed, epoch, index), each its own stream (one shared seed
    would correlate e.g. the flip with the crop position), so an item's augmentation depends on nothing else.
    Returns ``extra`` further seeds of the same sequence for the caller's own draws."""
    n = len(transform.transforms)
    seeds = np.random.SeedSequence([seed, epoch, index]).generate_state(n + 1 + extra)
    transform.set_random_seed(int(seeds[0]))
    for step, step_seed in zip(transform.transforms, seeds[1:n + 1]):
        step.set_random_seed(int(step_seed))
    return seeds[n + 1:]


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(ir, visible luma), float32 (H, W) in [0, 1]."""
    ir = read_ir(pair.ir).astype(np.float32) / 255.0
    vis_y, _ = read_visible(pair.vis)
    if ir.shape != vis_y.shape:
        raise ValueError(f"size mismatch for '{pair.stem}': {pair.ir} {ir.shape} vs {pair.vis} {vis_y.shape}")
    return ir, vis_y / 255.0


class PairedCropDataset(Dataset):
    """``crops_per_image`` random crops per pair and epoch, each ``{'ir', 'vis'}``: (1, crop, crop) in [0, 1].

    Images smaller than the crop are reflection-padded first. Call ``set_epoch`` before each epoch (the trainer
    does); the crop of item ``i`` is a function of (seed, epoch, i) only.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        crop_size: int,
        crops_per_image: int = 1,
        hflip: bool = True,
        vflip: bool = False,
        seed: int = 0,
        cache_images: bool = False,
        blackout_prob: float = 0.0,
    ):
        if not pairs:
            raise ValueError("no training pairs")
        self.pairs = list(pairs)
        self.crops_per_image = crops_per_image
        self.seed = seed
        self.epoch = 0
        self.cache: dict[tuple[Path, Path], tuple[np.ndarray, np.ndarray]] | None = {} if cache_images else None
        self.transform = A.Compose(
            [
                A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_REFLECT_101),
                A.RandomCrop(crop_size, crop_size),
                A.HorizontalFlip(p=0.5 if hflip else 0.0),
                A.VerticalFlip(p=0.5 if vflip else 0.0),
                # the same holes in both images (additional_targets): regions where both sources are black
                A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.2, 0.6), hole_width_range=(0.2, 0.6),
                                fill=0, p=blackout_prob),
            ],
            additional_targets={"vis": "image"},
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs) * self.crops_per_image

    def _images(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None:
            return read_pair(pair)
        key = (pair.ir, pair.vis)  # not the stem: two roots may both hold a "00001"
        if key not in self.cache:
            self.cache[key] = read_pair(pair)
        return self.cache[key]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ir, vis = self._images(self.pairs[index % len(self.pairs)])
        seed_transforms(self.transform, self.seed, self.epoch, index)
        out = self.transform(image=ir, vis=vis)
        return {
            "ir": torch.from_numpy(np.ascontiguousarray(out["image"]))[None],
            "vis": torch.from_numpy(np.ascontiguousarray(out["vis"]))[None],
        }


def load_validation_images(
    pairs: Sequence[Pair], max_pairs: int, max_side: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to ``max_pairs`` (stem, ir, vis) float32 [0, 1] images, area-downscaled so the longer side <= max_side.

    Downscaling keeps per-epoch validation cheap (fusion metrics cost seconds on a full M3FD frame); it is a
    model-selection signal, not the benchmark (``benchmarks/bench_quality.py`` scores full-size images).
    """
    out = []
    for pair in list(pairs)[:max_pairs]:
        ir, vis = read_pair(pair)
        scale = max_side / max(ir.shape)
        if scale < 1:
            size = (max(1, round(ir.shape[1] * scale)), max(1, round(ir.shape[0] * scale)))
            ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
            vis = cv2.resize(vis, size, interpolation=cv2.INTER_AREA)
        out.append((pair.stem, ir, vis))
    return out


# ----------------------------------------------------------------------------------------------------------------
# N modalities: samples map modality names to files; a root may lack some of the modalities (two-band pairs in a
# three-band run), which the sample's ``present`` mask says.

# modality -> sub-folder names looked for in a root, first found wins (``DataConfig.modality_dirs`` overrides).
# 'Ir'/'Vis'/'Nir' are the synthetic generator's M3FD-layout folders; 'ir'/'vi' RoadScene's (fusion_train).
DEFAULT_MODALITY_DIRS: dict[str, tuple[str, ...]] = {
    "vis": ("Vis", "vis", "vi", "visible"),
    "nir": ("Nir", "nir"),
    "lwir": ("lwir", "Ir", "ir", "thermal"),
    "ir": ("Ir", "ir", "lwir"),
}
# the modalities read as colour images whose luma is fused (the rest are read as grey, ``data.io.read_ir``)
COLOUR_MODALITIES: frozenset[str] = frozenset({"vis"})
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Sample:
    """One scene's images by modality name; a modality the root lacks is absent from ``paths``."""

    stem: str
    paths: dict[str, Path]


def _modality_dirs(root: Path, modalities: Sequence[str], cfg: DataConfig) -> dict[str, Path]:
    found = {}
    for m in modalities:
        for name in cfg.modality_dirs.get(m) or DEFAULT_MODALITY_DIRS.get(m, (m,)):
            if (root / name).is_dir():
                found[m] = root / name
                break
    return found


def resolve_multimodal_samples(
    root: str | Path, modalities: Sequence[str], cfg: DataConfig, split: str = "train"
) -> tuple[list[Sample], list[Sample]]:
    """(train samples, validation samples) of one root: a folder with one sub-folder per modality it has (names
    from ``cfg.modality_dirs`` or ``DEFAULT_MODALITY_DIRS``), images matched by stem. A root with ``meta/<split>.txt``
    (M3FD layout, e.g. the synthetic generator's) trains on that list and validates on ``meta/val.txt``; any other
    holds out ``cfg.val_fraction``. Every problem is collected into one DatasetError."""
    root = Path(root)
    dirs = _modality_dirs(root, modalities, cfg)
    problems = []
    if len(dirs) < 2:
        problems.append(f"needs folders of at least two of the modalities {list(modalities)}, found "
                        f"{sorted(dirs) or 'none'} (looked for {[cfg.modality_dirs.get(m) or DEFAULT_MODALITY_DIRS.get(m, (m,)) for m in modalities]})")
        raise DatasetError(str(root), problems)
    stems = {m: {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES} for m, d in dirs.items()}
    every = set().union(*(s.keys() for s in stems.values()))
    for m, s in stems.items():
        missing = sorted(every - set(s))
        if missing:
            problems.append(f"{len(missing)} image(s) missing in {dirs[m]} (e.g. {', '.join(missing[:3])})")
    if not every:
        problems.append("no images")
    if problems:
        raise DatasetError(str(root), problems)
    samples = {stem: Sample(stem, {m: stems[m][stem] for m in dirs}) for stem in sorted(every)}
    lists = {name: root / "meta" / f"{name}.txt" for name in (split, "val")}
    if lists[split].is_file():
        chosen = {name: [line.strip() for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []
                  for name, p in lists.items()}
        unknown = sorted(set(chosen[split] + chosen["val"]) - set(samples))
        if unknown:
            raise DatasetError(str(root), [f"{len(unknown)} listed id(s) have no images (e.g. {', '.join(unknown[:3])})"])
        train = [samples[i] for i in chosen[split]]
        val = [samples[i] for i in chosen["val"]] if split != "val" else []
        return (train, val) if val else split_validation(train, cfg.val_fraction)
    if split != "train":
        raise ValueError(f"{root} has no meta/{split}.txt: cannot train on split '{split}'")
    return split_validation(list(samples.values()), cfg.val_fraction)


def resolve_multimodal_roots(
    roots: Sequence[str | Path], modalities: Sequence[str], cfg: DataConfig, split: str = "train"
) -> tuple[list[Sample], list[Sample]]:
    """``resolve_multimodal_samples`` over several roots, pooled; validation interleaved root by root; every root's
    problems in one DatasetError."""
    train: list[Sample] = []
    vals: list[list[Sample]] = []
    problems: list[str] = []
    for root in roots:
        try:
            t, v = resolve_multimodal_samples(root, modalities, cfg, split)
        except DatasetError as err:
            problems += [f"{root}: {p}" for p in err.problems]
            continue
        except ValueError as err:
            problems.append(str(err))
            continue
        train += t
        vals.append(v)
    if problems:
        raise DatasetError(", ".join(map(str, roots)), problems)
    return train, [s for group in itertools.zip_longest(*vals) for s in group if s is not None]


def read_sample(sample: Sample, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """The sample's images by modality (float32 (H, W) in [0, 1]; colour modalities as luma); absent ones left out.
    Images of one sample of different sizes are a ValueError naming them."""
    images = {}
    for m in modalities:
        if m not in sample.paths:
            continue
        path = sample.paths[m]
        grey = read_visible(path)[0] if m in COLOUR_MODALITIES else read_ir(path).astype(np.float32)
        images[m] = grey.astype(np.float32) / np.float32(255.0)
    if len({x.shape for x in images.values()}) > 1:
        sizes = ", ".join(f"{m} {x.shape} ({sample.paths[m]})" for m, x in images.items())
        raise ValueError(f"size mismatch for '{sample.stem}': {sizes}")
    return images


class MultiModalCropDataset(Dataset):
    """``PairedCropDataset`` for N modalities: items ``{m: (1, crop, crop) for m in modalities, 'present': (N,)
    bool}``; a modality the sample lacks is zeros and not present.

    Modality dropout (``modality_dropout``): with that probability a crop loses one of its present modalities,
    drawn at random (never below two present), so the model learns to fuse every subset it may be given (a camera
    that fails). Crops, flips and dropout are functions of (seed, epoch, index) only, as in ``PairedCropDataset``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        modalities: Sequence[str],
        crop_size: int,
        crops_per_image: int = 1,
        hflip: bool = True,
        vflip: bool = False,
        seed: int = 0,
        cache_images: bool = False,
        modality_dropout: float = 0.0,
    ):
        if not samples:
            raise ValueError("no training samples")
        self.samples = list(samples)
        self.modalities = tuple(modalities)
        self.crops_per_image = crops_per_image
        self.seed = seed
        self.epoch = 0
        self.modality_dropout = modality_dropout
        self.cache: dict[str, dict[str, np.ndarray]] | None = {} if cache_images else None
        first, *rest = self.modalities
        self.transform = A.Compose(
            [
                A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_REFLECT_101),
                A.RandomCrop(crop_size, crop_size),
                A.HorizontalFlip(p=0.5 if hflip else 0.0),
                A.VerticalFlip(p=0.5 if vflip else 0.0),
            ],
            additional_targets={m: "image" for m in rest},
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples) * self.crops_per_image

    def _images(self, sample: Sample) -> dict[str, np.ndarray]:
        if self.cache is None:
            return read_sample(sample, self.modalities)
        key = "\0".join(str(p) for p in sample.paths.values())  # not the stem: two roots may share one
        if key not in self.cache:
            self.cache[key] = read_sample(sample, self.modalities)
        return self.cache[key]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        images = self._images(self.samples[index % len(self.samples)])
        shape = next(iter(images.values())).shape
        present = [m in images for m in self.modalities]
        filled = {m: images.get(m, np.zeros(shape, np.float32)) for m in self.modalities}
        (dropout_seed,) = seed_transforms(self.transform, self.seed, self.epoch, index, extra=1)
        first, *rest = self.modalities
        out = self.transform(image=filled[first], **{m: filled[m] for m in rest})
        out[first] = out.pop("image")
        rng = np.random.default_rng(int(dropout_seed))
        if sum(present) > 2 and rng.random() < self.modality_dropout:
            drop = int(rng.choice([i for i, p in enumerate(present) if p]))
            present[drop] = False
        item = {m: torch.from_numpy(np.ascontiguousarray(out[m]))[None] * float(present[i])
                for i, m in enumerate(self.modalities)}
        item["present"] = torch.tensor(present, dtype=torch.bool)
        return item


def load_validation_samples(
    samples: Sequence[Sample], modalities: Sequence[str], max_samples: int, max_side: int
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Up to ``max_samples`` (stem, {modality: float32 [0, 1] image}) area-downscaled so the longer side <= max_side
    (as ``load_validation_images``); absent modalities left out."""
    out = []
    for sample in list(samples)[:max_samples]:
        images = read_sample(sample, modalities)
        h, w = next(iter(images.values())).shape
        scale = max_side / max(h, w)
        if scale < 1:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            images = {m: cv2.resize(x, size, interpolation=cv2.INTER_AREA) for m, x in images.items()}
        out.append((sample.stem, images))
    return out
