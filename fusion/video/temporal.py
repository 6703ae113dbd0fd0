"""Temporal-consistency metrics of a fused video against its two source videos.

Image metrics (``fusion.metrics.image``) score each fused frame alone; a video can score well frame by frame and still
flicker. These metrics look at the frame-to-frame differences instead: ``dF_t = F_t - F_{t-1}`` for the fused
sequence and ``dA_t``, ``dB_t`` for the infrared and visible sources (t = 1..T-1), on grey images read as the image
metrics read them (``fusion.metrics.image.to_reference_gray``: rounded BT.601 luma, whole numbers 0..255), so every
difference is an integer and the sums below are exact (int64).

A metric is a pure function of the sequences' :class:`TemporalStats` (sufficient statistics gathered in one
streaming pass, one frame in memory per sequence), registered in ``TEMPORAL_METRICS`` like the image metrics in
``fusion.metrics.image.METRICS``. Each has a defined value for a static scene (sources and fused frames unchanging) and
for every other degenerate case, never NaN. A sequence needs at least 2 frames.

* ``flicker`` (ours; a flow-free, source-relative cousin of the warping error of Lai et al., "Learning Blind Video
  Temporal Consistency", ECCV 2018): the mean over pixels and frame steps of ``max(0, |dF| - max(|dA|, |dB|))``,
  in grey levels per frame step: how much more the fused image changes at a pixel than the more-changing source
  does there. 0 for a static scene and for any fusion whose changes never exceed its sources' (``ir``, ``max``
  exactly; ``mean`` up to the rounding of 8-bit frames); one frame k (0 < k < T-1) brightened by d over static
  sources gives 2 d / (T - 1) (steps k and k+1 each move d); lower is better.
* ``temporal_correlation`` (TC; ours, after the inter-frame-difference measures of video fusion evaluation, e.g.
  Petrovic, Cootes and Pavlovic, "Dynamic image fusion performance evaluation", FUSION 2007): the uncentred
  multiple correlation between the fused differences and the two sources' differences, pooled over pixels and
  steps: ``||P dF|| / ||dF||`` with P the least-squares projection onto ``span{dA, dB}``, i.e. the cosine between
  the fused changes and their best fit ``a dA + b dB``. 1 when the fused changes are a fixed linear mix of the
  sources' (``ir``, ``vis``; ``mean`` up to rounding), 0 when unrelated. No intercept, so a global brightness drift that the
  sources lack counts against it. Static scene (no fused change): 1 (consistent: nothing moves and nothing
  should); fused changes over static sources (one flickering frame): 0; a fused video that stays still while a
  source moves: 0. Higher is better.

The field's flow-based measures, VF-Bench's BiSWE and MS2R (``fusion.video.flow``: definitions, and where they differ
from the benchmark's), are opt-in: ``TemporalStats(flow=flow_stats("dis"))``, or ``flow="dis"`` (a registered
estimator, a ``package.module:factory`` path or a flow callable) to ``evaluate_temporal`` and
``evaluate_sequences``. They then stream through the same pass, one frame pair at a time, and ``values()`` gives
them after flicker and TC. Off by default: they cost six optical flows per frame step, where the metrics above
cost a few integer sums.

``evaluate_sequences(runs)`` scores file runs (consecutive frames of a scene) and averages over them: what the
pipeline reports per candidate beside the image metrics. ``python -m fusion.video.temporal`` scores a fused video (or
frame folder) against its two sources, flow metrics included, with the frames where BiSWE peaks.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.errors import DatasetError
from data.io import gray_reference, read_gray_reference

from data.registry import Registry
from fusion.metrics.image import to_reference_gray

from .flow import FLOW_METRICS, FlowSpec, FlowStats, resolve_flow
from .sources import VideoStreamError, probe_stream

TemporalMetric = Callable[["TemporalStats"], float]
TEMPORAL_METRICS: Registry[TemporalMetric] = Registry("temporal metric")


def _grey_int(image: np.ndarray) -> np.ndarray:
    return to_reference_gray(image).astype(np.int64)


@dataclass
class TemporalStats:
    """Sufficient statistics of (fused, ir, vis) frame differences, gathered one frame triple at a time.

    ``add(fused, ir, vis)`` takes the next frame of each sequence (grey or BGR, uint8 or float 0..255, one size);
    only the previous triple is kept. Sums are exact integers: ``excess`` (of flicker), ``ff`` = sum dF^2,
    ``fy`` = (sum dF dA, sum dF dB), ``yy`` = the 2x2 sums of dA^2, dA dB, dB^2; ``pixels`` counts pixel-steps.
    ``flow``, when given (``flow_stats``), receives the same grey frames and adds the flow metrics to ``values()``.
    """

    steps: int = 0
    pixels: int = 0
    excess: int = 0
    ff: int = 0
    fy: list[int] = field(default_factory=lambda: [0, 0])
    yy: list[list[int]] = field(default_factory=lambda: [[0, 0], [0, 0]])
    flow: FlowStats | None = None
    _previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def add(self, fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> None:
        frame = tuple(_grey_int(image) for image in (fused, ir, vis))
        if len({f.shape for f in frame}) != 1:
            raise ValueError(f"frame {self.steps + (self._previous is not None)}: fused, ir and vis sizes differ "
                             f"({', '.join(str(f.shape) for f in frame)})")
        if self._previous is not None:
            if self._previous[0].shape != frame[0].shape:
                raise ValueError(f"frame size changed from {self._previous[0].shape} to {frame[0].shape}")
            self._add_step(*(now - before for now, before in zip(frame, self._previous)))
        if self.flow is not None:
            self.flow.add(*frame)
        self._previous = frame

    def _add_step(self, d_f: np.ndarray, d_a: np.ndarray, d_b: np.ndarray) -> None:
        self.steps += 1
        self.pixels += d_f.size
        self.excess += int(np.maximum(np.abs(d_f) - np.maximum(np.abs(d_a), np.abs(d_b)), 0).sum())
        d_f, d_a, d_b = (d.ravel() for d in (d_f, d_a, d_b))
        self.ff += int(d_f @ d_f)
        self.fy[0] += int(d_f @ d_a)
        self.fy[1] += int(d_f @ d_b)
        cross = int(d_a @ d_b)
        self.yy[0][0] += int(d_a @ d_a)
        self.yy[0][1] += cross
        self.yy[1][0] += cross
        self.yy[1][1] += int(d_b @ d_b)

    @classmethod
    def of(cls, fused: Iterable[np.ndarray], ir: Iterable[np.ndarray], vis: Iterable[np.ndarray],
           flow: FlowSpec | None = None) -> TemporalStats:
        """Statistics of three frame sequences of one length (iterables, consumed once, frame by frame); with
        ``flow`` (see ``flow_stats``) the flow metrics' too."""
        stats, frames = cls(flow=flow_stats(flow)), 0
        sentinel = object()
        fused, ir, vis = iter(fused), iter(ir), iter(vis)
        while True:
            triple = tuple(next(seq, sentinel) for seq in (fused, ir, vis))
            ended = [f is sentinel for f in triple]
            if all(ended):
                return stats
            if any(ended):
                raise ValueError(f"the fused, ir and vis sequences differ in length (one ended after {frames} frames)")
            stats.add(*triple)
            frames += 1

    def values(self) -> dict[str, float]:
        """Every registered temporal metric of these statistics, {name: value}, then the flow metrics if gathered."""
        values = {name: float(TEMPORAL_METRICS.get(name)(self)) for name in TEMPORAL_METRICS}
        return values | (self.flow.values() if self.flow is not None else {})


