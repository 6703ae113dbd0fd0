"""Training data for DAE-Fuse: which pairs to train and validate on, and paired random crops.

* ``resolve_training_pairs(root, cfg)``: an M3FD-layout root gives its train and val splits (``data.m3fd``); any
  other root is a paired folder (``data.paired``), with the role of each folder set by ``cfg.ir_dir`` /
  ``cfg.vis_dir`` or recognised by name (medical sets: the colour image plays "vis" so that its chroma is kept:
  CT "ir" and MRI "vis"; MRI "ir" and PET/SPECT "vis"; see ``data.paired``) and a deterministic validation subset.
* ``PairedCropDataset``: the same random crop and flips on both images (albumentations with ``additional_targets``),
  reproducible from (seed, epoch, index) alone, so a resumed run sees exactly the crops of an uninterrupted one
  and the result does not depend on the number of loader workers.
* ``load_validation_images``: a few validation pairs, downscaled, for per-epoch metrics and sample images.

Images are the fusers' inputs: the infrared image as read by ``data.io.read_ir`` and the visible *luma*
(``data.io.read_visible``), both float32 in [0, 1].
"""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
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
from data.m3fd import is_m3fd_root, load_m3fd
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
    if cfg.ir_dir is None and cfg.vis_dir is None and is_m3fd_root(root):
        dataset = load_m3fd(root)
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

    def _seed_transforms(self, index: int) -> None:
        # Each transform gets its own stream: one shared seed would correlate e.g. the flip with the crop position.
        n = len(self.transform.transforms) + 1
        seeds = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(n)
        self.transform.set_random_seed(int(seeds[0]))
        for transform, seed in zip(self.transform.transforms, seeds[1:]):
            transform.set_random_seed(int(seed))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ir, vis = self._images(self.pairs[index % len(self.pairs)])
        self._seed_transforms(index)
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
