"""Streaming video fusion: an infrared and a visible stream in, one fused stream out, any fuser.

Sources (``--ir`` / ``--vis``): a video file (anything ``cv2.VideoCapture`` reads) or a folder of frames (the
image files of ``data.paired.images_by_stem``, in sorted stem order). Each frame is turned into the fuser's inputs
exactly as ``fusion.fusers.base.fuse_pair`` turns image files (``cv2.IMREAD_COLOR`` semantics: the infrared frame is
its rounded BT.601 luma, a visible frame whose three channels are equal is grey), so a frame folder fuses to the
same images as ``python -m fusion.fusers.fuse`` and a video to the same images as its decoded frames saved as PNG.

Checks, all before any frame is fused, reported as one ``DatasetError`` that lists every problem: a source that is
missing, does not open or decode, or is an empty folder; frame folders with unreadable frames, or partly shared stems;
frame sizes that differ; frame rates or durations that differ beyond the tolerances below; an output path that is a
source, or of an unknown kind. A video is checked from its container (frame count, frame rate) and its first decoded
frame; a frame folder has every frame decoded (``data.probe``; both in ``fusion.video.sources``). A video whose stream
ends before its declared frame count is an error when it happens, and then nothing is written.

Pairing rule (timestamps). Frame ``i`` of a stream at ``fps`` frames per second is at ``t = i / fps`` (a frame
folder's frames are at ``VideoConfig.folder_fps``, by default the other source's rate when it is a video, else
30). The stream with the lower frame rate (the infrared one on a tie) is the *reference*: the output has its frame
rate and one frame per reference frame ``i``, fused with the other stream's frame nearest in time, index
``floor(i * fps_other / fps_ref + 0.5)`` (half a period rounds to the later frame); reference frames past the
other stream's last frame are not output. Since the reference is the slower stream no frame is ever used twice.

* Frame rates may differ by at most ``fps_tolerance`` (relative, default 1 %: 29.97 against 30 fps passes, 25
  against 30 does not): beyond that the streams were not captured together, or need resampling first.
* Durations (frames / fps) may differ by at most ``count_tolerance`` reference frame periods (default 2: one
  camera started or stopped a frame or two later).
* Two frame folders whose stems are the same set are paired by stem (the project's pairing, e.g. M3FD's ``Ir``
  and ``Vis``); folders sharing no stem are paired by sorted order under the rule above; folders sharing only some
  stems are refused (each unpaired frame is a problem).

Output (``--out``), written under a temporary name and renamed when complete (``data.io.atomic_path`` /
``atomic_dir``), so nothing half-written is ever left at the path: a video file by its extension
(``VIDEO_CODECS``: ``.mp4`` MPEG-4 Part 2 'mp4v' and ``.avi`` Motion-JPEG, both lossy; ``.mkv`` FFV1, lossless;
each checked to write and read back on this OpenCV build) or, for a path without an extension, a folder of PNG
frames named by the reference folder's stems or, for a video reference, by the frame index (``000000.png``).

Memory is bounded: ``batch_size`` frame pairs are fused at a time (fusers with ``fuse_luma_batch``, such as
DAE-Fuse, take the batch in one call and choose how many frames go in one forward: DAE-Fuse one on a CPU, where
that is fastest per frame, the whole batch on a GPU; other fusers go frame by frame), and with ``overlap_io`` the
next batch is read and the previous one written on two helper threads while a batch is fused (at most three
batches alive).

Timing: ``VideoReport.seconds`` holds each stage's busy seconds (read: decode and input preparation; fuse: the
fuser and the colour restoration; write: encoding and writing), the up-front check, and the wall time of the
streaming loop (``total``). With ``overlap_io`` the stages run concurrently, so read + fuse + write may exceed
``total``; frames/s is frames / ``total``.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.errors import DatasetError
from data.io import atomic_dir, atomic_path, gray_reference, restore_colour, visible_from_bgr, write_image

from fusion.fusers.base import Fuser, fuse_arrays, prepare_images

from .flow import consistent, resolve_flow, sample_along
from .sources import Stream, VideoStreamError, probe_stream
from .temporal import TemporalStats, flow_stats

# Output extension -> FourCC. Each was checked on this project's OpenCV (5.0, FFmpeg backend) to write and read
# back; 'avc1' (H.264) is absent from the pip builds, so it is not offered.
VIDEO_CODECS: dict[str, str] = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
# Frame rate given to frame folders when neither the config nor a video source says one.
DEFAULT_FOLDER_FPS = 30.0


@dataclass(frozen=True)
class VideoConfig:
    """How two streams are paired and fused (see the module docstring for the pairing rule).

    Args:
        batch_size: frame pairs per fuse call (a batched fuser decides how many go in one forward pass).
        fps_tolerance: largest accepted relative frame-rate difference, |a - b| / max(a, b).
        count_tolerance: largest accepted duration difference, in frame periods of the reference stream.
        folder_fps: frame rate of a frame folder (None: the other source's when it is a video, else 30).
        overlap_io: read the next batch and write the previous one on helper threads while fusing.
        temporal: also compute the output's temporal metrics (``fusion.video.temporal``) while streaming.
        flow: with ``temporal``, also the flow-based BiSWE and MS2R on this optical flow (``fusion.video.flow``: a
            registered estimator such as ``dis``, or ``package.module:factory``); None: flicker and TC only (flow costs
            six optical flows per frame step).
    """

    batch_size: int = 4
    fps_tolerance: float = 0.01
    count_tolerance: float = 2.0
    folder_fps: float | None = None
    overlap_io: bool = True
    temporal: bool = False
    flow: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.fps_tolerance >= 0 or not self.count_tolerance >= 0:
            problems.append(f"tolerances must be >= 0, got fps {self.fps_tolerance}, count {self.count_tolerance}")
        if self.folder_fps is not None and not self.folder_fps > 0:
            problems.append(f"folder_fps must be positive, got {self.folder_fps}")
        if problems:
            raise ValueError("invalid VideoConfig: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairingPlan:
    """Which infrared frame goes with which visible frame (module docstring: pairing rule)."""

    ir: Stream
    vis: Stream
    reference: str  # "ir" or "vis": the stream whose timeline the output follows
    fps: float  # the output's frame rate (the reference's)
    ratio: float  # fps_other / fps_reference (>= 1 within the tolerance's reach)
    frames: int  # output frames

    def other_index(self, i: int) -> int:
        return math.floor(i * self.ratio + 0.5)

    def describe(self) -> str:
        ref, other = (self.ir, self.vis) if self.reference == "ir" else (self.vis, self.ir)
        text = f"{self.frames} frames at {self.fps:g} fps on the {self.reference} timeline"
        if ref.frames != other.frames or self.ratio != 1.0:
            text += f" (ir {self.ir.frames} frames at {self.ir.fps:g} fps, vis {self.vis.frames} at {self.vis.fps:g})"
        return text


def _folder_stem_problems(ir: Stream, vis: Stream, problems: list[str]) -> None:
    """Two folders: the same stems pair by stem (= sorted order); no shared stem pairs by order; a partial
    overlap is refused, naming every unpaired frame."""
    ir_stems, vis_stems = {p.stem: p for p in ir.files}, {p.stem: p for p in vis.files}
    if not set(ir_stems) & set(vis_stems) or set(ir_stems) == set(vis_stems):
        return
    for stem in sorted(set(ir_stems) - set(vis_stems)):
        problems.append(f"{ir_stems[stem]} has no partner in {vis.path} (the folders share other stems)")
    for stem in sorted(set(vis_stems) - set(ir_stems)):
        problems.append(f"{vis_stems[stem]} has no partner in {ir.path} (the folders share other stems)")


def plan_pairing(ir: Stream, vis: Stream, config: VideoConfig, problems: list[str]) -> PairingPlan | None:
    """Pair two checked streams; appends every size, frame-rate and duration problem."""
    if ir.kind == vis.kind == "frames":
        _folder_stem_problems(ir, vis, problems)
    video_fps = next((s.fps for s in (ir, vis) if s.fps is not None), None)
    folder_fps = config.folder_fps or video_fps or DEFAULT_FOLDER_FPS
    ir_fps, vis_fps = ir.fps or folder_fps, vis.fps or folder_fps
    if ir.size != vis.size:
        problems.append(f"frame sizes differ: ir {ir.path} is {ir.size[0]}x{ir.size[1]}, "
                        f"vis {vis.path} is {vis.size[0]}x{vis.size[1]}")
    fps_gap = abs(ir_fps - vis_fps) / max(ir_fps, vis_fps)
    if fps_gap > config.fps_tolerance:
        problems.append(f"frame rates differ: ir {ir_fps:g} fps, vis {vis_fps:g} fps ({fps_gap:.1%} apart, more "
                        f"than the tolerance of {config.fps_tolerance:.1%})")
    reference = "ir" if ir_fps <= vis_fps else "vis"
    ref_fps, other_fps = (ir_fps, vis_fps) if reference == "ir" else (vis_fps, ir_fps)
    ref, other = (ir, vis) if reference == "ir" else (vis, ir)
    gap = abs(ir.frames / ir_fps - vis.frames / vis_fps) * ref_fps  # in reference frame periods
    if gap > config.count_tolerance + 1e-9:
        problems.append(f"durations differ: ir {ir.frames} frames at {ir_fps:g} fps, vis {vis.frames} frames at "
                        f"{vis_fps:g} fps ({gap:g} frames apart, more than the tolerance of "
                        f"{config.count_tolerance:g})")
    ir, vis = (Stream(s.path, s.kind, s.frames, s.size, f, s.files) for s, f in ((ir, ir_fps), (vis, vis_fps)))
    plan = PairingPlan(ir, vis, reference, ref_fps, other_fps / ref_fps, 0)
    frames = sum(1 for i in range(ref.frames) if plan.other_index(i) < other.frames)
    return PairingPlan(ir, vis, reference, ref_fps, plan.ratio, frames)


def paired_frames(plan: PairingPlan) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ir BGR, vis BGR) for each output frame, streaming both sources under the plan."""
    ref, other = (plan.ir, plan.vis) if plan.reference == "ir" else (plan.vis, plan.ir)
    ref_frames, other_frames = ref.read(), other.read()
    try:
        position, current, i = -1, None, -1
        for i, ref_frame in zip(range(plan.frames), ref_frames):
            target = plan.other_index(i)
            while position < target:  # the reference is the slower stream: only ever skip ahead
                try:
                    current = next(other_frames)
                except StopIteration:
                    raise VideoStreamError(f"{other.path} ended at frame {position + 1}, before frame {target} "
                                           f"({plan.describe()})") from None
                position += 1
            yield (ref_frame, current) if plan.reference == "ir" else (current, ref_frame)
        if i + 1 < plan.frames:
            raise VideoStreamError(f"{ref.path} ended after {i + 1} frames ({plan.describe()})")
    finally:
        ref_frames.close()
        other_frames.close()


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------

class _VideoSink:
    """Frames into a video file through cv2.VideoWriter (opened before any frame is fused)."""

    def __init__(self, path: Path, fourcc: str, fps: float, size: tuple[int, int]):
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size, True)
        if not self.writer.isOpened():
            raise OSError(f"this OpenCV cannot write '{fourcc}' video to {path}")

    def write(self, name: str, image: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image)

    def close(self) -> None:
        self.writer.release()


