"""Plain data types shared by the readers, the detection export and the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# M3FD's six classes in the fixed order every detector export uses (TarDAL, CVPR 2022, M3FD benchmark).
CLASS_NAMES: tuple[str, ...] = ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")


@dataclass(frozen=True)
class Box:
    """One object box in Pascal VOC convention: 1-based, inclusive pixel coordinates.

    A box covering pixel columns 0..9 (0-based) has xmin=1, xmax=10; its width in pixels is xmax - xmin + 1.
    """

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return self.xmax - self.xmin + 1

    @property
    def height(self) -> float:
        return self.ymax - self.ymin + 1


@dataclass(frozen=True)
class Annotation:
    """The objects of one image, with the image size the annotation file declares."""

    image_id: str
    width: int
    height: int
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Pair:
    """An infrared/visible pair (for medical sets, the two modalities in those roles) matched by file stem."""

    stem: str
    ir: Path
    vis: Path
    meta: dict = field(default_factory=dict, compare=False)
