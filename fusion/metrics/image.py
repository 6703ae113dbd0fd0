"""Image-fusion quality metrics, computed the way the field's reference evaluator computes them.

The reference is CDDFuse's ``utils/Evaluator.py`` (github.com/Zhaozixiang1228/MMIF-CDDFuse, commit fd8da1f), whose
numbers fill the published tables; ``../shared/METRICS.md`` describes it line by line and
``../shared/data/metric_reference.json`` holds its output on 36 cases, which the tests reproduce.

Conventions in short (each metric's docstring gives the details):

* Images are grey, whole numbers 0..255, as ``data.io.read_gray_reference`` reads files. Colour (H, W, 3) BGR
  arrays are reduced to their luma and rounded the same way; float arrays are rounded half-to-even.
* F is the fused image; its sources S_1..S_N (N >= 2) are named by modality (:class:`FusionSet`: "ir", "vis",
  "nir", "lwir", ...). With two, A is the source in the "ir" role (infrared; medical: CT beside MRI, MRI beside
  PET/SPECT) and B the one in the "vis" role (visible; MRI beside CT, PET/SPECT beside MRI); :class:`FusionTriple`
  and ``evaluate(fused, ir, vis)`` are that two-source form. Every metric is symmetric in its sources.
* N sources (each metric's docstring gives the formula): EN, SD, SF and AG look at F alone. MI, VIF and SSIM are
  **sums** over the sources, as the field sums them over two (so they can exceed 1); MI is in nats. Qabf weights
  each source's edge preservation by that source's own edge strength (the Xydeas-Petrovic weighting over every
  source). SCD sums corr(S_k, F - mean of the other sources): the literature defines it for two sources only,
  and this is the choice that is its formula for two. With two sources every value is exactly the two-source
  reference's (the reference vectors are tested); a source's name and position change no value.
* Per-source terms for reports: ``metric_terms`` ({metric: {source: term}} for MI, SCD, VIF, Qabf and SSIM; the
  first four are the sums of their terms, Qabf's terms are the sources' shares of it).
* Degenerate inputs give defined values, never NaN: see ``scd``, ``vif`` and ``qabf``.

Speed (0.16 s per 1024x768 triple on one core of the development machine against the reference's 3.7 s;
``benchmarks/bench_metrics.py``): the metrics share per-image work through :class:`GreyImage` (grey codes, sums,
Sobel field, SSIM's local means, the VIF pyramid), computed once per image and reused by every metric and every
source (each further source adds its comparative terms: MI, SCD, VIF, Qabf, SSIM); prepare the sources once
with :class:`GreyImage` to score several fused images against them. VIF, most of the cost, works tile by tile so
that OpenCV's float64 filters and the per-pixel terms run in cache (see ``vif_terms``). OpenCV does the filtering
(separable Gaussians, box sums, Sobel kernels) and ``np.bincount`` the joint histograms.

CLI: ``python -m fusion.metrics --fused DIR --src vis=DIR --src nir=DIR [--src lwir=DIR ...] [--json OUT [--terms]]
[--workers N]``; ``--ir DIR --vis DIR`` is the same as ``--src ir=DIR --src vis=DIR``.
"""
from __future__ import annotations

import argparse
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np

from data.errors import DatasetError
from data.io import atomic_write_json, luma, read_gray_reference
from data.paired import check_image_groups, images_by_stem, match_pairs
from data.provenance import package_versions

from data.registry import Registry

REFERENCE = "CDDFuse utils/Evaluator.py (github.com/Zhaozixiang1228/MMIF-CDDFuse, commit fd8da1f)"

# VIF needs every one of its 4 scales to keep a non-empty 'valid' window: a 41-pixel side shrinks to 25, 9, 3 and 1.
MIN_SIDE = 41

Metric = Callable[["FusionSet"], float]
METRICS: Registry[Metric] = Registry("fusion metric")
# Per-source terms of the metrics that compare F with each source: {source name: term}. For MI, SCD, VIF and SSIM
# the metric is the sum of its terms; for Qabf each term is that source's share of the weighted sum (module
# docstring). EN, SD, SF and AG look at F alone and have none.
Terms = Callable[["FusionSet"], dict[str, float]]
METRIC_TERMS: Registry[Terms] = Registry("per-source metric terms")


class DegenerateInputWarning(UserWarning):
    """A metric met an input for which the reference's formula is undefined and returned its documented value."""


class ScaleWarning(UserWarning):
    """An input looks like it is on another scale than the 0..255 the metrics expect."""


