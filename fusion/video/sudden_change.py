"""How each fuser behaves when visibility changes suddenly: per-frame quality and temporal error around the change.

The DAE-Fuse paper leaves open what fusion does when the weather or the light changes mid-drive. This module
fuses frame sequences in which the visible view changes (real smoke drifting in, or one of ``data.corruptions``'
corruptions switched on, ramped up or flashed mid-sequence by :class:`TimeVaryingCorruption`) with every candidate
fuser and records, per frame:

* fusion quality: the cheap metrics of ``fusion.metrics.image`` (default EN, SD, AG, Qabf; VIF is left out: it costs
  ~10x more per frame) against the sources the fuser was given, and for a synthetic corruption also against the
  clean sources (``<metric>@clean``: how much of the real scene's structure still reaches the fused frame);
* temporal error of the step into the frame: ``flicker`` (``fusion.video.temporal``: how much more the fused frame
  changed than the more-changing source did, grey levels) and, with a flow estimator, the step's bidirectional
  warping error (``fusion.video.flow``: ``e(t <- t-1) + e(t-1 <- t)`` of the fused video, masked by the sources'
  forward-backward consistency).

``sudden_change_report(sequences, fusers, out_dir)`` is the one entry point (the pipeline's ``--sudden-change``
option and ``python -m fusion.video ... --sudden-change DIR`` call it): it writes ``sudden_change.png``
(one row per sequence: a quality metric, flicker and warping error over time, a line per fuser, the change marked),
``sudden_change.md`` and ``sudden_change.json`` (per-frame records and per-sequence summaries) atomically, and
returns them as dataclasses.

The change frame of a sequence is the corruption's start, or ``change_frame`` when given, or else detected from the
visible stream: the frame after which its detail (variance of the Laplacian, smoothed over ``DETECT_SMOOTH``
frames) falls fastest, i.e. where smoke or fog swallows the view.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.corruptions import CORRUPTIONS, SEVERITIES, corrupt_pair
from data.errors import DatasetError
from data.io import atomic_path, atomic_write_json, atomic_write_text, gray_reference, visible_from_bgr
from data.registry import Registry

from fusion.fusers.base import Fuser, fuse_arrays
from fusion.fusers.catalog import create_fuser
from fusion.metrics.image import METRIC_TERMS, METRICS, FusionSet

from .flow import FlowStats, resolve_flow
from .sources import probe_stream
from .streaming import StabilisedFuser
from .temporal import TemporalStats

DEFAULT_METRICS: tuple[str, ...] = ("EN", "SD", "AG", "Qabf")
# Frames of the visible detail curve averaged before its steepest fall is looked for (real clips: compression
# noise makes single-frame differences jumpy; 15 frames is half a second at 30 fps).
DETECT_SMOOTH = 15

Strength = Any  # (TimeVaryingCorruption, frame index) -> float in [0, 1]
PROFILES: Registry[Strength] = Registry("corruption time profile")


@PROFILES.register("switch")
def _switch(c: TimeVaryingCorruption, t: int) -> float:
    """Off before ``start``, fully on from ``start`` (a light switched on, a tunnel exit)."""
    return float(t >= c.start)


@PROFILES.register("ramp")
def _ramp(c: TimeVaryingCorruption, t: int) -> float:
    """Off before ``start``, then linearly to full over ``duration`` frames (fog rolling in)."""
    return float(np.clip((t - c.start + 1) / c.duration, 0.0, 1.0))


@PROFILES.register("flash")
def _flash(c: TimeVaryingCorruption, t: int) -> float:
    """From ``start``, on for ``duration`` frames, off for ``duration``, and so on (oncoming headlights flashing)."""
    return float(t >= c.start and ((t - c.start) // c.duration) % 2 == 0)


@dataclass(frozen=True)
class TimeVaryingCorruption:
    """A ``data.corruptions`` corruption whose strength follows a time profile (``PROFILES``).

    Frame t is ``(1 - s) * clean + s * corrupted`` with ``s = profile(t)`` in [0, 1], per modality, rounded to
    8 bits. The corrupted image is drawn with one fixed image id (``key``) for every frame, so the fog's pattern or
    the flare's position stays put while its strength changes, as real fog or a lamp would (a fresh random draw per
    frame would flicker by itself).
    """

    name: str
    profile: str = "switch"
    start: int = 0
    duration: int = 1
    severity: int = 3
    seed: int = 0
    key: str = "sequence"

    def problems(self) -> list[str]:
        out = []
        if self.name not in CORRUPTIONS:
            out.append(f"unknown corruption {self.name!r}; known: {', '.join(CORRUPTIONS.names())}")
        if self.profile not in PROFILES:
            out.append(f"unknown time profile {self.profile!r}; known: {', '.join(PROFILES.names())}")
        if self.severity not in SEVERITIES:
            out.append(f"severity must be among {list(SEVERITIES)}, got {self.severity}")
        if self.start < 0 or self.duration < 1:
            out.append(f"start must be >= 0 and duration >= 1, got {self.start} and {self.duration}")
        return out

    def strength(self, t: int) -> float:
        return PROFILES.get(self.profile)(self, t)

    def apply(self, t: int, ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``t``'s (infrared uint8 grey, visible uint8 BGR) at this corruption's strength."""
        s = self.strength(t)
        if s == 0.0:
            return ir, vis
        bad_ir, bad_vis = corrupt_pair(self.name, self.severity, ir, vis, self.key, self.seed)
        blend = lambda clean, bad: np.clip(np.round((1 - s) * clean.astype(np.float32)  # noqa: E731
                                                    + s * bad.astype(np.float32)), 0, 255).astype(np.uint8)
        return blend(ir, bad_ir), blend(vis, bad_vis)