def flow_stats(flow: FlowSpec | None) -> FlowStats | None:
    """A fresh ``FlowStats`` for ``TemporalStats(flow=...)``: None (no flow metrics), a registered estimator name
    (``fusion.video.flow.FLOW_ESTIMATORS``: ``dis``, ``dis_fast``, ``farneback``), a ``package.module:factory`` path or
    a callable ``(first, second) -> flow`` (grey uint8 (H, W) each -> float32 (H, W, 2),
    first(x) ~ second(x + flow))."""
    return None if flow is None else FlowStats(resolve_flow(flow))


def _need_steps(stats: TemporalStats) -> None:
    if stats.steps == 0:
        raise ValueError("temporal metrics need at least 2 frames")


@TEMPORAL_METRICS.register("flicker")
def flicker(stats: TemporalStats) -> float:
    """Flicker (grey levels per frame step, lower is better): mean of max(0, |dF| - max(|dA|, |dB|)); ours.

    Static scene: 0. One frame (not the first or last) of T shifted by d over static sources: 2 d / (T - 1).
    """
    _need_steps(stats)
    return stats.excess / stats.pixels


@TEMPORAL_METRICS.register("temporal_correlation")
def temporal_correlation(stats: TemporalStats) -> float:
    """Temporal correlation TC (0..1, higher is better): ||P dF|| / ||dF||, P the projection onto span{dA, dB}; ours.

    Static scene (no fused change): 1. Fused changes where the sources have none, or none where they have some: 0.
    """
    _need_steps(stats)
    if stats.ff == 0:
        return 1.0 if stats.yy[0][0] == 0 and stats.yy[1][1] == 0 else 0.0
    c = np.array(stats.fy, dtype=np.float64)
    # The pseudo-inverse handles collinear or static sources (identical videos, one frozen camera) exactly.
    explained = float(c @ np.linalg.pinv(np.array(stats.yy, dtype=np.float64)) @ c)
    return float(np.sqrt(np.clip(explained / stats.ff, 0.0, 1.0)))


def temporal_metric_names(flow: bool = False) -> list[str]:
    return TEMPORAL_METRICS.names() + (FLOW_METRICS.names() if flow else [])


def conventions() -> dict[str, str]:
    """Metric name -> the first line of its docstring (definition, units, source), for reports."""
    return {name: inspect.getdoc(TEMPORAL_METRICS.get(name)).splitlines()[0] for name in TEMPORAL_METRICS}


