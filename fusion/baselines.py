"""Simple fusers: ``ir``, ``vis``, ``mean``, ``max``.

They share the ``Fuser`` interface with DAE-Fuse. Like every fuser they fuse the luminance only: for a colour
visible image the fused image is Y (of YCbCr) from the fuser with the visible image's Cb/Cr restored, the field's
standard (``data.io.restore_colour``). Two exceptions make the single-modality rows honest: ``ir`` is the grey
infrared image (it borrows no visible chroma), and ``vis`` gives the visible image back unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .fusers import FUSERS

LumaRule = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BaselineFuser:
    """A fixed per-pixel rule on (ir, vis_y); no parameters, so its cache key is its name."""

    name: str
    rule: LumaRule
    keeps_visible_chroma: bool = True

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        return self.rule(ir, vis_y).astype(np.float32, copy=False)

    def cache_key(self) -> str:
        return f"baseline:{self.name}"


BASELINE_RULES: dict[str, LumaRule] = {
    "ir": lambda ir, vis: ir,
    "vis": lambda ir, vis: vis,
    "mean": lambda ir, vis: (ir + vis) * 0.5,
    "max": np.maximum,
}

# The one list of the simple fusers' names; the CLIs and the pipeline take theirs from here.
BASELINE_NAMES: tuple[str, ...] = tuple(BASELINE_RULES)

for _name, _rule in BASELINE_RULES.items():
    FUSERS.register(_name)(lambda _n=_name, _r=_rule: BaselineFuser(_n, _r, keeps_visible_chroma=_n != "ir"))