@dataclass(frozen=True)
class ChangeSequence:
    """A frame sequence whose visibility changes: two sources (video files or frame folders, read as the video CLI
    reads them), frames ``first`` .. ``first + frames - 1`` (all when ``frames`` is None), optionally only the
    folder frames named in ``stems``, optionally a synthetic ``corruption`` (frame indices counted from ``first``),
    and the change frame when it is known (else the corruption's start, else detected)."""

    name: str
    ir: str | Path
    vis: str | Path
    first: int = 0
    frames: int | None = None
    stems: tuple[str, ...] = ()
    corruption: TimeVaryingCorruption | None = None
    change_frame: int | None = None


@dataclass(frozen=True)
class FrameRecord:
    """One fused frame: its quality metrics, and the temporal errors of the step from the previous frame (None on
    the first frame; ``warp_error`` None without a flow estimator)."""

    sequence: str
    fuser: str
    frame: int
    offset: int  # frame - change frame
    strength: float  # the synthetic corruption's strength (0 for real clips)
    metrics: dict[str, float]
    flicker: float | None
    warp_error: float | None


@dataclass(frozen=True)
class ChangeSummary:
    """One fuser on one sequence: means over ``window`` frames before the change and from the change on, and the
    temporal error around it (steps whose frames lie within ``window`` of the change)."""

    sequence: str
    fuser: str
    change_frame: int
    change_source: str  # "corruption", "given" or "detected"
    window: int
    before: dict[str, float]
    after: dict[str, float]
    flicker_before: float | None
    flicker_around: float | None
    warp_before: float | None
    warp_around: float | None
    warp_peak_frame: int | None


@dataclass
class SuddenChangeResult:
    frames: list[FrameRecord]
    summaries: list[ChangeSummary]
    plot: Path
    table: Path
    json: Path
    config: dict[str, Any] = field(default_factory=dict)


