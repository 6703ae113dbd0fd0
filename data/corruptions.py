"""Weather and sensor corruptions of an infrared/visible pair, to ask whether a fusion still helps when conditions
change (issue 12, section 3).

Each corruption is a registered recipe of albumentations transforms per severity (1 mild, 2 moderate, 3 severe)
and per modality: the visible camera suffers fog, low light, sun glare, noise and motion blur; the thermal camera
only noise and blur (fog, darkness and glare do not reach the long-wave infrared band a thermal camera sees).
``corrupt_pair`` is deterministic: the same image id, corruption, severity and seed give the same pixels, with
independent random streams per transform and per modality.

Severity values are ours, chosen so that severity 1 is visible but mild and 3 is a hard case (in the spirit of
ImageNet-C's five levels, Hendrycks & Dietterich 2019, cut to three).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks pypi.org at import unless told not to

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402

from data.registry import Registry  # noqa: E402

SEVERITIES: tuple[int, ...] = (1, 2, 3)
TransformList = list[A.BasicTransform]


@dataclass(frozen=True)
class Corruption:
    """A corruption's transforms for one severity: (visible transforms, infrared transforms; empty = untouched)."""

    name: str
    build: Callable[[int], tuple[TransformList, TransformList]]
    description: str


CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def _register(name: str, description: str):
    def add(build: Callable[[int], tuple[TransformList, TransformList]]):
        CORRUPTIONS.register(name)(Corruption(name, build, description))
        return build

    return add


def _pick(severity: int, values: tuple) -> object:
    return values[severity - 1]


@_register("fog", "visible: fog (albumentations RandomFog); infrared untouched")
def _fog(severity: int):
    coef = _pick(severity, (0.3, 0.5, 0.8))
    return [A.RandomFog(fog_coef_range=(coef, coef), alpha_coef=0.1, p=1.0)], []


@_register("low_light", "visible: darker, lower contrast, with sensor noise (night-like); infrared untouched")
def _low_light(severity: int):
    dark = _pick(severity, (-0.3, -0.5, -0.7))
    noise = _pick(severity, (0.02, 0.04, 0.06))
    return [A.RandomBrightnessContrast(brightness_limit=(dark, dark), contrast_limit=(dark / 2, dark / 2), p=1.0),
            A.GaussNoise(std_range=(noise, noise), p=1.0)], []


@_register("glare", "visible: sun flare (albumentations RandomSunFlare); infrared untouched")
def _glare(severity: int):
    radius = _pick(severity, (80, 160, 260))
    circles = _pick(severity, (3, 6, 10))
    return [A.RandomSunFlare(flare_roi=(0, 0, 1, 0.6), src_radius=radius, num_flare_circles_range=(circles, circles),
                             p=1.0)], []


@_register("noise", "both: Gaussian sensor noise (the thermal camera's a little weaker)")
def _noise(severity: int):
    std = _pick(severity, (0.04, 0.08, 0.15))
    return [A.GaussNoise(std_range=(std, std), p=1.0)], [A.GaussNoise(std_range=(0.75 * std, 0.75 * std), p=1.0)]


@_register("blur", "both: motion blur (vehicle motion blurs both cameras)")
def _blur(severity: int):
    k = _pick(severity, (5, 9, 15))
    return [A.MotionBlur(blur_limit=(k, k), p=1.0)], [A.MotionBlur(blur_limit=(k, k), p=1.0)]


def check_corruptions(names: list[str], severities: list[int]) -> list[str]:
    """Problems with ``--corruptions``/``--severities`` (unknown names, severities out of range), for up front."""
    problems = []
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        problems.append(f"unknown corruption(s) {', '.join(unknown)}; known: {', '.join(CORRUPTIONS.names())}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        problems.append(f"severities must be among {list(SEVERITIES)}, got {bad}")
    if names and not severities:
        problems.append("--corruptions needs at least one --severities value")
    return problems


def _apply(transforms: TransformList, image: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    if not transforms:
        return image
    compose = A.Compose(transforms)
    compose.set_random_seed(int(seeds[0]))
    for transform, seed in zip(compose.transforms, seeds[1:]):
        transform.set_random_seed(int(seed))
    return compose(image=image)["image"]


def corrupt_pair(name: str, severity: int, ir: np.ndarray, vis: np.ndarray, image_id: str, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted infrared, corrupted visible), uint8 as given (grey or BGR); deterministic per id and seed."""
    corruption = CORRUPTIONS.get(name)
    vis_transforms, ir_transforms = corruption.build(severity)
    # One stream per (image, corruption, severity, seed), split into independent streams per modality/transform.
    key = [seed, severity, *name.encode(), *image_id.encode()]
    streams = np.random.SeedSequence(key).spawn(2)
    grey = vis.ndim == 2  # fog and flare need three channels: a grey visible image goes through as BGR and back
    vis_in = np.repeat(vis[..., None], 3, axis=2) if grey else vis
    vis_out = _apply(vis_transforms, vis_in, streams[0].generate_state(len(vis_transforms) + 1))
    if grey and vis_transforms:
        vis_out = np.ascontiguousarray(vis_out[..., 0]) if vis_out.ndim == 3 else vis_out
    ir_out = _apply(ir_transforms, ir, streams[1].generate_state(len(ir_transforms) + 1))
    return ir_out, vis_out
