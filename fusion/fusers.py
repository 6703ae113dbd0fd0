"""The interface every fuser implements (simple baselines and DAE-Fuse alike) and the fuser registry.

A fuser maps an infrared image and the visible luma to a fused luma. Colour is handled once, here, for all
fusers: the field's standard is to fuse the luminance (Y of YCbCr) and keep the visible image's chroma
(Cb, Cr), see ``data.io.restore_colour``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from data.io import read_ir, read_visible, restore_colour
from data.types import Pair

from .registry import Registry


@runtime_checkable
class Fuser(Protocol):
    """Pair in, fused luma out.

    ``fuse_luma(ir, vis_y)`` takes float32 (H, W) arrays on the 0..255 scale (the infrared image and the visible
    luma) and returns a float32 (H, W) fused luma on the same scale; values outside 0..255 are clipped by the
    caller, never stretched. ``cache_key`` identifies the fuser's output for caching: two fusers with the same key
    must produce the same images. ``keeps_visible_chroma``: whether a colour visible image's Cb/Cr are restored
    around the fused luma (every real fusion); False for a single-modality infrared passthrough, which must not
    borrow anything from the visible image.
    """

    name: str
    keeps_visible_chroma: bool

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray: ...

    def cache_key(self) -> str: ...


# name -> factory(**kwargs) -> Fuser. Baselines take no arguments; checkpoint fusers take ``checkpoint=``.
FUSERS: Registry = Registry("fuser")


def create_fuser(name: str, **kwargs) -> Fuser:
    """Build a registered fuser, e.g. ``create_fuser("mean")`` or ``create_fuser("dae_fuse", checkpoint=path)``."""
    from . import baselines  # noqa: F401  (importing it registers the simple fusers)

    if name not in FUSERS:  # checkpoint fusers pull in torch: import them only when asked for
        from . import fuse  # noqa: F401
    return FUSERS.get(name)(**kwargs)


def fuse_arrays(fuser: Fuser, ir: np.ndarray, vis_y: np.ndarray, vis_bgr: np.ndarray | None) -> np.ndarray:
    """Fuse already-read arrays; returns the uint8 image to save (grey, or BGR with the visible chroma)."""
    if ir.shape != vis_y.shape:
        raise ValueError(f"infrared {ir.shape} and visible {vis_y.shape} sizes differ")
    fused = fuser.fuse_luma(ir.astype(np.float32, copy=False), vis_y.astype(np.float32, copy=False))
    return restore_colour(fused, vis_bgr if fuser.keeps_visible_chroma else None)


def fuse_pair(fuser: Fuser, pair: Pair) -> np.ndarray:
    """Read a pair from disk and fuse it; returns the uint8 image to save."""
    vis_y, vis_bgr = read_visible(pair.vis)
    return fuse_arrays(fuser, read_ir(pair.ir).astype(np.float32), vis_y, vis_bgr)


def output_path(out_dir: Path, stem: str) -> Path:
    """Where a fused image for ``stem`` is written: always an 8-bit PNG named by the source stem."""
    return Path(out_dir) / f"{stem}.png"