class _cached_property:  # noqa: N801 (a decorator, named like functools.cached_property)
    """``functools.cached_property`` without its lock. Before Python 3.12 that lock is shared by all instances, so
    threads scoring different images would queue behind each other. Two threads that first touch the same
    property of the same image at once both compute it; one result is kept (they are equal)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.fn(instance)
        return value


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------

def to_reference_gray(image: np.ndarray) -> np.ndarray:
    """Turn an image array into what the reference evaluator scores: float32 (H, W) whole numbers 0..255.

    Args:
        image: grey (H, W) or BGR (H, W, 3), uint8 or float on the 0..255 scale. Colour is reduced to its luma in
            float32 (OpenCV BGR->GRAY, ``data.io.luma``) and rounded half-to-even, like ``read_gray_reference``; a
            float grey image is rounded the same way, in its own precision (what saving it as 8-bit would do).
            Values are never clipped: anything outside 0..255 after rounding, or not finite, is an error. A float
            image whose values all lie in 0..1 gets a ``ScaleWarning``: it is most likely on the 0..1 scale, and
            would be scored as a two-level image.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        gray = np.round(luma(image))
    elif image.ndim == 2:
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise TypeError(f"unsupported image dtype {image.dtype}; expected uint8 or float on the 0..255 scale")
        # Round before narrowing (float64 255.4999999 is 255, not float32's 255.5 -> 256); a new array either way,
        # so the caller's image is never aliased.
        gray = image.astype(np.float32) if image.dtype == np.uint8 else np.round(image).astype(np.float32)
    else:
        raise ValueError(f"expected a grey (H, W) or BGR (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        low, high = gray.min(), gray.max()  # NaN propagates into both, and fails the test below
        if not (low >= 0 and high <= 255):
            raise ValueError(f"image values must be finite and within 0..255, got {low}..{high}")
        if np.issubdtype(image.dtype, np.floating) and 0 < image.max() <= 1:
            warnings.warn("a float image with all values in 0..1 is scored on the 0..255 scale (as a two-level "
                          "image); multiply it by 255 if it is on the 0..1 scale", ScaleWarning, stacklevel=3)
    return gray


def _exact_dot(x: np.ndarray, y: np.ndarray) -> int:
    """sum(x * y) of two whole-number float64 arrays as a Python int.

    Exact while every partial sum stays below 2^53 (any image below ~1e11 pixels of values 0..255), in any
    summation order. ``einsum`` rather than ``@``: a multi-threaded BLAS dot is slower here on a busy machine.
    """
    return int(np.einsum("i,i->", x.ravel(), y.ravel()))


def _valid_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation with a symmetric 1-D ``kernel`` (float64), keeping only the 'valid' part.

    Equivalent to ``scipy.signal.convolve2d(image, outer(kernel, kernel), mode='valid')``: the border mode does
    not matter because every pixel it touches is cropped.
    """
    r = len(kernel) // 2
    return cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_CONSTANT)[r:-r, r:-r]


def vif_window(size: int) -> np.ndarray:
    """1-D factor of the VIF Gaussian window: MATLAB ``fspecial('gaussian', size, size / 5)`` is its outer product.

    The reference's cut-off (weights below eps * max set to 0) removes nothing for sizes 3..17, so the 2-D window
    is exactly separable. Returns float64 (size,), summing to 1.
    """
    sigma = size / 5.0
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


# Window sizes 2^(5-s) + 1 for scales s = 1..4: 17, 9, 5, 3 (Sheikh & Bovik's pixel-domain VIF, as in the reference).
VIF_WINDOWS: tuple[np.ndarray, ...] = tuple(vif_window(2 ** (5 - s) + 1) for s in range(1, 5))
for _w in VIF_WINDOWS:
    _w.flags.writeable = False
VIF_NOISE_VAR = 2.0  # sigma_n^2 of the HVS noise model (reference value)
VIF_EPS = 1e-10  # the reference's variance threshold
_BELOW_VIF_EPS = float(np.nextafter(VIF_EPS, 0.0))  # "x > this" is exactly "x >= VIF_EPS"

# Sobel kernels of the reference's Qabf, and the 180-degree rotation that turns its convolution into OpenCV's
# correlation. Keeping the reference's signs matters: the angle arctan(Sy / Sx) and its Sx == 0 rule depend on them.
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)[::-1, ::-1].copy()
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)[::-1, ::-1].copy()
_SOBEL_MAX = 4 * 255  # largest |response| of either kernel on 0..255 images

# scikit-image 0.19 defaults for float32 input: 7x7 uniform window, K1, K2, sample covariance (49/48), and
# data_range = dtype_range[float32] = (-1, 1) -> 2, so C1 = (0.01 * 2)^2 and C2 = (0.03 * 2)^2.
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2, SSIM_DATA_RANGE = 0.01, 0.03, 2.0
SSIM_C1, SSIM_C2 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2, (SSIM_K2 * SSIM_DATA_RANGE) ** 2
SSIM_COV_NORM = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
_ONES_7 = np.ones(SSIM_WINDOW, np.float32)


@dataclass(frozen=True)
class SsimStats:
    """One image's side of SSIM, float32 (H, W): 7x7 mean, mean squared, sample variance."""

    mean: np.ndarray
    mean_sq: np.ndarray
    variance: np.ndarray


class GreyImage:
    """One grey image prepared for scoring, with the per-image quantities the metrics share, computed on first use.

    Build it from any array ``to_reference_gray`` accepts. ``pixels`` is float32 (H, W), whole numbers 0..255.
    Everything else is derived from ``pixels`` and cached, so one ``GreyImage`` of a source can be scored against
    many fused images (and each fused image against both sources) without recomputing its side of the work.
    """

    def __init__(self, image: np.ndarray):
        self.pixels = to_reference_gray(image)
        self.pixels.flags.writeable = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]

    @_cached_property
    def f64(self) -> np.ndarray:
        """The pixels as float64 (H, W)."""
        return self.pixels.astype(np.float64)

    @_cached_property
    def codes(self) -> np.ndarray:
        """Grey levels as uint16 (H*W,), for (joint) histograms."""
        return self.pixels.astype(np.uint16).ravel()

    @_cached_property
    def sums(self) -> tuple[int, int]:
        """Exact (sum of pixels, sum of squared pixels) as Python ints: float64 sums of whole numbers this size
        are exact."""
        return int(self.f64.sum()), _exact_dot(self.f64, self.f64)

    @_cached_property
    def sobel(self) -> tuple[np.ndarray, np.ndarray]:
        """(edge strength, edge angle) of Qabf, float32 (H, W) like the reference.

        Sobel responses with zero padding; strength sqrt(Sx^2 + Sy^2); angle arctan(Sy / Sx) in [-pi/2, pi/2],
        pi/2 where Sx == 0.
        """
        sx = cv2.filter2D(self.pixels, cv2.CV_32F, _SOBEL_X, borderType=cv2.BORDER_CONSTANT)
        sy = cv2.filter2D(self.pixels, cv2.CV_32F, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
        strength = sx * sx
        strength += sy * sy
        return np.sqrt(strength, out=strength), _sobel_angle(sx, sy)

    @_cached_property
    def ssim_stats(self) -> SsimStats:
        """This image's side of SSIM: local mean, its square and the sample variance, float32 (H, W), with the
        reference's float32 operation order (v = 49/48 * (E[x^2] - mean * mean))."""
        mean = _window_mean(self.pixels)
        mean_sq = mean * mean
        variance = _window_mean(self.pixels * self.pixels)
        variance -= mean_sq
        variance *= SSIM_COV_NORM
        return SsimStats(mean, mean_sq, variance)

    @_cached_property
    def vif_levels(self) -> tuple[np.ndarray, ...]:
        """The 4-level VIF pyramid, float64: level 0 is the image; level s > 0 is level s - 1 filtered with scale
        s's window ('valid') and decimated by 2 (rows and columns 0, 2, 4, ...)."""
        levels = [self.f64]
        for window in VIF_WINDOWS[1:]:
            levels.append(np.ascontiguousarray(_valid_filter(levels[-1], window)[::2, ::2]))
        return tuple(levels)


@cache
def _angle_table() -> np.ndarray:
    """The reference's edge angle for every pair of Sobel responses: float32 (2041, 2041), indexed
    [sy + 1020, sx + 1020], holding float32 arctan(sy / sx), and pi/2 where sx == 0. Built once (16 MB)."""
    k = np.arange(-_SOBEL_MAX, _SOBEL_MAX + 1, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = np.arctan(k[:, None] / k[None, :])
    table[:, _SOBEL_MAX] = np.float32(math.pi / 2)
    table.flags.writeable = False
    return table


def _sobel_angle(sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """The reference's edge angle, float32: arctan(sy / sx) computed in float32, pi/2 where sx == 0.

    Sobel responses of whole-number images in 0..255 are whole numbers in -1020..1020, so the angle is looked up
    in ``_angle_table``: identical to the reference's arithmetic on every such pair, and several times faster.
    The flat index is formed in float32, exact below 2^24.
    """
    side = 2 * _SOBEL_MAX + 1
    index = sy * np.float32(side)
    index += sx
    index += _SOBEL_MAX * (side + 1)
    return _angle_table().take(index.astype(np.intp))


def _window_mean(image: np.ndarray) -> np.ndarray:
    """Mean over SSIM's 7x7 window of a whole-number float32 image (values or products of values 0..255).

    The 49-term window sums stay below 2^24, so float32 sums are exact and the one division rounds them once:
    the exactly rounded local mean. (skimage 0.19 rounds after each of its two 1-D passes; that differs by
    at most one float32 ulp, which moves the summed SSIM by under 4e-6 on the reference cases.)
    """
    sums = cv2.sepFilter2D(image, cv2.CV_32F, _ONES_7, _ONES_7, borderType=cv2.BORDER_REFLECT)
    sums /= np.float32(SSIM_WINDOW * SSIM_WINDOW)
    return sums


ImageLike = np.ndarray | GreyImage


def _as_grey(image: ImageLike) -> GreyImage:
    return image if isinstance(image, GreyImage) else GreyImage(image)


class FusionSet:
    """A fused image and its named sources (at least two), validated to share one size of at least ``MIN_SIDE``
    per side.

    ``sources`` maps a modality name ("ir", "vis", "nir", "lwir", ...) to its prepared image, in the caller's order;
    that order is the order of the per-source terms (``metric_terms``). Every metric is symmetric in the sources,
    so the order and the names change no score.
    """

    def __init__(self, fused: GreyImage, sources: Mapping[str, GreyImage]):
        problems = []
        if len(sources) < 2:
            problems.append(f"at least two sources are needed, got {len(sources)} ({', '.join(sources) or 'none'})")
        problems += [f"source name {name!r} is not a non-empty string" for name in sources
                     if not (isinstance(name, str) and name)]
        if problems:
            raise ValueError("; ".join(problems))
        self.fused = fused
        self.named: Mapping[str, GreyImage] = MappingProxyType(dict(sources))
        self._terms: dict[str, dict[str, float]] = {}  # per-source terms, computed once for metrics and reports
        shapes = [("fused", fused.shape), *((name, image.shape) for name, image in self.named.items())]
        if len({shape for _, shape in shapes}) != 1:
            raise ValueError("images differ in size: " + ", ".join(f"{name} {shape}" for name, shape in shapes))
        if min(fused.shape) < MIN_SIDE:
            raise ValueError(f"images of {fused.shape} are too small: VIF needs at least {MIN_SIDE} pixels a side")

    @classmethod
    def of(cls, fused: ImageLike, sources: Mapping[str, ImageLike]) -> FusionSet:
        """Prepare arrays (or reuse prepared :class:`GreyImage` s): ``FusionSet.of(f, {"vis": v, "nir": n})``."""
        return FusionSet(_as_grey(fused), {name: _as_grey(image) for name, image in sources.items()})

    @property
    def names(self) -> tuple[str, ...]:
        """The source names, in order."""
        return tuple(self.named)

    @property
    def sources(self) -> tuple[GreyImage, ...]:
        """The source images, in the order of ``names``."""
        return tuple(self.named.values())

    def terms(self, metric: str) -> dict[str, float]:
        """The per-source terms of ``metric`` (one of ``METRIC_TERMS``), computed on first use and kept, so a
        metric and a report of its terms share the work."""
        if metric not in self._terms:
            self._terms[metric] = METRIC_TERMS.get(metric)(self)
        return dict(self._terms[metric])


class FusionTriple(FusionSet):
    """The two-source form by position, (fused, ir, vis): a :class:`FusionSet` with sources named "ir" and "vis".

    Kept for callers written before sources had names; new code builds a :class:`FusionSet`.
    """

    def __init__(self, fused: GreyImage, ir: GreyImage, vis: GreyImage):
        super().__init__(fused, {"ir": ir, "vis": vis})

    @classmethod
    def of(cls, fused: ImageLike, ir: ImageLike, vis: ImageLike) -> FusionTriple:  # type: ignore[override]
        return cls(_as_grey(fused), _as_grey(ir), _as_grey(vis))

    @property
    def ir(self) -> GreyImage:
        return self.named["ir"]

    @property
    def vis(self) -> GreyImage:
        return self.named["vis"]


# --------------------------------------------------------------------------------------------------------------
# Metrics (registered in the order of the output dict: EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM)
# --------------------------------------------------------------------------------------------------------------

@METRICS.register("EN")
def entropy(t: FusionSet) -> float:
    """EN: Shannon entropy of the fused image's 256-level histogram, in bits (fused image only).

    EN = -sum p log2 p over the non-empty levels, p = count / (M N). A constant image gives 0.
    """
    counts = np.bincount(t.fused.codes, minlength=256)
    p = counts[counts > 0] / t.fused.pixels.size
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 (constant image) into 0.0


@METRICS.register("SD")
def standard_deviation(t: FusionSet) -> float:
    """SD: population standard deviation (ddof 0) of the fused image, grey levels (fused image only).

    Computed exactly from integer moments; the reference's float32 accumulation differs by at most ~5e-6.
    """
    n = t.fused.pixels.size
    total, total_sq = t.fused.sums
    return math.sqrt((n * total_sq - total * total) / (n * n))


@METRICS.register("SF")
def spatial_frequency(t: FusionSet) -> float:
    """SF: spatial frequency sqrt(RF^2 + CF^2) of the fused image, grey levels per pixel (fused image only).

    RF^2 is the mean squared horizontal neighbour difference over its M (N-1) terms, CF^2 the mean squared vertical
    one over (M-1) N terms (each over its own count). Sums are exact; the reference's float32 means differ by
    at most ~6e-6.
    """
    img = t.fused.f64
    dx = np.diff(img, axis=1).ravel()
    dy = np.diff(img, axis=0).ravel()
    return math.sqrt(_exact_dot(dx, dx) / dx.size + _exact_dot(dy, dy) / dy.size)


@METRICS.register("AG")
def average_gradient(t: FusionSet) -> float:
    """AG: average gradient of the fused image, grey levels per pixel (fused image only).

    Mean over all pixels of sqrt((Gx^2 + Gy^2) / 2), with ``np.gradient``'s differences: central (x[j+1] -
    x[j-1]) / 2 inside, one-sided at the first and last row/column. Float32, as in the reference (bit-identical).
    """
    gy, gx = np.gradient(t.fused.pixels)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2)))


