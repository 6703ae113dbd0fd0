"""Simple fusers: the rules ``mean`` and ``max`` over any number of modalities, and one single-modality
passthrough per modality (``ir``, ``vis``, and ``passthrough`` with ``modality=`` for any other).

They share the ``Fuser`` interface with DAE-Fuse (``fusion.fusers.base``). With N sources:

* ``max``: the per-pixel maximum over all N images.
* ``mean``: the per-pixel mean over all N images, sum / N (for two, (a + b) / 2 as before). Both take any set of at
  least two modalities, in any order (the result does not depend on it: sums of whole numbers this small are
  exact in float32).
* a passthrough (``ir``, ``vis``, ``create_fuser("passthrough", modality="nir")``): that one modality's image,
  from any set that holds it; the others are not looked at. The colour modality's passthrough gives its image
  back unchanged (colour included); any other is grey and borrows nothing from the colour image, so the
  single-modality rows are honest.

Like every fuser the rules fuse the luminance only: for a colour modality the fused image is the rule's luma with
that modality's Cb/Cr restored, the field's standard (``data.io.restore_colour``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .base import DEFAULT_COLOUR, FUSERS, INPUT_DOMAIN

Rule = Callable[[Sequence[np.ndarray]], np.ndarray]  # the images in the set's order -> fused luma


def _mean(images: Sequence[np.ndarray]) -> np.ndarray:
    total = images[0] + images[1]
    for image in images[2:]:
        total += image
    return total / np.float32(len(images))  # / 2 is exactly the former * 0.5


def _max(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.maximum.reduce(list(images))


@dataclass(frozen=True)
class RuleFuser:
    """A fixed per-pixel rule over the images of any set of at least two modalities; no parameters, so its cache
    key is its name (and the input domain, ``fusion.fusers.base.INPUT_DOMAIN``)."""

    name: str
    rule: Rule
    keeps_visible_chroma: bool = True
    modalities: tuple[str, ...] | None = None  # any set

    def check_sources(self, names: Sequence[str]) -> list[str]:
        if len(names) < 2:
            return [f"the rule '{self.name}' fuses two or more modalities, got {len(names)} ({', '.join(names)})"]
        return []

    def fuse(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.rule(list(images.values())).astype(np.float32, copy=False)

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        """The two-band form, for callers by position: ``fuse({"ir": ir, "vis": vis_y})``."""
        return self.fuse({"ir": ir, "vis": vis_y})

    def cache_key(self) -> str:
        return f"baseline:{self.name}:{INPUT_DOMAIN}"


# Kept name: the two-band callers' type for the simple fusers.
BaselineFuser = RuleFuser


@dataclass(frozen=True)
class PassthroughFuser:
    """One modality's image as the 'fused' image: the single-modality row of that sensor."""

    modality: str

    @property
    def name(self) -> str:
        return self.modality

    @property
    def modalities(self) -> tuple[str, ...]:
        """Its one modality: taken from any set that holds it (``check_sources``), the only image read of it
        (``fusion.fusers.base.modalities_read``)."""
        return (self.modality,)

    @property
    def single_modality(self) -> str:
        return self.modality

    @property
    def keeps_visible_chroma(self) -> bool:
        # Read by two-band callers that restore colour themselves (video): only the visible passthrough is colour.
        # ``fusion.fusers.base.fuse_images`` decides from ``single_modality`` and the sample's colour modality instead.
        return self.modality == DEFAULT_COLOUR

    def check_sources(self, names: Sequence[str]) -> list[str]:
        if self.modality not in names:
            got = ", ".join(names) or "none"
            return [f"the passthrough '{self.modality}' needs a '{self.modality}' image, got {got}"]
        return []

    def fuse(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(images[self.modality], dtype=np.float32)

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        """The two-band form, for callers by position: ``fuse({"ir": ir, "vis": vis_y})``."""
        return self.fuse({"ir": ir, "vis": vis_y})

    def cache_key(self) -> str:
        # No input-domain tag: a passthrough's images are the same whatever the luma rounding (the colour one
        # returns the colour image itself), so finished folders stay valid.
        return f"baseline:{self.modality}"


RULES: dict[str, Rule] = {"mean": _mean, "max": _max}
# The passthroughs registered by name: the two-band rows every run has. Any other modality's passthrough is
# ``create_fuser("passthrough", modality=NAME)`` (``passthrough_fuser``).
PASSTHROUGH_NAMES: tuple[str, ...] = ("ir", "vis")

# The one list of the simple fusers' names; the CLIs and the pipeline take theirs from here.
BASELINE_NAMES: tuple[str, ...] = (*PASSTHROUGH_NAMES, *RULES)


def passthrough_fuser(modality: str, device: str | None = None) -> PassthroughFuser:
    """The single-modality fuser of ``modality``. ``device`` is accepted like every factory's and unused: the
    simple fusers run on the CPU."""
    return PassthroughFuser(modality)


def _rule_factory(name: str) -> Callable[..., RuleFuser]:
    def factory(device: str | None = None) -> RuleFuser:  # device unused: the rules run on the CPU
        return RuleFuser(name, RULES[name])

    return factory


def _passthrough_factory(modality: str) -> Callable[..., PassthroughFuser]:
    def factory(device: str | None = None) -> PassthroughFuser:
        return PassthroughFuser(modality)

    return factory


for _name in PASSTHROUGH_NAMES:
    FUSERS.register(_name)(_passthrough_factory(_name))
for _name in RULES:
    FUSERS.register(_name)(_rule_factory(_name))
FUSERS.register("passthrough")(passthrough_fuser)
