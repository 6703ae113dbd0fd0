"""Plain data types shared by the readers, the detection export and the pipeline."""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


_TWO_BAND_COLOUR = "vis"


class Sources(dict):
    """modality name -> image file of one sample; read-only so that a Pair stays hashable and shareable."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a sample's sources are read-only; build a new Pair")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore[assignment]

    def __reduce__(self):  # pickle and deepcopy rebuild it whole instead of item by item
        return (Sources, (dict(self),))


@dataclass(frozen=True, init=False)
class Pair:
    """The co-registered images of one sample, by modality name (``{"ir": ..., "vis": ...}``, or with ``nir``,
    ``depth``, ...), matched by file stem.

    Build it as ``Pair(stem, {"ir": ir_path, "vis": vis_path}, colour="vis", meta={...})``. The two-band form
    ``Pair(stem, ir_path, vis_path[, meta])`` is kept for callers written before modalities had names; it means
    ``sources={"ir": ..., "vis": ...}``, colour ``"vis"``.

    Attributes:
        stem: the sample id.
        sources: modality name -> image file, in the dataset's modality order.
        colour: the modality whose chroma a fused image keeps (the visible camera), or None when no modality is
            colour (e.g. two thermal bands).
        meta: free-form facts about the sample (``scenario``, ``scene``); not part of equality.
    """

    stem: str
    sources: Mapping[str, Path]
    colour: str | None
    meta: dict = field(compare=False)

    def __init__(self, stem: str, sources: Mapping[str, str | Path] | str | Path, vis: str | Path | None = None,
                 meta: dict | None = None, *, colour: str | None | Any = ...):
        if isinstance(sources, Mapping):
            if vis is not None:
                raise TypeError("Pair(stem, sources, ...): give the images either as a mapping or as (ir, vis), not both")
            resolved = {str(name): Path(path) for name, path in sources.items()}
            colour = (_TWO_BAND_COLOUR if _TWO_BAND_COLOUR in resolved else None) if colour is ... else colour
        else:
            if vis is None:
                raise TypeError("Pair(stem, ir, vis): the two-band form needs both files")
            resolved = {"ir": Path(sources), "vis": Path(vis)}
            colour = _TWO_BAND_COLOUR if colour is ... else colour
        if not resolved:
            raise ValueError(f"Pair '{stem}' has no sources")
        if colour is not None and colour not in resolved:
            raise ValueError(f"Pair '{stem}': colour modality '{colour}' is not among its sources ({', '.join(resolved)})")
        object.__setattr__(self, "stem", stem)
        object.__setattr__(self, "sources", Sources(resolved))
        object.__setattr__(self, "colour", colour)
        object.__setattr__(self, "meta", dict(meta or {}))

    @classmethod
    def two_band(cls, stem: str, ir: str | Path, vis: str | Path, meta: dict | None = None) -> "Pair":
        """An infrared/visible pair, the visible image in colour."""
        return cls(stem, {"ir": ir, "vis": vis}, meta=meta, colour=_TWO_BAND_COLOUR)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def source(self, modality: str) -> Path:
        """The file of one modality; a KeyError naming the modalities this sample has."""
        try:
            return self.sources[modality]
        except KeyError:
            raise KeyError(f"sample '{self.stem}' has no '{modality}' image; it has: {', '.join(self.sources)}") from None

    @property
    def ir(self) -> Path:
        """The ``ir`` image (two-band callers)."""
        return self.source("ir")

    @property
    def vis(self) -> Path:
        """The ``vis`` image (two-band callers)."""
        return self.source("vis")

    def __hash__(self) -> int:
        return hash((self.stem, tuple(self.sources.items()), self.colour))

    def __repr__(self) -> str:
        files = ", ".join(f"{k}={str(v)!r}" for k, v in self.sources.items())
        return f"Pair({self.stem!r}, {files}, colour={self.colour!r})"


def __getattr__(name: str) -> Any:
    # The class list belongs to a dataset (``dataset.class_names``); this alias serves callers not yet moved.
    if name == "CLASS_NAMES":
        warnings.warn("data.types.CLASS_NAMES is deprecated: use dataset.class_names (M3FD's list is "
                      "data.m3fd.M3FD_CLASSES)", DeprecationWarning, stacklevel=2)
        from .m3fd import M3FD_CLASSES

        return M3FD_CLASSES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