def _mutual_information(fused: GreyImage, source: GreyImage) -> float:
    """I(F; S) in nats from the exact joint histogram of the integer grey levels (sklearn's mutual_info_score)."""
    joint = np.bincount((fused.codes << 8) | source.codes, minlength=256 * 256).reshape(256, 256)
    row, col = joint.sum(axis=1), joint.sum(axis=0)
    if np.count_nonzero(row) < 2 or np.count_nonzero(col) < 2:
        return 0.0  # one of the images is constant: no information is shared (sklearn returns 0 as well)
    i, j = np.nonzero(joint)
    counts = joint[i, j].astype(np.float64)
    n = float(fused.pixels.size)
    mi = float(np.sum(counts * np.log(counts * n / (row[i].astype(np.float64) * col[j]))) / n)
    return max(mi, 0.0)


@METRIC_TERMS.register("MI")
def mutual_information_terms(t: FusionSet) -> dict[str, float]:
    """I(F; S_k) in nats for each source S_k."""
    return {name: _mutual_information(t.fused, source) for name, source in t.named.items()}


@METRICS.register("MI")
def mutual_information(t: FusionSet) -> float:
    """MI: sum over the sources S_k of I(F; S_k), in nats (natural log); two sources: I(F; A) + I(F; B).

    Each term is the mutual information of the exact joint histogram of integer grey levels (no binning), as
    ``sklearn.metrics.mutual_info_score`` on the flattened images; a constant image shares 0 nats.
    """
    return sum(t.terms("MI").values())


