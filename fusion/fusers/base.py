"""The interface every fuser implements (simple rules, DAE-Fuse, plug-ins alike) and the fuser registry.

A fuser maps a sample's images, by modality name, to one fused luma::

    fuse(images: Mapping[str, np.ndarray]) -> np.ndarray     # e.g. {"ir": ..., "vis": ...} or {"vis", "nir", "lwir"}

**Value domain** of what a fuser receives (``fuse_images`` guarantees it on every path through this module):
each image is float32 (H, W), all of one size, holding **whole numbers 0..255**: a grey source as stored (8 bits;
a 16-bit file keeps its upper byte), a colour source as its BT.601 luma (Y of YCbCr) **rounded half to even**, as
an 8-bit network was trained on and as the metrics read images (``data.io.read_gray_reference``). The fuser returns
float32 (H, W) on the same 0..255 scale; values outside are clipped, never stretched, and the result is rounded
to 8 bits when saved.

Colour is handled once, here, for all fusers: the field's standard is to fuse the luminance and keep the colour
image's chroma (Cb, Cr), see ``data.io.restore_colour``. Which modality is colour comes from the caller (the
dataset's ``Pair.colour``; ``DEFAULT_COLOUR`` = "vis" otherwise); a fuser says only whether it wants colour kept
(``keeps_visible_chroma``, True for every real fusion) and, for a single-modality passthrough, which modality it
passes (``single_modality``): the colour modality's passthrough gives its image back unchanged, any other is grey.

Which modalities a fuser takes: ``modalities`` (the exact set, in the fuser's role order, or None for any set)
and, optionally, ``check_sources(names) -> list[str]`` with one line per reason a set is refused. A set it refuses
is one clear ``FuserInputError`` before anything is read or fused.

Fusers are built by name with ``fusion.fusers.catalog.create_fuser``, which fills the registry ``FUSERS`` with
the built-in fusers and the installed plug-ins; this module holds the interface and the registry only, and
imports no fuser (nor torch).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from data.io import read_ir, read_visible, restore_colour
from data.registry import Registry

# The modality whose chroma is kept when the caller does not say (two-band data: the visible camera).
DEFAULT_COLOUR = "vis"
# The two-band set, in the order of the older ``fuse_luma(ir, vis_y)`` interface.
TWO_BAND: tuple[str, str] = ("ir", "vis")
# Names the value domain above in cache keys: images fused from unrounded visible lumas (before the domain was
# fixed) differ by a level here and there, so they are never passed off as today's.
INPUT_DOMAIN = "y8"


@runtime_checkable
class Fuser(Protocol):
    """Images by modality name in, fused luma out (the module docstring gives the value domain).

    ``fuse(images)`` takes {modality name: float32 (H, W) whole numbers 0..255}, one size, and returns a float32
    (H, W) fused luma on the same scale. ``modalities``: the exact set the fuser takes, in its role order, or None
    for any set (``check_sources`` may refine that). ``cache_key`` identifies the fuser's output for caching: two
    fusers with the same key must produce the same images. ``keeps_visible_chroma``: whether the colour modality's
    Cb/Cr are restored around the fused luma (every real fusion).
    """

    name: str
    modalities: tuple[str, ...] | None
    keeps_visible_chroma: bool

    def fuse(self, images: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def cache_key(self) -> str: ...


# name -> factory(**kwargs) -> Fuser. The rules take no arguments; DAE-Fuse takes ``checkpoint=``. Each module that
# defines fusers registers them when imported; ``fusion.fusers.catalog`` imports them all and adds the plug-ins.
FUSERS: Registry = Registry("fuser")


class FuserSpecError(ValueError):
    """A fuser cannot be built from what was given: an unknown name, a factory that does not import, a factory
    whose result is no fuser."""


class UnknownFuserError(FuserSpecError, KeyError):
    """No fuser of that name: a ``KeyError`` too, as the registry's own lookups raise."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


class FuserInputError(ValueError):
    """A fuser was given images it cannot fuse: another set of modalities than it takes, or images that differ in
    size or are not grey (H, W) arrays. The message names every offender."""


# --------------------------------------------------------------------------------------------------------------
# Sources of a sample
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceSet:
    """One sample's source files by modality name, for callers that hold no ``data.types.Pair`` (which carries the
    same three things)."""

    stem: str
    sources: Mapping[str, Path]
    colour: str | None = DEFAULT_COLOUR


