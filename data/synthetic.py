"""Built-in SYNTHETIC data in M3FD's native layout, so the main job runs on a fresh machine with no download.

:func:`generate_synthetic_m3fd` draws small video-like scenes where fusion matters for a detector:

* **Warm objects** (People, Car, Truck, Bus, Motorcycle) are warmer than their surroundings in infrared in every
  scenario, but by day the sun-heated road and facades come close to their temperature (thermal crossover) and
  there is more warm clutter, so daytime infrared is low-contrast. In visible they wear saturated colours or white
  with a dark rim, and by day cast a shadow on calm asphalt, so daytime visible shows them plainly; they are
  washed out in overcast visible and dim/low-contrast in night visible. Net effect, as on M3FD: a visible-only
  detector is at least as good as an infrared-only one by day and clearly worse at night.
* **Lamps** are bright in visible (a lit panel, with a halo at night) and have no thermal signature at all, so
  infrared alone cannot find them.
* **Visible-only structure**: building facades with window grids, road markings, kerbs, zebra crossings and
  asphalt texture appear only in the visible image; in infrared facades and road are smooth.
* **Infrared-only clutter**: warm patches that are not objects (vents, sun-heated spots, person-sized warm
  blobs; most by day) appear only in infrared, so infrared alone produces false positives.

**Near-infrared (opt-in, ``nir=True``; ``Nir/<id>.png``)**, a third band rendered from the same scene: it sees
reflectance (paint and clothing, red-weighted, less colour contrast than visible), lamps (lit panels, with a halo
at night), retro-reflectors (road markings, number plates, the stripe on a person's clothes) that return an active
illuminator's light, and, at night, the asphalt texture and objects on the road lit by that illuminator (bright
near the car, falling off towards the horizon), where the visible image is dark. It does not see heat: warm
bodies and warm clutter are thermal-only. Its noise comes from its own random stream, so the infrared and visible
images are byte-identical with and without it (the default output does not change).

Scenarios (``night``, ``daytime``, ``overcast``) alternate across scenes; consecutive frames of a scene are
near-duplicates with small object motion, like M3FD's video frames. Output (all PNG, lossless):
``Ir/<id>.png`` 8-bit grey, ``Vis/<id>.png`` 8-bit BGR, ``Annotation/<id>.xml`` Pascal VOC 1-based,
``meta/scenario.json`` in M3FD's own format, ``meta/{train,val,test}.txt`` keeping each scene whole (scenario
stratified, :data:`SYNTHETIC_FRACTIONS`), ``SYNTHETIC.md`` saying what this is, and ``synthetic.json`` with the
parameters. The folder is built under a temporary name and renamed into place; a complete folder made with
the same parameters is reused as it is. The same parameters always give byte-identical files.

CLI: ``python -m data.synthetic --out DIR [--scenes N --frames N --size W H --seed S] [--nir]``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .io import atomic_dir
from .splits import SPLIT_NAMES, split_groups

# Bump when the drawing changes, so that folders made by an older generator are regenerated.
GENERATOR_VERSION = 2
PARAMS_FILE = "synthetic.json"
README_FILE = "SYNTHETIC.md"
DEFAULT_NUM_SCENES = 12
DEFAULT_FRAMES_PER_SCENE = 10
DEFAULT_SIZE: tuple[int, int] = (320, 256)
# Larger val/test shares than M3FD's 80/10/10: with a dozen scenes, 10% would be a single scene.
SYNTHETIC_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
# Scenes take scenarios in this cycle (rotated by the seed), so any three consecutive scenes cover all three.
SCENARIO_CYCLE: tuple[str, ...] = ("night", "daytime", "overcast")
PLACES: tuple[str, ...] = ("crossroads", "driveway", "parkinglot", "alley", "square", "street")
# Object sizes below are for a 256-pixel-high image and scale with the height.
REFERENCE_HEIGHT = 256


@dataclass(frozen=True)
class Lighting:
    """How a scenario renders. Visible = reflectance * gain, desaturated, plus an ambient offset and noise."""

    vis_gain: float  # scene illumination (1 = daylight)
    vis_offset: float  # ambient/haze level added after the gain (grey levels)
    saturation: float  # 1 = full colour, 0 = grey
    vis_noise: float  # sensor noise sigma, grey levels
    lamp_level: float  # visible brightness of a lit lamp panel
    lamp_halo: float  # strength of the glow around lamps (0 = none)
    ir_sky: float  # infrared level of the sky (cold)
    ir_ground: float  # infrared level of the road (sun-heated by day)
    ir_building: float  # infrared level of facades
    ir_patches: float  # std of the road's sun-heated patches in infrared (grey levels)
    ir_clutter: tuple[int, int]  # warm blobs that are no object, inclusive range per scene
    shadow: float  # visible reflectance factor in an object's cast shadow (1 = no shadow)


# By day the sun heats the road and facades close to the temperature of cars and people (thermal crossover) and
# leaves more warm clutter, while direct light gives objects crisp shadows: infrared is harder than visible. At
# night the road cools and visible is dark and noisy: infrared is far easier. Overcast lies between.
LIGHTING: dict[str, Lighting] = {
    "daytime": Lighting(1.0, 0.0, 1.0, 2.0, 235.0, 0.0, 45.0, 165.0, 150.0, 16.0, (6, 10), 0.45),
    "overcast": Lighting(0.6, 45.0, 0.35, 2.5, 240.0, 0.25, 60.0, 110.0, 100.0, 8.0, (3, 6), 0.8),
    "night": Lighting(0.07, 6.0, 0.6, 3.0, 252.0, 0.8, 20.0, 75.0, 70.0, 6.0, (2, 5), 1.0),
}


@dataclass(frozen=True)
class ObjectSpec:
    """Sizes (pixels at :data:`REFERENCE_HEIGHT`), infrared level and motion of one class."""

    height: tuple[float, float]
    aspect: tuple[float, float]  # width / height
    ir_level: tuple[float, float]  # infrared level of the warm body
    speed: tuple[float, float]  # pixels per frame, sign random (0 for static objects)
    count: tuple[int, int]  # objects per scene, inclusive range
    chance: float  # probability that a scene has this class at all


OBJECTS: dict[str, ObjectSpec] = {
    "People": ObjectSpec((30, 64), (0.32, 0.45), (205, 245), (0.5, 2.0), (1, 4), 1.0),
    "Car": ObjectSpec((22, 34), (1.8, 2.3), (165, 200), (1.0, 3.5), (1, 3), 0.85),
    "Truck": ObjectSpec((34, 46), (1.5, 1.8), (160, 195), (1.0, 2.5), (1, 1), 0.35),
    "Bus": ObjectSpec((36, 46), (1.8, 2.1), (150, 185), (1.0, 2.0), (1, 1), 0.3),
    "Motorcycle": ObjectSpec((26, 38), (0.9, 1.2), (195, 235), (1.5, 3.5), (1, 1), 0.35),
    "Lamp": ObjectSpec((16, 24), (0.9, 1.3), (0, 0), (0, 0), (1, 2), 0.9),
}

_PALETTE = np.array(  # BGR reflectances of facades
    [[40, 40, 160], [150, 60, 30], [200, 200, 200], [40, 40, 40], [60, 140, 60], [30, 150, 200],
     [120, 120, 120], [170, 110, 150], [50, 90, 150], [180, 170, 150]],
    dtype=np.float32,
)
# BGR reflectances of clothing and car paint: saturated colours and white, none close to the grey asphalt, so
# that by day an object stands out from the road the way traffic does in M3FD's daytime frames.
@dataclass(frozen=True)
class NirLighting:
    """How a scenario renders in near-infrared: NIR = reflectance * (ambient + active illumination) + offset,
    then lamps, retro-reflectors and noise. Ours, chosen for the qualitative behaviour of NIR driving cameras
    (an 850 nm illuminator lights the road ahead at night; NIR penetrates haze better than visible)."""

    ambient: float  # sun/sky illumination (1 = daylight)
    active: float  # the car's NIR illuminator at the nearest road row (0 = off); falls off towards the horizon
    offset: float  # haze/ambient level (grey levels); below visible's (NIR scatters less)
    noise: float  # sensor noise sigma, grey levels
    lamp_level: float  # NIR brightness of a lit lamp panel (incandescent and sodium lamps emit strongly in NIR)
    lamp_halo: float  # glow around lamps (0 = none)
    retro: float  # retro-reflector return relative to diffuse reflectance of the same illumination


NIR_LIGHTING: dict[str, NirLighting] = {
    "daytime": NirLighting(0.95, 0.0, 4.0, 2.0, 230.0, 0.0, 1.3),
    "overcast": NirLighting(0.6, 0.25, 25.0, 2.5, 240.0, 0.15, 2.0),
    "night": NirLighting(0.04, 0.85, 4.0, 3.0, 250.0, 0.5, 3.0),
}

_OBJECT_PALETTE = np.array(
    [[40, 40, 210], [190, 90, 30], [40, 210, 240], [60, 180, 40], [30, 130, 245], [240, 240, 240],
     [170, 50, 150], [210, 190, 40]],
    dtype=np.float32,
)
OUTLINE_BGR = (30.0, 30.0, 30.0)  # dark rim of warm objects in visible (panel gaps, tyres, shading)
OUTLINE_PX = 2.0  # its width at REFERENCE_HEIGHT (1 px at the quick preset's 160-pixel training size)


@dataclass(frozen=True)
class _Thing:
    """One object of a scene: class, size, path, and the colours/temperature it keeps for the whole scene."""

    name: str
    w: int
    h: int
    x0: float
    y0: float
    vx: float
    vy: float
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    ir_level: float

    def position(self, frame: int, width: int, height: int) -> tuple[int, int]:
        """Top-left corner at a frame: straight motion, reflected at the image borders."""
        return _reflect(self.x0 + self.vx * frame, width - self.w), _reflect(self.y0 + self.vy * frame, height - self.h)


def _reflect(p: float, span: int) -> int:
    if span <= 0:
        return 0
    m = p % (2 * span)
    return int(round(span - abs(m - span)))


# ------------------------------------------------------------------------------------------- object painters
# Each painter draws one object into the visible reflectance image (H, W, 3 float32), the infrared image
# (H, W float32) and the lamp-emission mask (H, W float32), staying inside the box x..x+w-1, y..y+h-1 and
# touching all four of its sides (tight boxes). ``right`` says which way the object faces.

Painter = Callable[[np.ndarray, np.ndarray, np.ndarray, _Thing, int, int, int], None]


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, value) -> None:
    cv2.rectangle(img, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), value, -1)


def _circle(img: np.ndarray, cx: float, cy: float, r: float, value) -> None:
    cv2.circle(img, (int(round(cx)), int(round(cy))), max(1, int(round(r))), value, -1)


def _paint_people(vis, ir, lamp, t: _Thing, x: int, y: int, frame: int) -> None:
    w, h, level = t.w, t.h, t.ir_level
    r = max(2.0, min(0.11 * h, w / 2 - 1))
    stride = 0.12 * w * math.sin(0.9 * frame + t.x0)  # legs swing while walking
    skin = (120.0, 150.0, 200.0)
    _circle(vis, x + w / 2, y + r, r, skin)
    _circle(ir, x + w / 2, y + r, r, level + 10)
    _rect(vis, x, y + 2 * r, x + w - 1, y + 0.6 * h, t.colour_a)
    _rect(ir, x, y + 2 * r, x + w - 1, y + 0.6 * h, level)
    for lx0, lx1 in ((0.08 * w + stride, 0.45 * w + stride), (0.55 * w - stride, 0.92 * w - stride)):
        lx0, lx1 = max(0.0, lx0), min(w - 1.0, lx1)
        _rect(vis, x + lx0, y + 0.6 * h, x + lx1, y + h - 1, t.colour_b)
        _rect(ir, x + lx0, y + 0.6 * h, x + lx1, y + h - 1, level - 15)


def _wheels(vis, ir, xs: Sequence[float], cy: float, r: float, level: float) -> None:
    for cx in xs:
        _circle(vis, cx, cy, r, (25.0, 25.0, 25.0))
        _circle(ir, cx, cy, r, level + 25)


def _paint_car(vis, ir, lamp, t: _Thing, x: int, y: int, frame: int) -> None:
    w, h, level = t.w, t.h, t.ir_level
    right = t.vx >= 0
    r = 0.16 * h
    cabin = np.array([[0.22 * w, 0], [0.72 * w, 0], [0.9 * w, 0.45 * h], [0.08 * w, 0.45 * h]])
    if not right:
        cabin[:, 0] = w - 1 - cabin[:, 0]
    pts = np.round(cabin + [x, y]).astype(np.int32)
    cv2.fillPoly(vis, [pts], t.colour_a)
    cv2.fillPoly(ir, [pts], level - 45)  # glass is cool
    inner = np.round((cabin - cabin.mean(0)) * 0.7 + cabin.mean(0) + [x, y]).astype(np.int32)
    cv2.fillPoly(vis, [inner], (70.0, 55.0, 45.0))
    _rect(vis, x, y + 0.42 * h, x + w - 1, y + h - 1 - r, t.colour_a)
    _rect(ir, x, y + 0.42 * h, x + w - 1, y + h - 1 - r, level)
    hood = (x + 0.7 * w, x + w - 1) if right else (x, x + 0.3 * w)
    _rect(ir, hood[0], y + 0.45 * h, hood[1], y + h - 1 - r, level + 20)  # engine
    _wheels(vis, ir, (x + 0.22 * w, x + 0.78 * w), y + h - 1 - r, r, level)


def _paint_truck(vis, ir, lamp, t: _Thing, x: int, y: int, frame: int) -> None:
    w, h, level = t.w, t.h, t.ir_level
    right = t.vx >= 0
    r = 0.13 * h
    cab_w = 0.3 * w
    cab = (x + w - cab_w, x + w - 1) if right else (x, x + cab_w - 1)
    box = (x, x + w - cab_w - 2) if right else (x + cab_w + 1, x + w - 1)
    _rect(vis, box[0], y, box[1], y + h - 1 - r, t.colour_b)
    _rect(ir, box[0], y, box[1], y + h - 1 - r, level - 50)  # the cargo box is near ambient
    _rect(vis, cab[0], y + 0.3 * h, cab[1], y + h - 1 - r, t.colour_a)
    _rect(ir, cab[0], y + 0.3 * h, cab[1], y + h - 1 - r, level + 15)  # engine under the cab
    _rect(vis, cab[0] + 0.15 * cab_w, y + 0.36 * h, cab[1] - 0.15 * cab_w, y + 0.55 * h, (70.0, 55.0, 45.0))
    _wheels(vis, ir, (x + 0.15 * w, x + 0.45 * w, x + 0.85 * w), y + h - 1 - r, r, level)


def _paint_bus(vis, ir, lamp, t: _Thing, x: int, y: int, frame: int) -> None:
    w, h, level = t.w, t.h, t.ir_level
    right = t.vx >= 0
    r = 0.12 * h
    _rect(vis, x, y, x + w - 1, y + h - 1 - r, t.colour_a)
    _rect(ir, x, y, x + w - 1, y + h - 1 - r, level)
    pane = w / 7
    for k in range(6):  # window row, passengers make it warm
        x0 = x + 0.5 * pane + k * pane + 2
        _rect(vis, x0, y + 0.15 * h, x0 + pane - 4, y + 0.45 * h, (75.0, 60.0, 50.0))
        _rect(ir, x0, y + 0.15 * h, x0 + pane - 4, y + 0.45 * h, level + 10)
    rear = (x, x + 0.15 * w) if right else (x + 0.85 * w, x + w - 1)
    _rect(ir, rear[0], y + 0.55 * h, rear[1], y + h - 1 - r, level + 25)  # rear engine
    _wheels(vis, ir, (x + 0.18 * w, x + 0.82 * w), y + h - 1 - r, r, level)


def _paint_motorcycle(vis, ir, lamp, t: _Thing, x: int, y: int, frame: int) -> None:
    w, h, level = t.w, t.h, t.ir_level
    r = min(0.2 * h, 0.2 * w)
    cy = y + h - 1 - r
    _rect(vis, x + 0.2 * w, cy - 0.35 * h, x + 0.8 * w, cy - 0.1 * h, t.colour_a)
    _rect(ir, x + 0.3 * w, cy - 0.3 * h, x + 0.7 * w, cy - 0.1 * h, level + 20)  # engine
    head_r = max(2.0, 0.1 * h)
    _circle(vis, x + w / 2, y + head_r, head_r, (60.0, 60.0, 60.0))  # helmet
    _circle(ir, x + w / 2, y + head_r, head_r, level - 10)
    _rect(vis, x + 0.35 * w, y + 2 * head_r, x + 0.65 * w, cy - 0.3 * h, t.colour_b)  # rider
    _rect(ir, x + 0.35 * w, y + 2 * head_r, x + 0.65 * w, cy - 0.3 * h, level)
    for cx in (x + r, x + w - 1 - r):
        _circle(vis, cx, cy, r, (25.0, 25.0, 25.0))
        _circle(ir, cx, cy, r, level - 20)


def _paint_lamp(vis, ir, lamp, t: _Thing, x: int, y: int, frame: int) -> None:
    # A street lamp's head: dark housing on top, lit panel below; the post runs down outside the box. Nothing
    # is drawn in infrared: an LED lamp head is at ambient temperature.
    w, h = t.w, t.h
    height = vis.shape[0]
    _rect(vis, x + w / 2 - 1, y + h, x + w / 2 + 1, min(height - 1, y + 3 * h + 30), (55.0, 55.0, 60.0))  # post
    _rect(vis, x, y, x + w - 1, y + 0.2 * h, (50.0, 50.0, 55.0))
    _rect(vis, x + 1, y + 0.2 * h, x + w - 2, y + h - 1, (200.0, 200.0, 200.0))
    _rect(lamp, x + 1, y + 0.2 * h, x + w - 2, y + h - 1, 1.0)


PAINTERS: dict[str, Painter] = {
    "People": _paint_people,
    "Car": _paint_car,
    "Truck": _paint_truck,
    "Bus": _paint_bus,
    "Motorcycle": _paint_motorcycle,
    "Lamp": _paint_lamp,
}


# ------------------------------------------------------------------------------------------------ the scenes


@dataclass(frozen=True)
class Scene:
    """One scene: static background (visible reflectance, infrared with clutter) and the objects in it."""

    name: str
    scenario: str
    vis_reflectance: np.ndarray  # (H, W, 3) float32 background, 0..255
    ir_background: np.ndarray  # (H, W) float32, 0..255, clutter included
    things: tuple[_Thing, ...]
    horizon: int | None = None  # the horizon row (near-infrared illumination falls off towards it)
    retro: np.ndarray | None = None  # (H, W) bool: retro-reflective road markings (bright in near-infrared)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise (H, W) float32: coarse noise upsampled with cubic interpolation."""
    h, w = shape
    coarse = rng.standard_normal((max(2, h // scale + 2), max(2, w // scale + 2))).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _background(rng: np.random.Generator, light: Lighting, width: int, height: int
                ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Visible reflectance (H, W, 3), infrared background (H, W), the horizon row and the road markings mask of one
    scene."""
    yy, xx = np.mgrid[0:height, 0:width]
    horizon = int(height * rng.uniform(0.36, 0.46))
    vis = np.empty((height, width, 3), np.float32)
    ir = np.empty((height, width), np.float32)
    # Sky: a vertical gradient in visible, cold in infrared.
    t = (yy[:horizon, :, None] / max(1, horizon)).astype(np.float32)
    vis[:horizon] = (1 - t) * np.array([235, 190, 140], np.float32) + t * np.array([245, 225, 205], np.float32)
    ir[:horizon] = light.ir_sky + 10 * t[..., 0]
    # Road: asphalt texture and markings in visible only; a smooth warm field in infrared.
    ground = slice(horizon, height)
    # Calm asphalt (weak grain and stains), so that objects on the road stand out in daylight.
    texture = 3 * rng.standard_normal((height - horizon, width)).astype(np.float32) + 4 * _smooth_noise(rng, (height - horizon, width), 6)
    vis[ground] = (105 + texture)[..., None]
    ir[ground] = light.ir_ground + light.ir_patches * _smooth_noise(rng, (height - horizon, width), 24)
    kerb = horizon + max(3, int(0.06 * height))
    vis[horizon:kerb] = 160 + 5 * rng.standard_normal((kerb - horizon, width, 1)).astype(np.float32)  # pavement
    vis[kerb : kerb + 2] = 215
    lane_y = kerb + int((height - kerb) * rng.uniform(0.45, 0.6))
    dash, period = int(rng.integers(14, 24)), int(rng.integers(30, 46))
    marks = (np.abs(yy - lane_y) <= 1) & ((xx + int(rng.integers(period))) % period < dash)
    if rng.random() < 0.5:  # zebra crossing
        x0 = int(rng.integers(0, width // 2))
        marks |= (yy > kerb + 4) & (yy < min(height, kerb + 4 + (height - kerb) // 3)) & (xx >= x0) & (xx < x0 + width // 3) & ((xx - x0) % 10 < 5)
    vis[marks] = 225
    # Facades: flat in infrared (a slightly different temperature per building), window grids in visible.
    x = 0
    while x < width:
        bw = int(rng.integers(width // 8, width // 3))
        top = int(rng.uniform(0.05, 0.8) * horizon)
        colour = _PALETTE[rng.integers(len(_PALETTE))] * 0.6 + 50
        block = (slice(top, horizon), slice(x, min(width, x + bw)))
        vis[block] = colour
        ir[block] = light.ir_building + rng.uniform(-8, 8)
        px, py = int(rng.integers(9, 15)), int(rng.integers(10, 16))
        wy, wx = yy[block] - top, xx[block] - x
        windows = (wx % px >= 3) & (wx % px < px - 2) & (wy % py >= 4) & (wy % py < py - 3)
        vis[block][windows] = colour * 0.45
        vis[top, block[1]] = colour * 0.3  # roof line
        x += bw
    return vis, ir, horizon, marks


def _add_clutter(rng: np.random.Generator, ir: np.ndarray, horizon: int, light: Lighting) -> None:
    """Warm patches that are not objects (vents, sun-heated spots, person-sized warm blobs), infrared only."""
    height, width = ir.shape
    scale = height / REFERENCE_HEIGHT
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(light.ir_clutter[0], light.ir_clutter[1] + 1))):
        cx, cy = rng.uniform(0, width), rng.uniform(0.25 * horizon, height)
        if rng.random() < 0.5:  # upright blob about the size of a person
            sx, sy = rng.uniform(3, 7) * scale, rng.uniform(9, 20) * scale
        else:
            sx = sy = rng.uniform(4, 14) * scale
        ir += rng.uniform(60, 120) * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
    for _ in range(int(rng.integers(0, 3))):  # warm rectangles: air-conditioning units, heated windows
        w, h = (int(v) for v in rng.integers(8, 28, 2) * scale)
        x0, y0 = int(rng.integers(0, max(1, width - w))), int(rng.integers(int(0.2 * horizon), max(int(0.2 * horizon) + 1, height - h)))
        ir[y0 : y0 + h, x0 : x0 + w] += rng.uniform(50, 90)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the smaller area of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def _things(rng: np.random.Generator, width: int, height: int, horizon: int) -> list[_Thing]:
    scale = height / REFERENCE_HEIGHT
    placed: list[_Thing] = []
    for name, spec in OBJECTS.items():
        if rng.random() >= spec.chance:
            continue
        for _ in range(int(rng.integers(spec.count[0], spec.count[1] + 1))):
            for _attempt in range(20):
                h = int(round(rng.uniform(*spec.height) * scale))
                w = min(max(4, int(round(h * rng.uniform(*spec.aspect)))), width - 1)  # narrow images: fit
                if name == "Lamp":  # heads above the horizon, posts down to the pavement
                    y0 = rng.uniform(0.1 * horizon, max(0.1 * horizon + 1, horizon - 2 * h))
                else:  # feet on the road
                    y0 = rng.uniform(horizon + 0.1 * (height - horizon), height - 1) - h
                    y0 = min(max(y0, horizon - 0.5 * h), height - h)
                x0 = rng.uniform(0, width - w)
                box = (x0, y0, w, h)
                if all(_overlap(box, (p.x0, p.y0, p.w, p.h)) < 0.25 for p in placed):
                    break
            else:
                continue  # no free spot: skip this object
            speed = rng.uniform(*spec.speed) * scale * rng.choice([-1.0, 1.0])
            a, b = _OBJECT_PALETTE[rng.choice(len(_OBJECT_PALETTE), size=2, replace=False)]
            placed.append(
                _Thing(name, w, h, x0, y0, speed, speed * rng.uniform(-0.1, 0.1), tuple(map(float, a)), tuple(map(float, b)), float(rng.uniform(*spec.ir_level)))
            )
    return placed


def make_scene(rng: np.random.Generator, name: str, scenario: str, width: int, height: int) -> Scene:
    """Draw a scene's background and objects for a scenario of :data:`LIGHTING`; render frames with
    :func:`render_frame`."""
    light = LIGHTING[scenario]
    vis, ir, horizon, marks = _background(rng, light, width, height)
    _add_clutter(rng, ir, horizon, light)
    return Scene(name, scenario, vis, ir, tuple(_things(rng, width, height, horizon)), horizon, marks)


def render_frame(scene: Scene, frame: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int, int, int]]]:
    """Draw one frame: (IR uint8 (H, W), visible BGR uint8 (H, W, 3), boxes as (class, xmin, ymin, xmax, ymax)
    in VOC 1-based inclusive pixels)."""
    ir, vis, _, boxes = _render(scene, frame, rng, None)
    return ir, vis, boxes


def render_frame_bands(scene: Scene, frame: int, rng: np.random.Generator, nir_rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, int, int, int, int]]]:
    """Draw one frame in three bands: (IR, visible BGR, near-infrared uint8 (H, W), boxes). The IR, visible and
    boxes are exactly ``render_frame``'s for the same ``rng``; the near-infrared noise comes from ``nir_rng``."""
    return _render(scene, frame, rng, nir_rng)


def _render(scene: Scene, frame: int, rng: np.random.Generator, nir_rng: np.random.Generator | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[tuple[str, int, int, int, int]]]:
    height, width = scene.ir_background.shape
    light = LIGHTING[scene.scenario]
    vis = scene.vis_reflectance.copy()
    ir = scene.ir_background.copy()
    lamp = np.zeros((height, width), np.float32)
    boxes = []
    placed = [(t, *t.position(frame, width, height)) for t in scene.things]
    scale = height / REFERENCE_HEIGHT
    for thing, x, y in sorted(placed, key=lambda p: p[2] + p[0].h):  # far (higher) objects first
        if thing.name != "Lamp":
            _shadow(vis, thing, x, y, light.shadow)
        PAINTERS[thing.name](vis, ir, lamp, thing, x, y, frame)
        if thing.name != "Lamp":
            _outline(vis, thing, x, y, frame, scale)
        boxes.append((thing.name, x + 1, y + 1, x + thing.w, y + thing.h))
    # near-infrared from the painted reflectance, before the visible lighting changes it (draws only from nir_rng)
    nir = None if nir_rng is None else _render_nir(scene, vis, lamp, placed, nir_rng)
    # Visible: desaturation, illumination and ambient light as one 3x4 colour transform, then lit lamps and
    # their halo, then sensor noise.
    luma_weights = np.array([[0.114, 0.587, 0.299]], np.float32)  # BT.601, BGR order
    mix = light.vis_gain * (light.saturation * np.eye(3, dtype=np.float32) + (1 - light.saturation) * luma_weights.repeat(3, 0))
    vis = cv2.transform(vis, np.hstack([mix, np.full((3, 1), light.vis_offset, np.float32)]))
    if any(t.name == "Lamp" for t in scene.things):
        if light.lamp_halo > 0:
            halo = cv2.GaussianBlur(lamp, (0, 0), sigmaX=max(2.0, 0.03 * height))
            vis += (light.lamp_halo * 255 * np.minimum(1.0, 2.5 * halo))[..., None]
        vis = np.maximum(vis, light.lamp_level * lamp[..., None])  # the lamp mask is 0 or 1
    vis += light.vis_noise * rng.standard_normal(vis.shape, dtype=np.float32)
    # Infrared: optics blur and sensor noise.
    ir = cv2.GaussianBlur(ir, (0, 0), sigmaX=0.8) + 1.5 * rng.standard_normal(ir.shape, dtype=np.float32)
    return _to_uint8(ir), _to_uint8(vis), nir, boxes


def _retro_patches(mask: np.ndarray, t: _Thing, x: int, y: int) -> None:
    """Retro-reflectors of an object (drawn into ``mask``): number plates low on vehicles, a reflective stripe
    across a person's torso. Lamps have none."""
    w, h = t.w, t.h
    if t.name == "People":
        _rect(mask, x + 1, y + 0.42 * h, x + w - 2, y + 0.42 * h + max(1.0, 0.05 * h), 1.0)
    elif t.name in ("Car", "Truck", "Bus"):
        cx, cy = x + w / 2, y + 0.75 * h
        _rect(mask, cx - 0.08 * w, cy - max(1.0, 0.05 * h), cx + 0.08 * w, cy + max(1.0, 0.05 * h), 1.0)
    elif t.name == "Motorcycle":
        _rect(mask, x + 0.4 * w, y + 0.5 * h, x + 0.6 * w, y + 0.5 * h + max(1.0, 0.06 * h), 1.0)


def _render_nir(scene: Scene, reflectance: np.ndarray, lamp: np.ndarray,
                placed: list[tuple[_Thing, int, int]], rng: np.random.Generator) -> np.ndarray:
    """The near-infrared image (uint8 (H, W)) of a frame whose visible reflectance (BGR, before lighting) and lamp
    mask are drawn; see the module docstring for what it shows."""
    height, width = lamp.shape
    light = NIR_LIGHTING[scene.scenario]
    # NIR reflectance: red-weighted (most paints and fabrics reflect NIR like red light or more) and flatter than
    # visible colour (pulled a third of the way to mid-grey).
    refl = cv2.transform(reflectance, np.array([[0.25, 0.30, 0.45]], np.float32)).reshape(height, width)
    refl = 0.7 * refl + 0.3 * 128.0
    horizon = scene.horizon if scene.horizon is not None else height // 2
    rows = np.arange(height, dtype=np.float32)[:, None]
    # the illuminator: strongest on the nearest road (bottom rows), falling to a sixth at the horizon, a little
    # spill above it; wider in the centre of the image than at the sides
    near = np.clip((rows - horizon) / max(1, height - 1 - horizon), 0.0, 1.0)
    spread = np.exp(-0.5 * ((np.arange(width, dtype=np.float32)[None, :] - width / 2) / (0.55 * width)) ** 2)
    illum = light.ambient + light.active * np.where(rows >= horizon, 1 / 6 + 5 / 6 * near**1.5, 0.1) * spread
    nir = refl * illum + light.offset
    retro = np.zeros((height, width), np.float32)
    if scene.retro is not None:
        retro[scene.retro] = 1.0
    for thing, x, y in placed:
        _retro_patches(retro, thing, x, y)
    nir = np.where(retro > 0, np.maximum(nir, np.minimum(255.0, 200.0 * light.retro * illum)), nir)
    if lamp.any():
        if light.lamp_halo > 0:
            halo = cv2.GaussianBlur(lamp, (0, 0), sigmaX=max(2.0, 0.03 * height))
            nir = nir + light.lamp_halo * 255 * np.minimum(1.0, 2.5 * halo)
        nir = np.maximum(nir, light.lamp_level * lamp)
    nir = nir + light.noise * rng.standard_normal(nir.shape, dtype=np.float32)
    return _to_uint8(nir.astype(np.float32))


def _shadow(vis: np.ndarray, t: _Thing, x: int, y: int, factor: float) -> None:
    """Darken the ground under an object (visible reflectance): a flat ellipse at its base, cast a little to one
    side; it reaches a few pixels past the box, as real shadows do."""
    if factor >= 1.0:
        return
    mask = np.zeros(vis.shape[:2], np.uint8)
    centre = (int(round(x + 0.6 * t.w)), int(round(y + t.h - 1)))
    axes = (max(2, int(round(0.6 * t.w))), max(2, int(round(0.07 * t.h + 1))))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    vis[mask > 0] *= factor


def _outline(vis: np.ndarray, t: _Thing, x: int, y: int, frame: int, scale: float) -> None:
    """A dark rim just inside a warm object's silhouette (visible only): the object is painted once more on a
    blank canvas to find its silhouette, and the silhouette's inner border is darkened."""
    canvas = np.zeros_like(vis)
    PAINTERS[t.name](canvas, np.zeros(vis.shape[:2], np.float32), np.zeros(vis.shape[:2], np.float32), t, x, y, frame)
    silhouette = (canvas.max(axis=2) > 0).astype(np.uint8)
    k = max(1, int(round(OUTLINE_PX * scale)))
    rim = silhouette & (1 - cv2.erode(silhouette, np.ones((2 * k + 1, 2 * k + 1), np.uint8), borderValue=0))
    vis[rim > 0] = OUTLINE_BGR


def _to_uint8(image: np.ndarray) -> np.ndarray:
    np.clip(image, 0, 255, out=image)
    return np.rint(image, out=image).astype(np.uint8)


def _voc_xml(image_id: str, width: int, height: int, boxes: Sequence[tuple[str, int, int, int, int]]) -> str:
    objects = "".join(
        f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{x0}</xmin>\n      <ymin>{y0}</ymin>\n"
        f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
        for name, x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation>\n  <folder>SYNTHETIC</folder>\n  <filename>{image_id}.png</filename>\n  <source>fusebench "
        f"synthetic M3FD-layout scenes (not real data)</source>\n  <size>\n    <width>{width}</width>\n"
        f"    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n{objects}</annotation>\n"
    )


_README = """# SYNTHETIC data (not M3FD)

This folder was generated by `data/synthetic.py` (fusebench) and contains **synthetic** scenes, not real
infrared/visible images. It uses M3FD's native layout (Ir/, Vis/, Annotation/, meta/) so that every tool that
reads M3FD reads it, and exists so that the project runs on a fresh machine with no download. Numbers obtained
on it say whether the code works, not how fusion methods rank on real data.

- {images} frames: {num_scenes} scenes x {frames_per_scene} consecutive frames, {width}x{height}, seed {seed}
  (generator version {version}).
- Scenarios: night, daytime and overcast, alternating across scenes (`meta/scenario.json`, M3FD's format).
- Warm People, Cars, Trucks, Buses and Motorcycles are warmer than their surroundings in infrared, clearly at
  night, barely by day (a sun-heated road and facades, more warm clutter). In visible they are saturated colours or
  white with a dark rim and, by day, a cast shadow: plain by day, washed out when overcast, dim and low-contrast at
  night. Lamps are bright in visible and invisible in infrared.
- Facade windows, road markings and textures appear only in visible; warm clutter that is no object appears
  only in infrared: neither modality alone finds everything.
- `meta/train.txt`, `val.txt`, `test.txt` keep every scene whole.
- Parameters: `synthetic.json`. Same parameters, same bytes.
"""


def _params(num_scenes: int, frames_per_scene: int, size: tuple[int, int], seed: int, nir: bool = False) -> dict:
    params = {
        "generator": "fusebench data.synthetic",
        "synthetic": True,
        "version": GENERATOR_VERSION,
        "num_scenes": num_scenes,
        "frames_per_scene": frames_per_scene,
        "size": [int(size[0]), int(size[1])],
        "seed": seed,
    }
    if nir:  # only then: the default two-band synthetic.json stays byte-identical
        params["bands"] = ["ir", "vis", "nir"]
    return params


_NIR_README = """- Near-infrared (`Nir/`, opt-in): reflectance lit by the sun or, at night, by the car's illuminator (bright
  near the car, falling towards the horizon), lamps, retro-reflectors (road markings, number plates, stripes on
  clothing); no heat. Its noise has its own random stream: `Ir/` and `Vis/` are the bytes of a two-band run.
"""


def _is_complete(root: Path, params: dict) -> bool:
    try:
        recorded = json.loads((root / PARAMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    images = params["num_scenes"] * params["frames_per_scene"]
    folders = [("Ir", "*.png"), ("Vis", "*.png"), ("Annotation", "*.xml")]
    if "bands" in params:
        folders.append(("Nir", "*.png"))
    return recorded == params and all(
        sum(1 for _ in (root / folder).glob(pattern)) == images for folder, pattern in folders
    )


def generate_synthetic_m3fd(
    root: str | Path,
    *,
    num_scenes: int,
    frames_per_scene: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    nir: bool = False,
) -> Path:
    """Write (or reuse) a synthetic dataset in M3FD's native layout; returns ``root``.

    Args:
        root: output folder. Reused untouched when it holds a complete dataset made with the same parameters;
            regenerated when it holds one made with other parameters; an existing folder with other contents
            is never replaced (FileExistsError).
        num_scenes: number of scenes (at least 3: train, val and test each get whole scenes).
        frames_per_scene: consecutive frames per scene (ids are consecutive across scenes: 00000, 00001 ...).
        size: (width, height) in pixels; object sizes scale with the height (15-80 px at 256).
        seed: everything drawn derives from it; the same arguments give byte-identical files.
        nir: also write a near-infrared band (``Nir/``); the other files are the same bytes as without it.
    """
    root = Path(root)
    width, height = int(size[0]), int(size[1])
    if num_scenes < len(SPLIT_NAMES):
        raise ValueError(f"num_scenes must be at least {len(SPLIT_NAMES)} (one whole scene per split), got {num_scenes}")
    if frames_per_scene < 1 or width < 64 or height < 64:
        raise ValueError(f"need frames_per_scene >= 1 and a size of at least 64x64, got {frames_per_scene} and {width}x{height}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    params = _params(num_scenes, frames_per_scene, (width, height), seed, nir)
    if _is_complete(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not (root / PARAMS_FILE).is_file():
        raise FileExistsError(f"{root} exists and is not a synthetic dataset; refusing to replace it")

    cycle_start = seed % len(SCENARIO_CYCLE)
    scenes = []
    for k in range(num_scenes):
        rng = np.random.default_rng([seed, k])
        scenario = SCENARIO_CYCLE[(cycle_start + k) % len(SCENARIO_CYCLE)]
        name = f"{PLACES[int(rng.integers(len(PLACES)))]}_{k:02d}"
        scenes.append(make_scene(rng, name, scenario, width, height))
    ids_of = [[f"{k * frames_per_scene + f:05d}" for f in range(frames_per_scene)] for k in range(num_scenes)]

    with atomic_dir(root) as tmp:
        for folder in ("Ir", "Vis", "Annotation", "meta") + (("Nir",) if nir else ()):
            (tmp / folder).mkdir()
        for k, scene in enumerate(scenes):
            for f, image_id in enumerate(ids_of[k]):
                rng = np.random.default_rng([seed, k, f, 1])
                if nir:  # its own stream ([..., 2]): the visible and infrared draws are those of a two-band run
                    ir, vis, nir_image, boxes = render_frame_bands(scene, f, rng, np.random.default_rng([seed, k, f, 2]))
                    (tmp / "Nir" / f"{image_id}.png").write_bytes(cv2.imencode(".png", nir_image)[1].tobytes())
                else:
                    ir, vis, boxes = render_frame(scene, f, rng)
                (tmp / "Ir" / f"{image_id}.png").write_bytes(cv2.imencode(".png", ir)[1].tobytes())
                (tmp / "Vis" / f"{image_id}.png").write_bytes(cv2.imencode(".png", vis)[1].tobytes())
                (tmp / "Annotation" / f"{image_id}.xml").write_text(_voc_xml(image_id, width, height, boxes), encoding="utf-8")
        scenario_file = [
            {
                "name": scenario,
                "scene": [
                    {"name": s.name, "range": [{"min": int(ids_of[k][0]), "max": int(ids_of[k][-1])}]}
                    for k, s in enumerate(scenes)
                    if s.scenario == scenario
                ],
            }
            for scenario in dict.fromkeys(s.scenario for s in scenes)
        ]
        (tmp / "meta" / "scenario.json").write_text(json.dumps(scenario_file, indent=4) + "\n", encoding="utf-8")
        assignment = split_groups(
            {s.name: frames_per_scene for s in scenes},
            fractions=SYNTHETIC_FRACTIONS,
            seed=seed,
            strata={s.name: s.scenario for s in scenes},
        )
        for split in SPLIT_NAMES:
            listed = [i for k, s in enumerate(scenes) if assignment[s.name] == split for i in ids_of[k]]
            (tmp / "meta" / f"{split}.txt").write_text("".join(f"{i}\n" for i in listed), encoding="utf-8")
        text = _README.format(images=num_scenes * frames_per_scene, width=width, height=height, **{
            k: v for k, v in params.items() if k in ("num_scenes", "frames_per_scene", "seed", "version")
        })
        (tmp / README_FILE).write_text(text + (_NIR_README if nir else ""), encoding="utf-8")
        (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")  # written last
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description="Write SYNTHETIC scenes in M3FD's layout.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--scenes", type=int, default=DEFAULT_NUM_SCENES, help="number of scenes (>= 3)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES_PER_SCENE, help="consecutive frames per scene")
    parser.add_argument("--size", type=int, nargs=2, default=DEFAULT_SIZE, metavar=("W", "H"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nir", action="store_true", help="also write a near-infrared band (Nir/)")
    args = parser.parse_args(argv)
    try:
        root = generate_synthetic_m3fd(args.out, num_scenes=args.scenes, frames_per_scene=args.frames,
                                       size=tuple(args.size), seed=args.seed, nir=args.nir)
    except (ValueError, OSError) as err:  # bad sizes/counts, or an --out that is a file or foreign folder
        parser.exit(2, f"error: {err}\n")
    print(f"synthetic M3FD-layout data: {root} ({args.scenes} scenes x {args.frames} frames, {args.size[0]}x{args.size[1]}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