def _moment(x: GreyImage, y: GreyImage) -> int:
    """n * sum(x y) - sum(x) sum(y) (n times the co-moment), exact: whole-number float64 dot products are exact."""
    if x is y:
        total, total_sq = x.sums
        return x.pixels.size * total_sq - total * total
    return x.pixels.size * _exact_dot(x.f64, y.f64) - x.sums[0] * y.sums[0]


@METRIC_TERMS.register("SCD")
def scd_terms(t: FusionSet) -> dict[str, float]:
    """corr(S_k, F - mean of the other sources) for each source S_k (see ``scd``), 0 where undefined."""
    images = t.sources
    n = len(images)
    moments: dict[tuple[int, int], int] = {}

    def m(i: int, j: int) -> int:  # co-moment of images i, j; index n is F. Each pair is computed once.
        key = (min(i, j), max(i, j))
        if key not in moments:
            x, y = (t.fused if k == n else images[k] for k in key)
            moments[key] = _moment(x, y)
        return moments[key]

    terms = {}
    for k, name in enumerate(t.names):
        others = [j for j in range(n) if j != k]
        # D = (n-1) F - sum of the others: (n-1) times F minus the others' mean, which has the same correlation
        # and keeps every co-moment a whole number, so "constant" is decided exactly.
        cross = (n - 1) * m(k, n) - sum(m(k, j) for j in others)
        spread_d = ((n - 1) ** 2 * m(n, n) - 2 * (n - 1) * sum(m(n, j) for j in others)
                    + sum(m(i, j) for i in others for j in others))
        spread = m(k, k) * spread_d
        terms[name] = cross / math.sqrt(spread) if spread > 0 else 0.0
    return terms


@METRICS.register("SCD")
def scd(t: FusionSet) -> float:
    """SCD: sum over the sources S_k of corr(S_k, F - mean of the other sources), global Pearson; unitless.

    Two sources: corr(A, F - B) + corr(B, F - A) (Aslantas & Bendes 2015), the reference's formula. For more the
    literature has no definition; the difference image D_k = F - mean(S_j, j != k) is this project's choice: it is
    the two-source formula exactly for N = 2, it keeps one term per source like the other summed metrics (so SCD
    lies in [-N, N]), and for an equal-weight average of N sources D_k is S_k / N plus a remainder that shrinks
    as the other sources agree.
    **Degenerate case:** a correlation is 0/0 when its difference image is constant (F equals a source, up to an
    offset) or its source is constant; the reference then returns NaN. Here that term counts as **0** (the
    difference carries nothing that could correlate), so F == A gives SCD = corr(A, A - B).
    Computed exactly from integer co-moments (cov(A, F - B) = cov(A, F) - cov(A, B), var(F - B) = var F + var B
    - 2 cov(F, B)), so "constant" is detected exactly; the reference's float32 differs by at most ~2e-7.
    """
    return sum(t.terms("SCD").values())


# VIF's local statistics are computed tile by tile: OpenCV's float64 column filter is about twice as fast when the
# 17 rows it reads fit in L1 (tiles 256 columns wide), and per-tile temporaries stay in cache. The tile size
# changes the speed, never the value (each output pixel is computed from the same inputs).
VIF_TILE_ROWS, VIF_TILE_COLS = 376, 256


def _tiles(shape: tuple[int, int], margin: int, rows: int, cols: int) -> Iterator[tuple[slice, slice]]:
    """Input windows that cover the 'valid' output of a filter reaching ``margin`` pixels from its centre, in tiles
    of at most rows x cols output pixels; each window includes the margin on every side."""
    out_h, out_w = shape[0] - 2 * margin, shape[1] - 2 * margin
    for top in range(0, out_h, rows):
        for left in range(0, out_w, cols):
            yield (slice(top, min(top + rows, out_h) + 2 * margin), slice(left, min(left + cols, out_w) + 2 * margin))


# Per tile, every array keeps the tile's full size: a pixel closer than the window radius to the tile's edge holds a
# zero-padded (invalid) value and is dropped only when the terms are summed (``_sum_log``). Arrays of the full
# size are contiguous, and NumPy is about twice as fast on them as on 'valid' views.