class _FolderSink:
    """Frames into a folder of PNGs (each written atomically too: the folder itself is renamed when complete)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def write(self, name: str, image: np.ndarray) -> None:
        write_image(self.folder / f"{name}.png", image)

    def close(self) -> None:
        pass


def _output_problems(out: Path, sources: Sequence[Path]) -> list[str]:
    problems = []
    resolved = out.resolve()
    for source in sources:
        source = Path(source).resolve()
        if resolved == source or source.is_relative_to(resolved):
            problems.append(f"output {out} would replace the source {source}")
    if out.suffix and out.suffix.lower() not in VIDEO_CODECS:
        problems.append(f"output {out}: unknown video extension '{out.suffix}'; use one of "
                        f"{', '.join(VIDEO_CODECS)}, or a path without extension for a folder of PNG frames")
    elif out.suffix and out.is_dir():
        problems.append(f"output {out} is an existing folder; a video file was asked for")
    elif not out.suffix and out.exists() and not out.is_dir():
        problems.append(f"output {out} is an existing file; a folder of frames was asked for")
    return problems


@contextlib.contextmanager
def _open_sink(out: Path, fps: float, size: tuple[int, int]) -> Iterator[_VideoSink | _FolderSink]:
    """A sink writing under a temporary name, renamed onto ``out`` when the block succeeds (removed if not)."""
    if out.suffix:
        with atomic_path(out) as tmp:
            sink = _VideoSink(tmp, VIDEO_CODECS[out.suffix.lower()], fps, size)
            try:
                yield sink
            finally:
                sink.close()  # the container's index is written on release: before the rename
    else:
        with atomic_dir(out) as tmp:
            yield _FolderSink(tmp)


# --------------------------------------------------------------------------------------------------------------
# Fusing
# --------------------------------------------------------------------------------------------------------------

# A frame as the fuser's input, exactly as data.io turns an image file into it (read_ir's values; read_visible's
# luma and colour), so a frame folder fuses to the same images as ``python -m fusion.fusers.fuse``.
ir_input = gray_reference
visible_input = visible_from_bgr


# --------------------------------------------------------------------------------------------------------------
# A streaming fuser that carries state: motion-compensated recursive filtering of any fuser's output
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StabiliserConfig:
    """How ``StabilisedFuser`` blends each fused frame with the previous output warped by the sources' motion.

    Args:
        weight: share of the warped previous output in the new one where the motion is trusted (0: none; 0.5: the
            noise of a still region falls to 1/3 of its variance in the steady state, (1 - w) / (1 + w); ours).
        flow: optical flow estimator (``fusion.video.flow.FLOW_ESTIMATORS``; ``dis_fast``: ~4 flows per frame at a few
            ms each at 640x480, where ``dis`` costs ~45 ms a flow).
        consistency_px: forward-backward threshold of each source's flow (VF-Bench's 1 px, ``fusion.video.flow``).
        agree_px: the two sources' flows must agree within this (px).
        source_residual: a pixel where a source is not reproduced by warping its previous frame within this many
            grey levels changed for real (a person, smoke, a light): it gets the new fused value alone.
        clamp: None, or the most (grey levels) by which an output pixel may change from the previous output beyond
            the larger change of the two sources at that pixel: a fused video that never changes more than its
            sources do cannot shimmer where they are still (``flicker``'s definition, ``fusion.video.temporal``).
        flow_scale: flows and masks computed on the sources resized by this factor (0.5: a quarter of the pixels,
            about a quarter of the stabiliser's cost), then brought back to full size.

    The defaults (0.5, clamp 0) are the setting measured in ``benchmarks/results/video_temporal.md``.
    """

    weight: float = 0.5
    flow: str = "dis_fast"
    consistency_px: float = 1.0
    agree_px: float = 1.0
    source_residual: float = 12.0
    clamp: float | None = 0.0
    flow_scale: float = 1.0

    def __post_init__(self) -> None:
        problems = [] if 0 <= self.weight < 1 else [f"weight must be in [0, 1), got {self.weight}"]
        if not 0 < self.flow_scale <= 1:
            problems.append(f"flow_scale must be in (0, 1], got {self.flow_scale}")
        if self.clamp is not None and not self.clamp >= 0:
            problems.append(f"clamp must be >= 0 or None, got {self.clamp}")
        if problems:
            raise ValueError("invalid StabiliserConfig: " + "; ".join(problems))


class StabilisedFuser:
    """Any fuser, made temporally consistent by a state carried between frames (a video fuser, not an image one).

    Frame t's output is ``F_t + w * m * (warp(O_{t-1}) - F_t)``: ``F_t`` the wrapped fuser's output, ``O_{t-1}``
    the previous output, warped along the mean of the infrared and visible flows ``t -> t-1`` (the sources'
    motion, never the fused video's own), ``m`` 1 where both sources' flows pass the forward-backward check, agree
    with each other and reproduce each source (``StabiliserConfig``), else 0. With ``clamp`` c the result is then
    kept within ``max(|dA|, |dB|) + c`` of ``O_{t-1}`` at each pixel (dA, dB: the sources' changes there), so the
    output follows the fuser wherever a source moves and holds still where neither does. The first frame, and
    every still image, is the wrapped fuser's output exactly: still-image quality is the wrapped fuser's. Frames
    must arrive in time order (``reset()`` before another stream).
    """

    def __init__(self, inner: Fuser, config: StabiliserConfig = StabiliserConfig()):
        self.inner, self.config = inner, config
        self.name = f"{getattr(inner, 'name', 'fuser')}+stabilised"
        self.keeps_visible_chroma = bool(getattr(inner, "keeps_visible_chroma", True))
        self._flow = resolve_flow(config.flow)
        self._previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def cache_key(self) -> str:
        inner_key = self.inner.cache_key() if callable(getattr(self.inner, "cache_key", None)) else self.name
        return f"{inner_key}+stabilised:{self.config}"

    def reset(self) -> None:
        self._previous = None

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        return self._stabilise(np.asarray(self.inner.fuse_luma(ir, vis_y), np.float32), ir, vis_y)

    def fuse_luma_batch(self, irs: Sequence[np.ndarray], vis_ys: Sequence[np.ndarray]) -> list[np.ndarray]:
        batched = getattr(self.inner, "fuse_luma_batch", None)
        fused = (batched(irs, vis_ys) if batched is not None
                 else [self.inner.fuse_luma(a, b) for a, b in zip(irs, vis_ys)])
        return [self._stabilise(np.asarray(f, np.float32), a, b) for f, a, b in zip(fused, irs, vis_ys)]

    def motion_mask(self, now: Sequence[np.ndarray], before: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(flow t -> t-1 (H, W, 2), trusted mask (H, W) bool) from the sources at t and t-1 (uint8 grey each)."""
        c = self.config
        full = now[0].shape
        if c.flow_scale != 1:
            shrink = lambda x: cv2.resize(x, None, fx=c.flow_scale, fy=c.flow_scale,  # noqa: E731
                                          interpolation=cv2.INTER_AREA)
            now, before = [shrink(x) for x in now], [shrink(x) for x in before]
        flows, mask = [], None
        for a, b in zip(now, before):
            back, fwd = self._flow(a, b), self._flow(b, a)
            warped, _ = sample_along(b.astype(np.float32), back)
            ok = consistent(back, fwd, c.consistency_px) & (np.abs(a.astype(np.float32) - warped) < c.source_residual)
            mask = ok if mask is None else mask & ok
            flows.append(back)
        mask &= np.linalg.norm(flows[0] - flows[1], axis=2) < c.agree_px * c.flow_scale
        flow = (flows[0] + flows[1]) / 2
        if c.flow_scale != 1:
            size = (full[1], full[0])
            flow = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR) / np.float32(c.flow_scale)
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        return flow, mask

    def _stabilise(self, fused: np.ndarray, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        sources = tuple(np.clip(np.round(x), 0, 255).astype(np.uint8) for x in (ir, vis_y))
        out = fused
        if self._previous is not None and self._previous[0].shape == fused.shape:
            flow, mask = self.motion_mask(sources, self._previous[1:])
            warped, _ = sample_along(self._previous[0], flow)
            out = fused + np.float32(self.config.weight) * mask * (warped - fused)
            if self.config.clamp is not None:
                change = np.maximum(*(np.abs(a.astype(np.float32) - b) for a, b in zip(sources, self._previous[1:])))
                limit = change + np.float32(self.config.clamp)
                out = self._previous[0] + np.clip(out - self._previous[0], -limit, limit)
        self._previous = (out, *sources)
        return out


@dataclass
class _Batch:
    irs: list[np.ndarray] = field(default_factory=list)
    vis_ys: list[np.ndarray] = field(default_factory=list)
    vis_bgrs: list[np.ndarray | None] = field(default_factory=list)


def fuse_batch(fuser: Fuser, batch: _Batch) -> list[np.ndarray]:
    """The uint8 images to save for a batch: one ``fuse_luma_batch`` call when the fuser has it, else
    ``fuse_arrays`` frame by frame (the path ``fuse_pair`` takes)."""
    batched = getattr(fuser, "fuse_luma_batch", None)
    if batched is None:
        return [fuse_arrays(fuser, ir, y, bgr) for ir, y, bgr in zip(batch.irs, batch.vis_ys, batch.vis_bgrs)]
    # The same inputs as the frame-by-frame path: whole-number lumas (fusion.fusers.base.prepare_images), one per frame.
    prepared = [prepare_images({"ir": ir, "vis": y}) for ir, y in zip(batch.irs, batch.vis_ys)]
    lumas = batched([p["ir"] for p in prepared], [p["vis"] for p in prepared])
    chroma = fuser.keeps_visible_chroma
    return [restore_colour(f, bgr if chroma else None) for f, bgr in zip(lumas, batch.vis_bgrs)]


@dataclass(frozen=True)
class VideoReport:
    """What one fused video took: frames, seconds per stage (module docstring: timing), pairing, metrics."""

    out: Path
    frames: int
    fps: float  # the output's frame rate
    seconds: dict[str, float]  # check, read, fuse, write, total
    pairing: str
    temporal: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds["total"] if self.seconds["total"] > 0 else float("inf")

    def summary(self) -> str:
        s = self.seconds
        per = lambda k: 1000 * s[k] / max(self.frames, 1)
        text = (f"{self.frames} frames fused into {self.out} in {s['total']:.2f} s: {self.frames_per_second:.2f} "
                f"frames/s (read {per('read'):.1f}, fuse {per('fuse'):.1f}, write {per('write'):.1f} ms per frame; "
                f"check {s['check']:.2f} s); {self.pairing}")
        if self.temporal:
            text += "; temporal: " + ", ".join(f"{k} {v:.4f}" for k, v in self.temporal.items())
        return text


def check_video_inputs(fuser: Fuser, ir: str | Path, vis: str | Path, out: str | Path,
                       config: VideoConfig) -> PairingPlan:
    """Every check of the module docstring, before any fusing: a PairingPlan, or one DatasetError listing all."""
    problems: list[str] = []
    if getattr(fuser, "image_for", None) is not None:
        problems.append(f"fuser {getattr(fuser, 'name', fuser)} gives stored images per pair (a pre-fused "
                        "folder), not fused frames")
    ir_stream, vis_stream = probe_stream(ir, problems), probe_stream(vis, problems)
    problems.extend(_output_problems(Path(out), [ir, vis]))
    plan = plan_pairing(ir_stream, vis_stream, config, problems) if ir_stream and vis_stream else None
    if plan is not None and plan.frames == 0 and not problems:
        problems.append("no frame pairs: the streams do not overlap in time")
    if problems:
        raise DatasetError(f"video {ir} + {vis} -> {out}", problems)
    return plan


class _StageClock:
    """Busy seconds per stage; each stage is timed on one thread only, so no lock is needed."""

    def __init__(self) -> None:
        self.seconds = {"read": 0.0, "fuse": 0.0, "write": 0.0}

    def timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[stage] += time.perf_counter() - t


def fuse_video(fuser: Fuser, ir: str | Path, vis: str | Path, out: str | Path,
               config: VideoConfig = VideoConfig()) -> VideoReport:
    """Fuse two streams into ``out`` (a video file or a folder of PNG frames, by its extension).

    Checks everything first (``check_video_inputs``: one ``DatasetError``), then streams ``config.batch_size``
    pairs at a time. Raises ``VideoStreamError`` when a source breaks midway, ``OSError`` when the output cannot
    be written; either way nothing is left at ``out``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    plan = check_video_inputs(fuser, ir, vis, out, config)
    check_seconds = time.perf_counter() - t0
    names = iter((plan.ir if plan.reference == "ir" else plan.vis).names())
    frames = paired_frames(plan)
    clock = _StageClock()
    temporal = _temporal_accumulator(config)

    def read_batch() -> tuple[list[str], _Batch]:
        batch, batch_names = _Batch(), []
        for ir_bgr, vis_bgr in frames:
            y, bgr = visible_input(vis_bgr)
            batch.irs.append(ir_input(ir_bgr))
            batch.vis_ys.append(y)
            batch.vis_bgrs.append(bgr)
            batch_names.append(next(names))
            if len(batch_names) == config.batch_size:
                break
        return batch_names, batch

    def write_batch(sink: Any, batch_names: list[str], images: list[np.ndarray], batch: _Batch) -> None:
        for name, image in zip(batch_names, images):
            sink.write(name, image)
        if temporal is not None:
            for image, ir_frame, vis_y in zip(images, batch.irs, batch.vis_ys):
                temporal.add(image, ir_frame, vis_y)

    t1 = time.perf_counter()
    try:
        with _open_sink(out, plan.fps, plan.ir.size) as sink, \
                ThreadPoolExecutor(1, "video-read") as reader, ThreadPoolExecutor(1, "video-write") as writer:
            submit_read = (lambda: reader.submit(clock.timed, "read", read_batch)) if config.overlap_io else None
            pending_read: Future | None = submit_read() if submit_read else None
            pending_write: Future | None = None
            while True:
                batch_names, batch = pending_read.result() if pending_read else clock.timed("read", read_batch)
                if not batch_names:
                    break
                if submit_read:
                    pending_read = submit_read()
                images = clock.timed("fuse", fuse_batch, fuser, batch)
                if pending_write is not None:
                    pending_write.result()
                if config.overlap_io:
                    pending_write = writer.submit(clock.timed, "write", write_batch, sink, batch_names, images, batch)
                else:
                    clock.timed("write", write_batch, sink, batch_names, images, batch)
            if pending_write is not None:
                pending_write.result()
    finally:
        frames.close()
    total = time.perf_counter() - t1
    seconds = {"check": check_seconds, **clock.seconds, "total": total}
    return VideoReport(out, plan.frames, plan.fps, seconds, plan.describe(),
                       temporal.values() if temporal is not None else {})


def _temporal_accumulator(config: VideoConfig) -> Any:
    if not config.temporal:
        return None
    return TemporalStats(flow=flow_stats(config.flow))