def evaluate_temporal(fused: Iterable[np.ndarray], ir: Iterable[np.ndarray], vis: Iterable[np.ndarray],
                      flow: FlowSpec | None = None) -> dict[str, float]:
    """Every temporal metric of three frame sequences (arrays as ``TemporalStats.add`` takes, >= 2 frames); with
    ``flow`` (an estimator, see ``flow_stats``) also BiSWE and MS2R."""
    return TemporalStats.of(fused, ir, vis, flow).values()


Run = Sequence[tuple[str | Path, str | Path, str | Path]]


def evaluate_sequences(runs: Sequence[Run], flow: FlowSpec | None = None) -> dict[str, float]:
    """Mean temporal metrics over runs of consecutive frames: what the pipeline reports per candidate.

    Contract:
        runs: one entry per run of consecutive frames of one scene (in time order), each a sequence of
            ``(fused_path, ir_path, vis_path)`` file triples, e.g. the evaluation split's images grouped by M3FD
            scene with ``consecutive_runs`` over their ids. Runs of fewer than 2 frames are skipped.
        flow: None, or a flow estimator (``flow_stats``): BiSWE and MS2R are then scored too, after the others.
        Returns ``{metric: arithmetic mean over the scored runs}`` in ``temporal_metric_names()`` order (each run
            weighs the same, whatever its length), or ``{}`` when no run has 2 frames.
        Files are read with ``data.io.read_gray_reference`` (as the image metrics read them), one triple at a
        time. Raises one ``DatasetError`` naming every missing file (checked before any is read); a file that does
        not decode is a ``ValueError`` naming it, and frames of different sizes within a run a ``ValueError``.
    """
    scored = [run for run in runs if len(run) >= 2]
    missing = [f"missing file {path}" for run in scored for triple in run for path in triple
               if not Path(path).is_file()]
    if missing:
        raise DatasetError("temporal runs", list(dict.fromkeys(missing)))
    if not scored:
        return {}
    per_run = []
    estimator = None if flow is None else resolve_flow(flow)  # built once, shared by the runs
    for run in scored:
        stats = TemporalStats(flow=flow_stats(estimator))
        for fused, ir, vis in run:
            stats.add(*(read_gray_reference(path) for path in (fused, ir, vis)))
        per_run.append(stats.values())
    return {name: float(np.mean([values[name] for values in per_run])) for name in per_run[0]}


def consecutive_runs(ids: Iterable[str]) -> list[list[str]]:
    """Group image ids into runs of consecutive integers, in order: ``["00001", "00002", "00007"]`` ->
    ``[["00001", "00002"], ["00007"]]``. Ids that are not integers each form a run of one (scored by no metric)."""
    runs: list[list[str]] = []
    previous: int | None = None
    for stem in sorted(ids, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)):
        number = int(stem) if stem.isdigit() else None
        if number is not None and previous is not None and number == previous + 1:
            runs[-1].append(stem)
        else:
            runs.append([stem])
        previous = number
    return runs


# --------------------------------------------------------------------------------------------------------------
# CLI: ``python -m fusion.video.temporal --fused F --ir IR --vis VIS`` scores an already fused video, flow metrics
# included
# --------------------------------------------------------------------------------------------------------------

def grey_frames(path: str | Path, limit: int | None = None) -> Iterable[np.ndarray]:
    """The first ``limit`` frames (all when None) of a video file or a folder of images, checked and read as the
    video command reads a source (``fusion.video.sources.probe_stream``: every problem in one ``VideoStreamError``), as
    grey whole numbers 0..255 like the image metrics read files (``data.io.gray_reference``)."""
    problems: list[str] = []
    stream = probe_stream(path, problems)
    if stream is None:
        raise VideoStreamError("; ".join(problems))
    for index, bgr in enumerate(stream.read()):
        if limit is not None and index >= limit:
            return
        yield gray_reference(bgr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.video.temporal",
                                     description="Temporal metrics of a fused video against its two sources.")
    parser.add_argument("--fused", required=True, help="fused video file or frame folder")
    parser.add_argument("--ir", required=True, help="infrared video file or frame folder")
    parser.add_argument("--vis", required=True, help="visible video file or frame folder")
    parser.add_argument("--frames", type=int, default=None, help="score only the first N frames")
    parser.add_argument("--flow", default="dis",
                        help="flow estimator for BiSWE/MS2R: a registered name (dis, dis_fast, farneback), "
                             "package.module:factory, or 'none' for flicker and TC only (default dis)")
    args = parser.parse_args(argv)
    flow = None if args.flow == "none" else args.flow
    try:
        stats = TemporalStats.of(*(grey_frames(p, args.frames) for p in (args.fused, args.ir, args.vis)), flow)
        values = stats.values()
    except (ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{stats.steps + 1} frames; " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    if stats.flow is not None and stats.flow.per_frame()["biswe"]:
        per_frame = stats.flow.per_frame()["biswe"]
        worst = np.argsort(per_frame)[::-1][:3]
        print("BiSWE peaks (frame: value): " + ", ".join(f"{i + 1}: {per_frame[i]:.3f}" for i in worst)
              + f"; median {np.median(per_frame):.3f}; sources' masks kept {np.mean(stats.flow.kept):.1%} of pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