def sources_of(pair: Any) -> dict[str, Path]:
    """{modality name: file} of a sample: its ``sources``, or (ir, vis) for a pair from before sources had names."""
    sources = getattr(pair, "sources", None)
    if sources is None:
        return {"ir": Path(pair.ir), "vis": Path(pair.vis)}
    return {str(name): Path(path) for name, path in sources.items()}


def colour_of(pair: Any, default: str | None = DEFAULT_COLOUR) -> str | None:
    """The sample's colour modality (``Pair.colour``), else ``default``."""
    return getattr(pair, "colour", default)


def modalities_read(fuser: Any, names: Sequence[str]) -> list[str]:
    """Which of a sample's modalities ``names`` the fuser reads: the ones it declares when the sample has them all
    and more (a two-band model on three-band data fuses its own two bands), else all of them."""
    declared = getattr(fuser, "modalities", None)
    if declared and set(declared) < set(names):
        return list(declared)
    return list(names)


def source_problems(fuser: Any, names: Sequence[str]) -> list[str]:
    """Why ``fuser`` cannot fuse the modality set ``names`` (empty: it can), after ``modalities_read``: its own
    ``check_sources`` when it has one, else its ``modalities`` (None: any non-empty set)."""
    names = modalities_read(fuser, names)
    own = getattr(fuser, "check_sources", None)
    if callable(own):
        return list(own(names))
    wanted = TWO_BAND if _two_band_only(fuser) else getattr(fuser, "modalities", None)
    if not names:
        return ["no source images"]
    if wanted is not None and set(names) != set(wanted):
        return [modality_set_problem(getattr(fuser, "name", "fuser"), wanted, names)]
    return []


def _two_band_only(fuser: Any) -> bool:
    """A fuser object of the older interface used directly (not built by ``create_fuser``): ``fuse_luma`` only."""
    return not callable(getattr(fuser, "fuse", None)) and callable(getattr(fuser, "fuse_luma", None))


def modality_set_problem(name: str, wanted: Sequence[str], names: Sequence[str]) -> str:
    """One line: fuser ``name`` takes exactly ``wanted``; what ``names`` lacks and what it has too many of."""
    missing = [m for m in wanted if m not in names]
    extra = [m for m in names if m not in wanted]
    detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                         f"not taken: {', '.join(extra)}" if extra else "") if part)
    return f"fuser {name} fuses exactly {{{', '.join(wanted)}}}, got {{{', '.join(names)}}} ({detail})"


def check_fuser_sources(fuser: Any, names: Sequence[str]) -> None:
    """``source_problems`` as one ``FuserInputError``, before anything is read or fused."""
    problems = source_problems(fuser, names)
    if problems:
        raise FuserInputError(f"fuser {getattr(fuser, 'name', fuser)} cannot fuse {{{', '.join(names)}}}: "
                              + "; ".join(problems))