def check_sequences(sequences: Sequence[ChangeSequence], fusers: Mapping[str, Fuser]) -> None:
    """Every problem with the inputs, before any frame is fused: one ``DatasetError`` naming each offender."""
    problems: list[str] = []
    if not sequences:
        problems.append("no sequences given")
    if not fusers:
        problems.append("no fusers given")
    names = [s.name for s in sequences]
    problems += [f"sequence name {n!r} used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    for seq in sequences:
        local: list[str] = []
        streams = [probe_stream(seq.ir, local), probe_stream(seq.vis, local)]
        if seq.corruption is not None:
            local += seq.corruption.problems()
        if all(streams):
            available = min(s.frames for s in streams)
            if seq.stems:
                have = set(streams[1].names()) & set(streams[0].names())
                local += [f"frame {stem} not in both sources" for stem in seq.stems if stem not in have]
                available = len(seq.stems)
            wanted = seq.first + (seq.frames or 2)
            if seq.first < 0 or available < wanted or available - seq.first < 2:
                local.append(f"needs frames {seq.first}..{wanted - 1} (at least 2), the sources have {available}")
            if streams[0].size != streams[1].size:
                local.append(f"source sizes differ: {streams[0].size} and {streams[1].size}")
        problems += [f"{seq.name}: {p}" for p in local]
    if problems:
        raise DatasetError("sudden-change sequences", problems)


def read_sequence(seq: ChangeSequence) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
    """(ir uint8 grey, vis uint8 BGR, clean ir, clean vis, corruption strength) per frame, in order."""
    problems: list[str] = []
    ir_stream, vis_stream = probe_stream(seq.ir, problems), probe_stream(seq.vis, problems)
    if problems:
        raise DatasetError(seq.name, problems)
    wanted = set(seq.stems)
    pairs = zip(zip(ir_stream.names(), ir_stream.read()), zip(vis_stream.names(), vis_stream.read()))
    if wanted:
        pairs = ((a, b) for a, b in pairs if a[0] in wanted)
    index = 0
    for position, ((_, ir_bgr), (_, vis_bgr)) in enumerate(pairs):
        if position < seq.first:
            continue
        if seq.frames is not None and index >= seq.frames:
            return
        ir = np.clip(gray_reference(ir_bgr), 0, 255).astype(np.uint8)
        corrupted_ir, corrupted_vis = (seq.corruption.apply(index, ir, vis_bgr) if seq.corruption is not None
                                       else (ir, vis_bgr))
        strength = seq.corruption.strength(index) if seq.corruption is not None else 0.0
        yield corrupted_ir, corrupted_vis, ir, vis_bgr, strength
        index += 1


def detect_change(vis_lumas: Sequence[np.ndarray], smooth: int = DETECT_SMOOTH) -> int:
    """The frame after which the visible detail (variance of the Laplacian, moving mean of ``smooth`` frames)
    falls fastest; 1 for sequences too short to smooth."""
    detail = np.array([cv2.Laplacian(np.asarray(v, np.float32), cv2.CV_32F).var() for v in vis_lumas])
    if len(detail) < 2:
        return 0
    k = min(smooth, max(1, len(detail) // 3))
    smoothed = np.convolve(detail, np.ones(k) / k, mode="valid")
    if len(smoothed) < 2:
        return 1
    # smoothed[i] averages frames i..i+k-1; its fall from i to i+1 is the arrival of frame i+k
    return int(np.argmin(np.diff(smoothed)) + k)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _score_frame(fused: np.ndarray, ir: np.ndarray, vis_y: np.ndarray, clean: tuple[np.ndarray, np.ndarray] | None,
                 metrics: Sequence[str]) -> dict[str, float]:
    values = {}
    given = FusionSet.of(fused, {"ir": ir, "vis": vis_y})
    for name in metrics:
        values[name] = float(METRICS.get(name)(given))
    if clean is not None:
        reference = FusionSet.of(fused, {"ir": clean[0], "vis": clean[1]})
        for name in metrics:
            if name in METRIC_TERMS:  # the metrics that compare F with each source (the others look at F alone)
                values[f"{name}@clean"] = float(METRICS.get(name)(reference))
    return values


def run_sequence(seq: ChangeSequence, fusers: Mapping[str, Fuser], metrics: Sequence[str],
                 flow: Any | None) -> tuple[list[FrameRecord], int, str]:
    """Fuse one sequence with every fuser; returns its frame records, change frame and how it was found."""
    frames = list(read_sequence(seq))
    vis_lumas = [visible_from_bgr(vis)[0] for _, vis, _, _, _ in frames]
    if seq.corruption is not None:
        change, source = seq.corruption.start, "corruption"
    elif seq.change_frame is not None:
        change, source = seq.change_frame, "given"
    else:
        change, source = detect_change(vis_lumas), "detected"
    records: list[FrameRecord] = []
    for label, fuser in fusers.items():
        reset = getattr(fuser, "reset", None)  # a streaming fuser starts each sequence without earlier state
        if callable(reset):
            reset()
        stats = TemporalStats(flow=FlowStats(flow) if flow is not None else None)
        excess_before = 0
        for t, ((ir, vis, clean_ir, clean_vis, strength), vis_y) in enumerate(zip(frames, vis_lumas)):
            _, vis_bgr = visible_from_bgr(vis)
            fused = fuse_arrays(fuser, ir.astype(np.float32), vis_y, vis_bgr)
            stats.add(fused, ir, vis_y)
            flicker = warp = None
            if t > 0:
                flicker = (stats.excess - excess_before) / ir.size
                if stats.flow is not None:
                    warp = stats.flow.back[-1] + stats.flow.fwd[-1]
            excess_before = stats.excess
            clean = ((clean_ir, visible_from_bgr(clean_vis)[0]) if seq.corruption is not None else None)
            records.append(FrameRecord(seq.name, label, seq.first + t, t - change, strength,
                                       _score_frame(fused, ir, vis_y, clean, metrics), flicker, warp))
    return records, seq.first + change, source


def summarise(records: Sequence[FrameRecord], change_frame: int, source: str, window: int) -> ChangeSummary:
    """Means before/after the change and the temporal error around it, for one fuser's records of one sequence."""
    before = [r for r in records if -window <= r.offset < 0]
    after = [r for r in records if 0 <= r.offset < window]
    around = [r for r in records if -window < r.offset <= window]
    names = list(records[0].metrics)
    mean_of = lambda rs: {n: _mean([r.metrics[n] for r in rs]) for n in names if rs}  # noqa: E731
    peak = max((r for r in around if r.warp_error is not None), key=lambda r: r.warp_error, default=None)
    return ChangeSummary(records[0].sequence, records[0].fuser, change_frame, source, window,
                         mean_of(before), mean_of(after),
                         _mean([r.flicker for r in before]), _mean([r.flicker for r in around]),
                         _mean([r.warp_error for r in before]), _mean([r.warp_error for r in around]),
                         peak.frame if peak is not None else None)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown_table(summaries: Sequence[ChangeSummary], metric: str) -> str:
    clean = f"{metric}@clean"
    lines = ["| sequence | fuser | change frame | " + f"{metric} before | {metric} after | {clean} before | "
             f"{clean} after | flicker before | flicker around | warp error before | warp error around | "
             "warp peak frame |", "|---|---|---:|" + "---:|" * 9]
    for s in summaries:
        lines.append(f"| {s.sequence} | {s.fuser} | {s.change_frame} ({s.change_source}) | "
                     f"{_fmt(s.before.get(metric))} | {_fmt(s.after.get(metric))} | {_fmt(s.before.get(clean))} | "
                     f"{_fmt(s.after.get(clean))} | {_fmt(s.flicker_before)} | {_fmt(s.flicker_around)} | "
                     f"{_fmt(s.warp_before)} | {_fmt(s.warp_around)} | "
                     f"{s.warp_peak_frame if s.warp_peak_frame is not None else '-'} |")
    return "\n".join(lines) + "\n"


def plot_report(records: Sequence[FrameRecord], summaries: Sequence[ChangeSummary], metric: str, path: Path) -> None:
    """One row per sequence: ``metric`` (against the given sources; dashed: against the clean ones), flicker and
    warping error per frame, one colour per fuser, the change as a vertical line. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sequences = list(dict.fromkeys(r.sequence for r in records))
    fuser_names = list(dict.fromkeys(r.fuser for r in records))
    has_warp = any(r.warp_error is not None for r in records)
    columns = [metric, "flicker (grey levels)"] + (["warping error (grey levels)"] if has_warp else [])
    fig, axes = plt.subplots(len(sequences), len(columns), figsize=(4.2 * len(columns), 2.8 * len(sequences)),
                             squeeze=False)
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(fuser_names)}
    for row, seq in enumerate(sequences):
        change = next(s.change_frame for s in summaries if s.sequence == seq)
        for name in fuser_names:
            mine = [r for r in records if r.sequence == seq and r.fuser == name]
            x = [r.frame for r in mine]
            axes[row][0].plot(x, [r.metrics.get(metric, np.nan) for r in mine], color=colours[name], label=name)
            if f"{metric}@clean" in mine[0].metrics:
                axes[row][0].plot(x, [r.metrics[f"{metric}@clean"] for r in mine], color=colours[name], ls="--")
            axes[row][1].plot(x[1:], [r.flicker for r in mine[1:]], color=colours[name])
            if has_warp:
                axes[row][2].plot(x[1:], [r.warp_error for r in mine[1:]], color=colours[name])
        for col, title in enumerate(columns):
            axes[row][col].axvline(change, color="grey", ls=":", lw=1)
            axes[row][col].set_title(f"{seq}: {title}", fontsize=9)
            axes[row][col].set_xlabel("frame", fontsize=8)
            axes[row][col].tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def sudden_change_report(sequences: Sequence[ChangeSequence], fusers: Mapping[str, Fuser], out_dir: str | Path, *,
                         metrics: Sequence[str] = DEFAULT_METRICS, flow: str | Any | None = "dis_fast",
                         window: int = 10, plot_metric: str = "Qabf") -> SuddenChangeResult:
    """Fuse each sequence with each fuser and report quality and temporal error around its change of visibility.

    Contract:
        sequences: :class:`ChangeSequence` s (real clips, or clips/frames with a :class:`TimeVaryingCorruption`).
        fusers: label -> ``fusion.fusers.base.Fuser`` (``create_fuser("max")``, ``load_fuser_checkpoint(path)``, ...).
        out_dir: receives ``sudden_change.png``, ``sudden_change.md`` and ``sudden_change.json`` (each atomic).
        metrics: ``fusion.metrics.image.METRICS`` names scored per frame; ``plot_metric`` (one of them) is plotted.
        flow: optical flow for the per-step warping error (``fusion.video.flow``; ``dis_fast`` by default: 6 flows per
            step and fuser), or None for flicker only.
        window: frames before / from the change averaged in the summaries.
        Raises one ``DatasetError`` naming every bad sequence, unknown metric or fuser problem before any fusing.
    """
    unknown = [m for m in [*metrics, plot_metric] if m not in METRICS]
    if unknown or plot_metric not in metrics or window < 1:
        raise DatasetError("sudden-change report", [f"unknown metric {m!r} (known: {', '.join(METRICS.names())})"
                                                    for m in dict.fromkeys(unknown)]
                           + ([f"plot_metric {plot_metric!r} is not among metrics"] if plot_metric not in metrics
                              else []) + ([f"window must be >= 1, got {window}"] if window < 1 else []))
    check_sequences(sequences, fusers)
    estimator = resolve_flow(flow) if flow is not None else None
    out_dir = Path(out_dir)
    records: list[FrameRecord] = []
    summaries: list[ChangeSummary] = []
    for seq in sequences:
        seq_records, change, source = run_sequence(seq, fusers, metrics, estimator)
        records += seq_records
        for label in fusers:
            summaries.append(summarise([r for r in seq_records if r.fuser == label], change, source, window))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot, table, json_path = (out_dir / f"sudden_change.{ext}" for ext in ("png", "md", "json"))
    plot_report(records, summaries, plot_metric, plot)
    config = {"metrics": list(metrics), "flow": flow if isinstance(flow, str) or flow is None else repr(flow),
              "window": window, "sequences": [_describe(s) for s in sequences], "fusers": list(fusers)}
    atomic_write_text(table, markdown_table(summaries, plot_metric))
    atomic_write_json(json_path, {"config": config, "summaries": [asdict(s) for s in summaries],
                                  "frames": [asdict(r) for r in records]})
    return SuddenChangeResult(records, summaries, plot, table, json_path, config)


def _describe(seq: ChangeSequence) -> dict[str, Any]:
    out = asdict(seq)
    out["ir"], out["vis"] = str(seq.ir), str(seq.vis)
    return out


def parse_corruption(text: str, key: str) -> TimeVaryingCorruption:
    """``NAME:PROFILE:START[:DURATION[:SEVERITY]]`` -> a corruption, e.g. ``fog:ramp:30:20:3``, ``glare:flash:10:2``."""
    parts = text.split(":")
    if len(parts) < 3:
        raise ValueError(f"corruption {text!r} is not NAME:PROFILE:START[:DURATION[:SEVERITY]]")
    numbers = [int(p) for p in parts[2:]]
    return TimeVaryingCorruption(parts[0], parts[1], numbers[0], *(numbers[1:3]), key=key)


def main(argv: Sequence[str] | None = None) -> int:
    from fusion.fusers.fuse import load_fuser_checkpoint  # torch: imported when the command runs

    parser = argparse.ArgumentParser(prog="python -m fusion.video.sudden_change",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", nargs="+", action="append", required=True, metavar="NAME IR VIS [key=value]",
                        help="a sequence: name, infrared and visible source, then first=N frames=N change=N "
                             "stems=a,b,c corruption=NAME:PROFILE:START[:DURATION[:SEVERITY]]; repeat for more")
    parser.add_argument("--fuser", nargs="+", default=["max", "ir"],
                        help="fusers: registered names, or LABEL=CHECKPOINT.pt for DAE-Fuse checkpoints")
    parser.add_argument("--stabilise", nargs="*", default=[], metavar="LABEL",
                        help="also each of these fusers wrapped in fusion.video.streaming.StabilisedFuser (its "
                             "defaults)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--flow", default="dis_fast", help="flow estimator for the warping error, or 'none'")
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        sequences = []
        for tokens in args.sequence:
            if len(tokens) < 3:
                raise ValueError(f"--sequence needs NAME IR VIS, got {tokens}")
            opts = dict(t.split("=", 1) for t in tokens[3:])
            sequences.append(ChangeSequence(
                tokens[0], tokens[1], tokens[2], int(opts.get("first", 0)),
                int(opts["frames"]) if "frames" in opts else None,
                tuple(opts["stems"].split(",")) if "stems" in opts else (),
                parse_corruption(opts["corruption"], tokens[0]) if "corruption" in opts else None,
                int(opts["change"]) if "change" in opts else None))
        fusers = {}
        for spec in args.fuser:
            label, _, path = spec.partition("=")
            fusers[label] = load_fuser_checkpoint(path) if path else create_fuser(label)
        for label in args.stabilise:
            fusers[f"{label}+stabilised"] = StabilisedFuser(fusers[label])
        result = sudden_change_report(sequences, fusers, args.out, metrics=args.metrics,
                                      flow=None if args.flow == "none" else args.flow, window=args.window,
                                      plot_metric="Qabf" if "Qabf" in args.metrics else args.metrics[0])
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.table.read_text())
    print(f"wrote {result.plot}, {result.table}, {result.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