def _filter_same(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Correlation with the separable ``window`` (float64), zero padding, same size as ``image``."""
    return cv2.sepFilter2D(image, cv2.CV_64F, window, window, borderType=cv2.BORDER_CONSTANT)


def _local_stats(image: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local Gaussian (mean, variance) of an image tile, float64, tile-sized, with the reference's clamps:
    variances below ``VIF_EPS`` (negative ones included) are set to 0."""
    mean = _filter_same(image, window)
    variance = _filter_same(image * image, window)
    variance -= mean * mean
    # TOZERO keeps values > thresh: negatives -> 0, then anything below eps -> 0, as the reference does.
    # (In place; the returned array is used in case OpenCV ever had to allocate.)
    variance = cv2.threshold(variance, _BELOW_VIF_EPS, 0.0, cv2.THRESH_TOZERO, dst=variance)[1]
    return mean, variance


def _sum_log(terms: np.ndarray, margin: int) -> float:
    """sum(ln(terms)) over a tile-sized, contiguous float64 array of terms in [1, 2^16), leaving out the invalid
    ``margin`` pixels along each edge; ``terms`` is overwritten.

    The log is the costly step, so products of 16 terms (below 2^256, far from overflow) are logged instead of
    each term: 16 times fewer logs, each product rounded 15 times (relative error ~2e-15 per product).
    """
    for edge in (np.s_[:margin], np.s_[-margin:], np.s_[:, :margin], np.s_[:, -margin:]):
        terms[edge] = 1.0  # ln 1 = 0: the invalid pixels add nothing
    flat = terms.reshape(-1)
    n = flat.size
    for _ in range(4):  # fold the back half onto the front half: after 4 folds, products of up to 16 terms
        half = n // 2
        np.multiply(flat[:half], flat[n - half:n], out=flat[:half])
        n -= half  # an odd middle term, flat[half], stays in place as the last live term
    return float(cv2.log(flat[:n]).sum())


def _vif_information(variance: np.ndarray, margin: int) -> float:
    """sum ln(1 + s1 / sn2) over a tile of reference-image variances (``variance`` is not modified)."""
    term = variance * (1.0 / VIF_NOISE_VAR)
    term += 1.0
    return _sum_log(term, margin)


def _vif_kept(cross: np.ndarray, mean_r: np.ndarray, mean_d: np.ndarray, s1: np.ndarray, s2: np.ndarray,
              margin: int) -> float:
    """sum ln(1 + g^2 s1 / (sv2 + sn2)) over a tile of pixels (float64, ``cross`` = E[r d] is overwritten).

    With c = E[r d] - mean_r mean_d, s1 = var(r) and s2 = var(d) (each already 0 below eps): gain g = c / (s1 + eps),
    0 where g < 0 or s2 == 0 (the reference's rules); noise sv2 = max(s2 - g c, eps). Where s1 == 0 the term is 0
    whatever g is, as in the reference. (The reference uses log10; the base cancels in VIF's ratio.)
    """
    cov = cross
    cov -= mean_r * mean_d
    gain = np.maximum(cov, 0.0)
    gain /= s1 + VIF_EPS
    np.copyto(gain, 0.0, where=s2 == 0)
    cov *= gain  # -> noise
    noise = np.subtract(s2, cov, out=cov)
    np.maximum(noise, VIF_EPS, out=noise)
    noise += VIF_NOISE_VAR
    gain *= gain  # -> 1 + g^2 s1 / (sv2 + sn2)
    gain *= s1
    gain /= noise
    gain += 1.0
    return _sum_log(gain, margin)


def vif_terms(t: FusionSet) -> list[tuple[float, float]]:
    """VIFP's (kept, available) information for each source as the reference image and F as the distorted one,
    summed over the 4 scales: (sum ln(1 + g^2 s1 / (sv2 + sn2)), sum ln(1 + s1 / sn2)), in the order of
    ``t.names``.

    The fused image's local statistics are computed once per tile and shared by all sources.
    """
    terms = [[0.0, 0.0] for _ in t.sources]
    for scale, window in enumerate(VIF_WINDOWS):
        radius = len(window) // 2
        fused_level = t.fused.vif_levels[scale]
        source_levels = [source.vif_levels[scale] for source in t.sources]
        for tile in _tiles(fused_level.shape, radius, VIF_TILE_ROWS, VIF_TILE_COLS):
            dist = fused_level[tile]
            mean_d, var_d = _local_stats(dist, window)
            for term, level in zip(terms, source_levels):
                ref = level[tile]
                mean_r, var_r = _local_stats(ref, window)
                term[0] += _vif_kept(_filter_same(ref * dist, window), mean_r, mean_d, var_r, var_d, radius)
                term[1] += _vif_information(var_r, radius)
    return [(kept, available) for kept, available in terms]


def _vifp(kept: float, available: float) -> float:
    if available == 0.0:
        warnings.warn("VIF: a source has no variance at any scale; its term is 1.0 as in the reference",
                      DegenerateInputWarning, stacklevel=4)
        return 1.0
    return kept / available


@METRIC_TERMS.register("VIF")
def vif_information_terms(t: FusionSet) -> dict[str, float]:
    """VIFP(S_k, F) for each source S_k (the source as reference, F as distorted; see ``vif``)."""
    return {name: _vifp(kept, available) for name, (kept, available) in zip(t.names, vif_terms(t))}


@METRICS.register("VIF")
def vif(t: FusionSet) -> float:
    """VIF: sum over the sources S_k of VIFP(S_k, F); two sources: VIFP(A, F) + VIFP(B, F), **summed**.

    Sheikh & Bovik's VIFP as the reference computes it: each source is the reference image and F the distorted
    one; 4 scales with Gaussian windows 17, 9, 5, 3 (sigma = size / 5, MATLAB fspecial), 'valid' filtering,
    decimation by 2 between scales, sigma_n^2 = 2; float64; VIFP = kept / available information (``vif_terms``).
    A term is 1.0 when its source has no variance at any scale (the reference's 0/0 rule: the kept information
    is 0 too), with a ``DegenerateInputWarning``; otherwise a constant F makes the term 0.
    """
    return sum(t.terms("VIF").values())


# Xydeas & Petrovic sigmoid constants, as in the reference (Tg, kg, Dg for strength; Ta, ka, Da for orientation).
QABF_TG, QABF_KG, QABF_DG = 0.9994, -15, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22, 0.8


def _sigmoid(x: np.ndarray, top: float, slope: float, centre: float) -> np.ndarray:
    """top / (1 + exp(slope * (x - centre))), float32, computed in place in ``x`` in the reference's order."""
    x -= centre
    x *= slope
    x = cv2.exp(x, dst=x)  # within 4 float32 ulps of np.exp and ~5x faster; Qabf moves by < 1e-6
    x += 1
    return np.divide(top, x, out=x)


def _edge_preservation(source: GreyImage, fused: GreyImage) -> np.ndarray:
    """Q^{SF} per pixel, float32 (H, W): how well F keeps the source's edge strength and orientation."""
    g_s, a_s = source.sobel
    g_f, a_f = fused.sobel
    # Relative strength min/max; where the strengths are equal the reference takes g_f itself (its quirk), not 1.
    relative = np.minimum(g_s, g_f)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative /= np.maximum(g_s, g_f)
    np.copyto(relative, g_f, where=g_s == g_f)
    # Orientation 1 - |a_s - a_f| / (pi / 2), with no wrap-around (it can be negative).
    orientation = np.abs(a_s - a_f)
    orientation /= np.float32(math.pi / 2)
    np.subtract(1, orientation, out=orientation)
    q = _sigmoid(relative, QABF_TG, QABF_KG, QABF_DG)
    q *= _sigmoid(orientation, QABF_TA, QABF_KA, QABF_DA)
    return q


def _qabf_weight(t: FusionSet) -> np.float32:
    """sum over pixels of sum_k g_k, float32, added in source order as the reference adds gA + gB."""
    strengths = [source.sobel[0] for source in t.sources]
    total = strengths[0] + strengths[1]
    for g in strengths[2:]:
        total += g
    return np.sum(total)


@METRIC_TERMS.register("Qabf")
def qabf_terms(t: FusionSet) -> dict[str, float]:
    """Each source's share of Qabf: sum(Q^{S_k F} g_k) / sum(sum_j g_j). The shares add up to Qabf (to float32
    rounding: Qabf itself sums the weighted map before dividing); 0.0 for every source when no source has an
    edge."""
    weight = _qabf_weight(t)
    if weight == 0:
        return {name: 0.0 for name in t.names}
    return {name: float(np.sum(_edge_preservation(source, t.fused) * source.sobel[0]) / weight)
            for name, source in t.named.items()}


@METRICS.register("Qabf")
def qabf(t: FusionSet) -> float:
    """Qabf: Xydeas-Petrovic edge-information transfer, sum_k sum(Q^{S_k F} g_k) / sum_k sum(g_k), in [0, 1].

    Sobel (zero padding) strength g and angle arctan(Sy / Sx) (pi/2 where Sx == 0) per image; per source
    Q = Q_g * Q_a with sigmoids Tg 0.9994, kg -15, Dg 0.5 and Ta 0.9879, ka -22, Da 0.8. Two sources:
    Qabf = sum(Q_AF gA + Q_BF gB) / sum(gA + gB) (weights: raw strengths, L = 1); N sources weight each source's
    edge preservation by its own edge strength the same way, so Qabf stays a weighted mean in [0, 1] and a source
    without edges adds nothing. Float32 as in the reference, sources added in order.
    **Degenerate case:** no source with any edge (a zero weight, NaN in the reference; with zero padding only an
    all-black image has none) gives 0.0 with a ``DegenerateInputWarning``: there is nothing to transfer.
    """
    weight = _qabf_weight(t)
    if weight == 0:
        warnings.warn("Qabf: no source has an edge; returning 0.0", DegenerateInputWarning, stacklevel=2)
        return 0.0
    sources = t.sources
    kept = _edge_preservation(sources[0], t.fused)
    kept *= sources[0].sobel[0]
    for source in sources[1:]:
        kept += _edge_preservation(source, t.fused) * source.sobel[0]
    return float(np.sum(kept) / weight)


def _ssim_single(x: GreyImage, y: GreyImage) -> float:
    """skimage 0.19 ``structural_similarity(x, y)`` on float32 input (data_range 2): the mean of the SSIM map
    without its 3-pixel border. In-place float32 steps in the reference's order, so its rounding is kept."""
    sx, sy = x.ssim_stats, y.ssim_stats
    mean_xy = sx.mean * sy.mean
    structure = _window_mean(x.pixels * y.pixels)  # -> A2 = 2 * cov_xy + C2
    structure -= mean_xy
    structure *= SSIM_COV_NORM
    structure *= 2
    structure += SSIM_C2
    ssim_map = mean_xy  # -> A1 * A2 / (B1 * B2), with A1 = 2 * mean_x * mean_y + C1 (2 * (x y) == (2 x) y exactly)
    ssim_map *= 2
    ssim_map += SSIM_C1
    ssim_map *= structure
    luminance = sx.mean_sq + sy.mean_sq  # -> B1 * B2
    luminance += SSIM_C1
    contrast = sx.variance + sy.variance
    contrast += SSIM_C2
    luminance *= contrast
    ssim_map /= luminance
    pad = (SSIM_WINDOW - 1) // 2
    return float(ssim_map[pad:-pad, pad:-pad].mean(dtype=np.float64))


@METRIC_TERMS.register("SSIM")
def ssim_terms(t: FusionSet) -> dict[str, float]:
    """SSIM(F, S_k) for each source S_k (see ``ssim``)."""
    return {name: _ssim_single(t.fused, source) for name, source in t.named.items()}


@METRICS.register("SSIM")
def ssim(t: FusionSet) -> float:
    """SSIM: sum over the sources S_k of SSIM(F, S_k) (at most N); two sources: SSIM(F, A) + SSIM(F, B); unitless.

    scikit-image 0.19.2 defaults on float32 input: 7x7 uniform window, K1 0.01, K2 0.03, sample covariance
    (49/48), **data_range 2** (dtype_range of float32; C1 = 4e-4, C2 = 3.6e-3), mean of the map cropped by 3
    pixels. Float32 like the reference (exactly rounded window means, see ``_window_mean``), float64 mean.
    """
    return sum(t.terms("SSIM").values())


# --------------------------------------------------------------------------------------------------------------
# Evaluation API
# --------------------------------------------------------------------------------------------------------------

def metric_names() -> list[str]:
    """The metric names in output order: EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM."""
    return METRICS.names()


def conventions() -> dict[str, str]:
    """Metric name -> the first line of its docstring (definition and units), for reports and JSON files."""
    return {name: inspect.getdoc(METRICS.get(name)).splitlines()[0] for name in METRICS}


def evaluate_sources(fused: ImageLike, sources: Mapping[str, ImageLike]) -> dict[str, float]:
    """All nine metrics of a fused image against its named sources, as {name: value} in the order of
    ``metric_names()``.

    Args:
        fused: the fused image.
        sources: modality name -> source image, at least two (``{"vis": v, "nir": n, "lwir": t}``). Each image is
            an array ``to_reference_gray`` accepts (grey or BGR, uint8 or float 0..255, same size, at least
            ``MIN_SIDE`` a side) or a prepared :class:`GreyImage` (reuse one per source to score many fused images).
    """
    return score(FusionSet.of(fused, sources))


def score(t: FusionSet) -> dict[str, float]:
    """All nine metrics of a prepared :class:`FusionSet`."""
    return {name: float(METRICS.get(name)(t)) for name in METRICS}


def metric_terms(fused: ImageLike | FusionSet, sources: Mapping[str, ImageLike] | None = None
                 ) -> dict[str, dict[str, float]]:
    """Per-source terms for a report: {metric: {source name: term}} for MI, SCD, VIF, Qabf and SSIM.

    MI, SCD, VIF and SSIM are the sums of their terms; Qabf's terms are the sources' shares of it (``qabf_terms``).
    Pass a prepared :class:`FusionSet` alone, or a fused image and its sources as ``evaluate_sources`` takes them.
    """
    t = fused if isinstance(fused, FusionSet) else FusionSet.of(fused, sources or {})
    return {name: t.terms(name) for name in METRIC_TERMS}


def evaluate(fused: ImageLike, ir: ImageLike, vis: ImageLike) -> dict[str, float]:
    """All nine metrics of one two-source triple: ``evaluate_sources(fused, {"ir": ir, "vis": vis})``.

    Kept for two-source callers; new code calls ``evaluate_sources`` with sources by name.
    """
    return score(FusionTriple.of(fused, ir, vis))


class _SingleThreadedOpenCV:
    """Context manager: OpenCV single-threaded while any user is inside, its thread count restored when the last
    one leaves. OpenCV's count is process-wide, so overlapping users (two ``evaluate_many`` calls on different
    threads) share one saved value instead of each restoring what the other set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 0

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = cv2.getNumThreads()
                cv2.setNumThreads(1)
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                cv2.setNumThreads(self._saved)


_opencv_single_thread = _SingleThreadedOpenCV()


def _map_in_threads(fn: Callable, items: Sequence, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    # NumPy and OpenCV release the GIL in their heavy loops, so threads scale without pickling images; worker
    # threads each run OpenCV single-threaded so that they do not oversubscribe the cores.
    with _opencv_single_thread, ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def evaluate_many(triples: Iterable[tuple[ImageLike, ImageLike, ImageLike]], *, workers: int = 1
                  ) -> list[dict[str, float]]:
    """``evaluate`` on each (fused, ir, vis) triple, in order, on ``workers`` threads (OpenCV single-threaded
    inside each while they run)."""
    return _map_in_threads(lambda triple: evaluate(*triple), list(triples), workers)


@dataclass(frozen=True)
class FileTriple:
    """The three files of one image: fused output and its two sources, matched by stem (two-source form of
    :class:`FileSet`, kept for callers by position)."""

    stem: str
    fused: Path
    ir: Path
    vis: Path

    @property
    def sources(self) -> dict[str, Path]:
        return {"ir": self.ir, "vis": self.vis}


@dataclass(frozen=True)
class FileSet:
    """The files of one image: fused output and its sources by modality name, matched by stem."""

    stem: str
    fused: Path
    sources: Mapping[str, Path]


def match_source_folders(folders: Mapping[str, str | Path]) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Match the images of N source folders by stem, without decoding them.

    Returns ({stem: {name: file}} for the stems present in every folder, every problem: a missing folder, one
    folder given for two names, a stem used twice in one folder, a stem missing from some folders, no set at all).
    """
    folders = {name: Path(folder) for name, folder in folders.items()}
    problems = [f"{name} folder does not exist: {folder}" for name, folder in folders.items() if not folder.is_dir()]
    by_place: dict[Path, list[str]] = {}
    for name, folder in folders.items():
        if folder.is_dir():
            by_place.setdefault(folder.resolve(), []).append(name)
    problems += [f"{folders[names[0]]} is given for {' and '.join(names)}: its images would be fused with themselves"
                 for names in by_place.values() if len(names) > 1]
    if problems:
        return {}, problems
    files = {name: images_by_stem(folder, problems) for name, folder in folders.items()}
    stems = sorted(set().union(*(set(f) for f in files.values())))
    matched = {}
    for stem in stems:
        missing = [name for name in folders if stem not in files[name]]
        if missing:
            have = next(files[name][stem] for name in folders if stem in files[name])
            problems.append(f"{have} has no partner in " + ", ".join(f"{folders[n]} ({n})" for n in missing))
        else:
            matched[stem] = {name: files[name][stem] for name in folders}
    if not matched and not problems:
        problems.append("no image sets found in " + ", ".join(str(f) for f in folders.values()))
    return matched, problems


def find_source_sets(fused_dir: str | Path, source_dirs: Mapping[str, str | Path]) -> list[FileSet]:
    """``find_triples`` for N named source folders (at least two): every fused image needs a full source set and
    every set a fused image, and each set decodes with one size. One ``DatasetError`` names every offender."""
    fused_dir = Path(fused_dir)
    where = f"fused {fused_dir} against " + " + ".join(f"{n}={d}" for n, d in source_dirs.items())
    if len(source_dirs) < 2:
        raise DatasetError(where, [f"at least two source folders are needed, got {len(source_dirs)}"])
    sets, problems = match_source_folders(source_dirs)
    if not fused_dir.is_dir():
        raise DatasetError(where, problems + [f"folder does not exist: {fused_dir}"])
    fused = images_by_stem(fused_dir, problems)
    for stem in sorted(set(fused) - set(sets)):
        problems.append(f"{fused[stem]} has no source set in " + " + ".join(str(d) for d in source_dirs.values()))
    for stem in sorted(set(sets) - set(fused)):
        problems.append(f"no fused image for '{stem}' in {fused_dir}")
    matched = sorted(set(fused) & set(sets))
    problems.extend(check_image_groups([(stem, (fused[stem], *sets[stem].values())) for stem in matched])[0])
    if problems:
        raise DatasetError(where, problems)
    return [FileSet(stem, fused[stem], MappingProxyType(sets[stem])) for stem in matched]


def find_triples(fused_dir: str | Path, ir_dir: str | Path, vis_dir: str | Path) -> list[FileTriple]:
    """Match fused images to source pairs by file stem and validate them, before any metric is computed.

    Source pairs are matched by ``data.paired.match_pairs`` (partners, unique stems). Every fused image must have
    a source pair and every source pair a fused image; then each (fused, ir, vis) triple is decoded once and must
    share one size. Raises one ``DatasetError`` naming every offending file.
    """
    fused_dir = Path(fused_dir)
    # Source problems do not stop the checks: the stems present on both sides go on, so that this one error also
    # names the files that would fail next (undecodable, mismatched, unmatched fused images).
    matched_pairs, problems = match_pairs(ir_dir, vis_dir)
    pairs = {pair.stem: pair for pair in matched_pairs}
    if not fused_dir.is_dir():
        raise DatasetError(f"fused {fused_dir}", problems + [f"folder does not exist: {fused_dir}"])
    fused = images_by_stem(fused_dir, problems)
    for stem in sorted(set(fused) - set(pairs)):
        problems.append(f"{fused[stem]} has no source pair in {ir_dir} + {vis_dir}")
    for stem in sorted(set(pairs) - set(fused)):
        problems.append(f"no fused image for {pairs[stem].ir} in {fused_dir}")
    matched = sorted(set(fused) & set(pairs))
    problems.extend(check_image_groups(
        [(stem, (fused[stem], pairs[stem].ir, pairs[stem].vis)) for stem in matched])[0])
    if problems:
        raise DatasetError(f"fused {fused_dir} against {ir_dir} + {vis_dir}", problems)
    return [FileTriple(stem, fused[stem], pairs[stem].ir, pairs[stem].vis) for stem in matched]


def _read_set(files: FileTriple | FileSet) -> FusionSet:
    return FusionSet.of(read_gray_reference(files.fused),
                        {name: read_gray_reference(path) for name, path in files.sources.items()})


def evaluate_files(triple: FileTriple | FileSet) -> dict[str, float]:
    """Read one file set (or two-source triple) with the reference's reader (``data.io.read_gray_reference``)
    and score it."""
    return score(_read_set(triple))


def evaluate_files_with_terms(files: FileTriple | FileSet) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``evaluate_files`` and the per-source terms (``metric_terms``) of the same reading, sharing the work."""
    t = _read_set(files)
    return score(t), metric_terms(t)


def mean_metrics(per_image: dict[str, dict[str, float]]) -> dict[str, float]:
    """Arithmetic mean of each metric over the images (every image counts: the folders were validated)."""
    return {name: float(np.mean([values[name] for values in per_image.values()])) for name in metric_names()}


def evaluate_folders(fused_dir: str | Path, ir_dir: str | Path, vis_dir: str | Path, *, workers: int = 1
                     ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Score every fused image of a folder against its sources (matched by stem).

    Returns (per_image {stem: metrics}, mean {metric: value}). The folders are validated first
    (``find_triples``): a missing or mismatched file is a ``DatasetError``, never a skipped average.
    """
    return evaluate_triples(find_triples(fused_dir, ir_dir, vis_dir), workers=workers)


def evaluate_triples(triples: Sequence[FileTriple | FileSet], *, workers: int = 1
                     ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Score already-validated file sets (or two-source triples) on ``workers`` threads; returns (per_image, mean)
    as evaluate_folders."""
    values = _map_in_threads(evaluate_files, list(triples), workers)
    per_image = {triple.stem: v for triple, v in zip(triples, values)}
    return per_image, mean_metrics(per_image)


def evaluate_source_folders(fused_dir: str | Path, source_dirs: Mapping[str, str | Path], *, workers: int = 1,
                            terms: bool = False) -> tuple[dict[str, dict[str, float]], dict[str, float], dict]:
    """``evaluate_folders`` for N named source folders (``find_source_sets``).

    Returns (per_image, mean, per_image_terms): per_image_terms is {stem: {metric: {source: term}}} when
    ``terms`` is true, else empty.
    """
    sets = find_source_sets(fused_dir, source_dirs)
    if not terms:
        return *evaluate_triples(sets, workers=workers), {}
    results = _map_in_threads(evaluate_files_with_terms, sets, workers)
    per_image = {fs.stem: values for fs, (values, _) in zip(sets, results)}
    return per_image, mean_metrics(per_image), {fs.stem: t for fs, (_, t) in zip(sets, results)}


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------

def format_table(per_image: dict[str, dict[str, float]], mean: dict[str, float]) -> str:
    """A plain-text table: one row per image and a final 'mean' row, 4 decimals."""
    names = metric_names()
    width = max([len("mean"), *map(len, per_image)])
    lines = [f"{'image':<{width}}  " + "  ".join(f"{n:>8}" for n in names)]
    rows = [*per_image.items(), ("mean", mean)]
    for i, (stem, values) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(lines[0]))
        lines.append(f"{stem:<{width}}  " + "  ".join(f"{values[n]:>8.4f}" for n in names))
    return "\n".join(lines)


def report(per_image: dict[str, dict[str, float]], mean: dict[str, float], **folders: str) -> dict:
    """The JSON document the CLI writes: values, means, conventions and versions."""
    return {
        "mean": mean,
        "per_image": per_image,
        "n_images": len(per_image),
        "folders": folders,
        "reference": REFERENCE,
        "conventions": conventions(),
        "versions": package_versions(("fusebench", "numpy", "opencv-python")),
    }


def parse_sources(tokens: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """``["vis=DIR", "nir=DIR"]`` -> ({name: folder}, problems: tokens that are not NAME=DIR, names given twice)."""
    sources: dict[str, Path] = {}
    problems = []
    for token in tokens:
        name, sep, folder = token.partition("=")
        if not sep or not name or not folder:
            problems.append(f"--src {token!r} is not NAME=DIR")
        elif name == "fused":
            problems.append("--src fused=...: 'fused' names the fused folder (--fused), not a source")
        elif name in sources:
            problems.append(f"--src {name} is given twice")
        else:
            sources[name] = Path(folder)
    return sources, problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", action="append", default=[], metavar="NAME=DIR",
                        help="a source folder by modality name (repeat: --src vis=V --src nir=N --src lwir=T)")
    parser.add_argument("--ir", type=Path,
                        help="infrared folder, the same as --src ir=DIR (medical: CT beside MRI; MRI beside PET/SPECT)")
    parser.add_argument("--vis", type=Path,
                        help="visible folder, the same as --src vis=DIR (medical: MRI beside CT; PET/SPECT beside MRI)")
    parser.add_argument("--fused", required=True, type=Path, help="fused images, named by the source stems")
    parser.add_argument("--json", type=Path, help="also write per-image values and means here (atomically)")
    parser.add_argument("--terms", action="store_true",
                        help="also put each image's per-source terms (MI, SCD, VIF, Qabf, SSIM) into --json")
    parser.add_argument("--workers", type=int, default=1, help="threads for scoring (default 1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    sources, problems = parse_sources(args.src)
    for name in ("ir", "vis"):
        if getattr(args, name) is not None:
            if name in sources:
                problems.append(f"--{name} and --src {name}=... name the same source")
            sources[name] = getattr(args, name)
    if len(sources) < 2 and not problems:
        problems.append(f"at least two sources are needed (--src NAME=DIR, or --ir and --vis), got {len(sources)}")
    if problems:
        parser.error("; ".join(problems))
    if args.json is not None:  # checked before the scoring, not after it
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--json {args.json}: cannot create its folder ({err})")
        if args.json.is_dir():
            parser.error(f"--json {args.json} is a folder; name a file")
    try:
        if not args.src and not args.terms:  # --ir/--vis alone: the two-source path, with its own messages
            (per_image, mean), terms = evaluate_folders(args.fused, args.ir, args.vis, workers=args.workers), {}
        else:
            per_image, mean, terms = evaluate_source_folders(args.fused, sources, workers=args.workers,
                                                             terms=args.terms)
    except DatasetError as err:
        parser.exit(2, f"error: {err}\n")
    print(format_table(per_image, mean))
    if args.json:
        doc = report(per_image, mean, fused=str(args.fused), **{name: str(d) for name, d in sources.items()})
        doc["sources"] = list(sources)
        if args.terms:
            doc["per_image_terms"] = terms
        try:
            atomic_write_json(args.json, doc)
        except OSError as err:
            parser.exit(2, f"error: cannot write {args.json}: {err}\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
