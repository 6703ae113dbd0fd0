"""Flow-based temporal metrics of a fused video, as the video-fusion benchmark VF-Bench measures them.

VF-Bench / UniVF (Zhao et al., "A Unified Solution to Video Fusion: From Multi-Frame Learning to Benchmarking",
NeurIPS 2025; code: github.com/Zhaozixiang1228/VF-Bench, ``src/util/metric.py``, classes ``BiSWE_Evaluator`` and
``MS2R_Evaluator``) scores temporal consistency with optical flow on windows of three frames (t-1, t, t+1):

* **BiSWE**, bi-directional self-warping error (grey levels, lower is better). The fused video's *own* flow warps
  its neighbours onto frame t: ``e(t <- s) = mean_{x in M} |F_t(x) - F_s(x + flow_F(t->s)(x))|`` for s = t-1 and
  s = t+1, and ``BiSWE_t = e(t <- t-1) + e(t <- t+1)`` (a sum, not a mean, of the two directions). The mask M keeps
  the pixels where *both sources'* flows pass the forward-backward check ``|flow(t->s)(x) + flow(s->t)(x +
  flow(t->s)(x))| < 1 px``, i.e. it drops what the sources show occluded or unreliable, whatever the fused video
  does there. A step whose mask is empty scores 0 (the reference divides by ``sum M + 1e-10``).
* **MS2R**, motion smoothness with dual reference videos (pixels per frame squared, lower is better; despite the
  name, not a ratio). The second difference of flow, ``d_X = flow_X(t->t+1) - flow_X(t-1->t)`` at each pixel,
  for the fused video and each source; ``MS2R_t = (mean |d_F - d_A| + mean |d_F - d_B|) / 2``, means over pixels
  and both flow components. (The reference also defines a histogram score, ``compute_sample_smoothness``, that
  its MS2R never calls; it is left out here too.) Being a second difference, MS2R is blind to a constant
  difference of velocity: a fused video frozen while both sources pan steadily scores 0, like a perfect one; it
  catches jitter, stutter and motion that speeds up or stops where the sources' does not. ``temporal_correlation``
  (``fusion.video.temporal``) is the measure that catches a frozen fused video.

What differs here, and why:

* **Flow**: OpenCV's DIS (``cv2.DISOpticalFlow``, preset MEDIUM) by default, offline and CPU-only, where VF-Bench
  runs SEA-RAFT (``spring-S``) on a GPU. DIS is a coarse-to-fine patch search with a variational refinement; its
  patches are mean-normalised, so a global brightness jump (a flickering frame) does not become motion and shows
  up as warping error, as it should. Against SEA-RAFT it is less accurate on large displacements (tens of pixels
  per frame), textureless regions (sky, smoke, thermal blobs) and motion boundaries, so its forward-backward check
  fails more often there: masks are smaller, and BiSWE/MS2R values are not comparable across flow estimators
  (compare candidates under one estimator). ``farneback`` (dense polynomial expansion) is registered too; any
  other estimator, e.g. a local SEA-RAFT, plugs in through ``FLOW_ESTIMATORS`` or as a callable.
* **Grey, not RGB**: frames are read as the other metrics read them (``fusion.metrics.image.to_reference_gray``: rounded
  BT.601 luma), and the flow runs on that grey image; VF-Bench averages the error over RGB channels and feeds RGB
  (infrared replicated) to the flow network. Colour flicker that keeps the luma is invisible here.
* **Out of frame**: pixels whose flow lands outside the image are masked out as well (there is nothing to warp
  from); the reference samples the border there and counts it.
* **Streaming over pairs**: each consecutive pair is seen once (six flows: fused, infrared and visible, both
  directions) and only the previous frames and forward flows are kept, so a video of any length scores in one
  pass. The per-frame values are the reference's windows exactly: for T >= 3 frames ``biswe`` is the mean of
  ``BiSWE_t`` over t = 1..T-2 and ``ms2r`` the mean of ``MS2R_t`` (VF-Bench averages the same per-window values
  over its test clips). With T = 2 there is no window: ``biswe`` is then ``e(1 <- 0) + e(0 <- 1)`` and ``ms2r``
  is 0 (no second difference exists).

``FlowStats`` holds the per-step and per-frame values (``per_frame()``) so that a flickering frame can be found in
time, not only in the mean; ``fusion.video.temporal.TemporalStats(flow=...)`` feeds it beside flicker and TC.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from data.registry import Registry
from fusion.fusers.catalog import import_factory

# (first, second) grey uint8 (H, W) -> float32 (H, W, 2) flow, (dx, dy) per pixel, with first(x) ~ second(x + flow).
FlowEstimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
FLOW_ESTIMATORS: Registry[Callable[[], FlowEstimator]] = Registry("flow estimator")

# VF-Bench's forward-backward threshold (BiSWE_Evaluator occ_threshold), in pixels.
OCCLUSION_THRESHOLD_PX = 1.0


@FLOW_ESTIMATORS.register("dis")
def dis_medium() -> FlowEstimator:
    """OpenCV DIS, preset MEDIUM: ~45 ms per 640x480 flow on one CPU core; the default."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOpticalFlow_PRESET_MEDIUM)
    return lambda first, second: dis.calc(first, second, None)