def prepare_images(images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The images as a fuser receives them: float32 (H, W), whole numbers (floats rounded half to even), one size.

    Raises:
        FuserInputError: naming every image that is not 2-D and, when sizes differ, every image with its size.
    """
    prepared, problems = {}, []
    for name, image in images.items():
        array = np.asarray(image)
        if array.ndim != 2:
            problems.append(f"{name} is not a grey (H, W) image: shape {array.shape}")
        elif np.issubdtype(array.dtype, np.integer):
            prepared[name] = array.astype(np.float32)
        else:
            # Rounded in its own precision before narrowing, as the metrics round (float64 255.4999 is 255).
            prepared[name] = np.round(array).astype(np.float32, copy=False)
    if len({a.shape for a in prepared.values()}) > 1:
        problems.append("images differ in size: " + ", ".join(f"{n} {a.shape[1]}x{a.shape[0]}"
                                                              for n, a in prepared.items()))
    if problems:
        raise FuserInputError("; ".join(problems))
    return prepared


def read_sources(sources: Mapping[str, str | Path], colour: str | None = DEFAULT_COLOUR
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read a sample's files as fusers receive them: ({name: image}, the colour modality's BGR image or None).

    The colour modality is read as its luma (and its BGR image when its channels differ, ``data.io.read_visible``);
    every other modality as its rounded luma, uint8 (``data.io.read_ir``: a grey file as stored). ``fuse_images``
    rounds the colour luma to the value domain.
    """
    images: dict[str, np.ndarray] = {}
    colour_bgr = None
    for name, path in sources.items():
        if name == colour:
            images[name], colour_bgr = read_visible(path)
        else:
            images[name] = read_ir(path)
    return images, colour_bgr


# --------------------------------------------------------------------------------------------------------------
# Fusing: the one place a fuser is called
# --------------------------------------------------------------------------------------------------------------

def fuse_images(fuser: Any, images: Mapping[str, np.ndarray], colour_bgr: np.ndarray | None = None,
                colour: str | None = DEFAULT_COLOUR) -> np.ndarray:
    """Fuse a sample's images (already read) and return the uint8 image to save.

    Args:
        fuser: any fuser (``Fuser``).
        images: {modality name: grey (H, W) image on 0..255}; floats are rounded (the value domain).
        colour_bgr: the colour modality's BGR image, or None when it is grey or there is none.
        colour: which modality ``colour_bgr`` belongs to.

    Returns grey (H, W), or BGR (H, W, 3) with the colour modality's chroma around the fused luma. The colour
    modality's own passthrough returns ``colour_bgr`` unchanged; every other passthrough is grey.

    Raises:
        FuserInputError: the fuser does not take this set of modalities, the images differ in size, or the fuser
            returned an image of another size.
    """
    check_fuser_sources(fuser, list(images))
    prepared = prepare_images(images)
    if colour_bgr is not None:
        if colour not in prepared:
            raise FuserInputError(f"a colour image is given for '{colour}', which is not among the sources "
                                  f"({', '.join(prepared)})")
        if colour_bgr.shape[:2] != prepared[colour].shape:
            raise FuserInputError(f"the colour image of '{colour}' is {colour_bgr.shape[1]}x{colour_bgr.shape[0]}, "
                                  f"its luma {prepared[colour].shape[1]}x{prepared[colour].shape[0]}")
    single = getattr(fuser, "single_modality", None)
    if single is not None and single == colour and colour_bgr is not None:
        return colour_bgr.copy()  # the colour camera's own image, not a re-rounded copy of it
    if _two_band_only(fuser):
        fused = fuser.fuse_luma(prepared["ir"], prepared["vis"])
    else:
        fused = fuser.fuse(MappingProxyType(prepared))
    fused = np.asarray(fused, dtype=np.float32)
    shape = next(iter(prepared.values())).shape
    if fused.shape != shape:
        raise FuserInputError(f"fuser {getattr(fuser, 'name', fuser)} returned an image of shape {fused.shape} for "
                              f"inputs of {shape}")
    keep = bool(getattr(fuser, "keeps_visible_chroma", True)) and single in (None, colour)
    return restore_colour(fused, colour_bgr if keep else None)


def fuse_pair(fuser: Any, pair: Any, colour: str | None = DEFAULT_COLOUR) -> np.ndarray:
    """Read a sample from disk and fuse it; returns the uint8 image to save.

    ``pair``: a ``data.types.Pair`` or ``SourceSet`` (sources by name; its ``colour`` wins over ``colour``), or a
    pair of the older (ir, vis) form. The modality set is checked before any file is read. A source of
    already-fused images (``fusion.fusers.prefused.PrefusedFolder``) gives its own image for the pair instead.
    """
    image_for = getattr(fuser, "image_for", None)
    if image_for is not None:
        return image_for(pair)
    sources = sources_of(pair)
    sources = {name: sources[name] for name in modalities_read(fuser, list(sources))}
    check_fuser_sources(fuser, list(sources))
    colour = colour_of(pair, colour)
    colour = colour if colour in sources else None
    images, colour_bgr = read_sources(sources, colour)
    return fuse_images(fuser, images, colour_bgr, colour)


def fuse_arrays(fuser: Any, ir: np.ndarray, vis_y: np.ndarray, vis_bgr: np.ndarray | None) -> np.ndarray:
    """The two-band form of ``fuse_images``: ``fuse_images(fuser, {"ir": ir, "vis": vis_y}, vis_bgr, "vis")``.

    Kept for callers by position (the video path); new code calls ``fuse_images`` with images by name.
    """
    return fuse_images(fuser, {"ir": ir, "vis": vis_y}, vis_bgr, "vis")


def output_path(out_dir: Path, stem: str) -> Path:
    """Where a fused image for ``stem`` is written: always an 8-bit PNG named by the source stem."""
    return Path(out_dir) / f"{stem}.png"