@FLOW_ESTIMATORS.register("dis_fast")
def dis_fast() -> FlowEstimator:
    """OpenCV DIS, preset FAST: a few times quicker than MEDIUM, coarser near motion boundaries."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOpticalFlow_PRESET_FAST)
    return lambda first, second: dis.calc(first, second, None)


@FLOW_ESTIMATORS.register("farneback")
def farneback() -> FlowEstimator:
    """OpenCV Farneback (3 levels, 15 px window), OpenCV's documented example settings."""
    return lambda first, second: cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 3, 15, 3, 5, 1.2, 0)


FlowSpec = str | FlowEstimator


def resolve_flow(spec: FlowSpec) -> FlowEstimator:
    """A flow estimator from a registered name (``"dis"``), a ``package.module:factory`` path (the factory is
    called with no arguments and returns the estimator) or an estimator callable itself."""
    if callable(spec):
        return spec
    if ":" in spec:
        return import_factory(spec)()  # the one parser of factory paths in the project
    return FLOW_ESTIMATORS.get(spec)()


def sample_along(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image(x + flow(x))`` by bilinear interpolation, and whether ``x + flow(x)`` lies inside the image."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def consistent(flow_ab: np.ndarray, flow_ba: np.ndarray, threshold: float = OCCLUSION_THRESHOLD_PX) -> np.ndarray:
    """Forward-backward check (bool (H, W)): ``|flow_ab(x) + flow_ba(x + flow_ab(x))| < threshold`` and the
    target inside the frame; False marks occlusions and unreliable flow."""
    back, inside = sample_along(flow_ba, flow_ab)
    return inside & (np.linalg.norm(flow_ab + back, axis=2) < threshold)


def warping_error(target: np.ndarray, source: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> float:
    """Mean over ``mask`` (and inside the frame) of ``|target(x) - source(x + flow(x))|``; 0 on an empty mask."""
    warped, inside = sample_along(source.astype(np.float32), flow)
    keep = mask & inside
    count = int(keep.sum())
    return float(np.abs(target.astype(np.float32) - warped)[keep].sum() / count) if count else 0.0


@dataclass
class FlowStats:
    """Per-step warping errors and per-frame motion differences of (fused, ir, vis) grey frames, one pair at a time.

    ``add(fused, ir, vis)`` takes the next frame of each sequence as grey whole numbers 0..255 (what
    ``fusion.metrics.image.to_reference_gray`` returns), one size. Step i (frames i-1, i; i = 1..T-1) stores
    ``back[i-1] = e(i <- i-1)``, ``fwd[i-1] = e(i-1 <- i)`` and ``kept[i-1]``, the mean fraction of pixels the
    sources' masks kept; centre frame t = 1..T-2 stores ``motion[t-1] = MS2R_t``. Kept between calls: the previous
    frames and the previous step's forward flows.
    """

    estimator: FlowEstimator = field(default_factory=dis_medium)
    threshold: float = OCCLUSION_THRESHOLD_PX
    back: list[float] = field(default_factory=list)
    fwd: list[float] = field(default_factory=list)
    kept: list[float] = field(default_factory=list)
    motion: list[float] = field(default_factory=list)
    _previous: tuple[np.ndarray, ...] | None = field(default=None, repr=False)
    _previous_forward: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    @property
    def steps(self) -> int:
        return len(self.back)

    def add(self, fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> None:
        # Flow estimators take 8-bit grey; the frames are whole numbers 0..255 already, so this is exact.
        frame = tuple(np.asarray(image).astype(np.uint8) for image in (fused, ir, vis))
        if self._previous is not None:
            self._add_step(self._previous, frame)
        self._previous = frame

    def _add_step(self, before: tuple[np.ndarray, ...], now: tuple[np.ndarray, ...]) -> None:
        forward = tuple(np.asarray(self.estimator(b, n), dtype=np.float32) for b, n in zip(before, now))
        backward = tuple(np.asarray(self.estimator(n, b), dtype=np.float32) for b, n in zip(before, now))
        (f_fwd, a_fwd, b_fwd), (f_bwd, a_bwd, b_bwd) = forward, backward
        # Occlusion masks from the sources only: the fused video must not excuse its own inconsistency.
        mask_now = consistent(a_bwd, a_fwd, self.threshold) & consistent(b_bwd, b_fwd, self.threshold)
        mask_before = consistent(a_fwd, a_bwd, self.threshold) & consistent(b_fwd, b_bwd, self.threshold)
        self.back.append(warping_error(now[0], before[0], f_bwd, mask_now))
        self.fwd.append(warping_error(before[0], now[0], f_fwd, mask_before))
        self.kept.append(float(mask_now.mean() + mask_before.mean()) / 2)
        if self._previous_forward is not None:
            d_fused, d_ir, d_vis = (n - b for n, b in zip(forward, self._previous_forward))
            self.motion.append(float(np.abs(d_fused - d_ir).mean() + np.abs(d_fused - d_vis).mean()) / 2)
        self._previous_forward = forward

    def per_frame(self) -> dict[str, list[float]]:
        """``{"biswe": [BiSWE_t], "ms2r": [MS2R_t]}`` for the centre frames t = 1..T-2 (index t-1), and the
        per-step ``"step_error"`` ``e(i <- i-1) + e(i-1 <- i)`` for steps i = 1..T-1 (index i-1)."""
        return {"biswe": [b + f for b, f in zip(self.back[:-1], self.fwd[1:])],
                "ms2r": list(self.motion),
                "step_error": [b + f for b, f in zip(self.back, self.fwd)]}

    def values(self) -> dict[str, float]:
        """Every registered flow metric of these statistics, {name: value}."""
        return {name: float(FLOW_METRICS.get(name)(self)) for name in FLOW_METRICS}


# Metrics of FlowStats: a registry of their own, beside fusion.video.temporal.TEMPORAL_METRICS (metrics of exact integer
# sums, free to compute), because these need an optical flow estimator and cost six flows per frame step.
FlowMetric = Callable[[FlowStats], float]
FLOW_METRICS: Registry[FlowMetric] = Registry("flow temporal metric")


def _need_steps(stats: FlowStats) -> None:
    if stats.steps == 0:
        raise ValueError("temporal metrics need at least 2 frames")


@FLOW_METRICS.register("biswe")
def biswe(stats: FlowStats) -> float:
    """BiSWE (grey levels, lower is better): mean over frames of e(t <- t-1) + e(t <- t+1); VF-Bench, DIS flow.

    Fused frames warped by the fused video's own flow, masked by both sources' forward-backward consistency.
    Static scene, or a rigid shift followed exactly: ~0. One frame brightened by d over a still scene: 2 d at that
    frame, d at its neighbours (``FlowStats.per_frame``).
    """
    _need_steps(stats)
    per_frame = stats.per_frame()["biswe"]
    return float(np.mean(per_frame)) if per_frame else stats.back[0] + stats.fwd[0]


@FLOW_METRICS.register("ms2r")
def ms2r(stats: FlowStats) -> float:
    """MS2R (px per frame^2, lower is better): mean |d flow_F - d flow_source| over both sources; VF-Bench, DIS flow.

    d is the second difference in time of the flow at each pixel; 0 when the fused video's motion changes as the
    sources' does (including a fused video that moves at a constant different speed); 0 for 2 frames.
    """
    _need_steps(stats)
    return float(np.mean(stats.motion)) if stats.motion else 0.0
