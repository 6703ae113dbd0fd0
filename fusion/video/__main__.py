"""``python -m fusion.video``: an infrared and a visible stream in, one fused stream out, with any fuser.

    python -m fusion.video --ir IR.mp4 --vis VIS.mp4 --out FUSED.mp4 (--checkpoint X | --baseline max | --fuser ...)
        [--device cuda] [--batch-size 4] [--fps F] [--temporal [--flow dis]] [--stabilise 0.5]
        [--sudden-change DIR [--change-frame N] [--sudden-frames N]]

IR/VIS: video files or frame folders; OUT: a video file (.mp4, .avi, .mkv) or, without an extension, a folder of
PNG frames (``fusion.video.streaming``: the checks, the pairing rule, the outputs). The fuser options are those of
``python -m fusion.fusers.fuse`` (``add_fuser_arguments``). Bad input is one message naming every problem, and exit
status 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fusion.fusers.base import Fuser
from fusion.fusers.catalog import create_fuser
from fusion.fusers.fuse import add_fuser_arguments, build_fuser
from fusion.models.inference import keep_freed_memory

from .streaming import StabilisedFuser, StabiliserConfig, VideoConfig, fuse_video


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = VideoConfig()
    group = parser.add_argument_group("video")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size, help="frame pairs per fuse call")
    group.add_argument("--fps", type=float, default=None,
                       help="frame rate of frame folders (default: the other source's, or 30)")
    group.add_argument("--fps-tolerance", type=float, default=defaults.fps_tolerance,
                       help="largest relative frame-rate difference paired on timestamps (default 0.01)")
    group.add_argument("--count-tolerance", type=float, default=defaults.count_tolerance,
                       help="largest duration difference, in frames (default 2)")
    group.add_argument("--temporal", action="store_true", help="also print the output's temporal metrics")
    group.add_argument("--flow", default=None, metavar="NAME|package.module:factory",
                       help="with --temporal, also VF-Bench's BiSWE and MS2R on this optical flow (dis, dis_fast, "
                            "farneback, or a local flow model's factory); off by default: six flows per frame step")
    group.add_argument("--stabilise", type=float, default=None, metavar="WEIGHT",
                       help="carry state between frames: blend each fused frame with the previous output warped by "
                            "the sources' motion (StabilisedFuser; 0.5 is the measured setting, "
                            "benchmarks/results/video_temporal.md)")
    group.add_argument("--sudden-change", type=Path, default=None, metavar="DIR",
                       help="also report quality and temporal error around the change of visibility of these "
                            "streams (fusion.video.sudden_change) into DIR/sudden_change.{png,md,json}, against 'max'")
    group.add_argument("--change-frame", type=int, default=None,
                       help="with --sudden-change: the frame where visibility changes (default: detected)")
    group.add_argument("--sudden-frames", type=int, default=None,
                       help="with --sudden-change: report only the first N frames (default all)")


def run_video(fuser: Fuser, args: argparse.Namespace) -> int:
    """Fuse the streams the options name, print the report (and write the sudden-change report when asked); 2 on
    bad input."""
    try:
        config = VideoConfig(batch_size=args.batch_size, fps_tolerance=args.fps_tolerance,
                             count_tolerance=args.count_tolerance, folder_fps=args.fps, temporal=args.temporal,
                             flow=args.flow)
        if getattr(args, "stabilise", None) is not None:
            fuser = StabilisedFuser(fuser, StabiliserConfig(weight=args.stabilise))
        report = fuse_video(fuser, args.ir, args.vis, args.out, config)
        print(report.summary())
        if getattr(args, "sudden_change", None) is not None:
            # only when asked: the corruptions it can apply import albumentations, which plain fusing never needs
            from .sudden_change import ChangeSequence, sudden_change_report

            if isinstance(fuser, StabilisedFuser):
                fuser.reset()
            label = getattr(fuser, "name", "fuser")
            result = sudden_change_report(
                [ChangeSequence(Path(args.ir).stem, args.ir, args.vis, frames=args.sudden_frames,
                                change_frame=args.change_frame)],
                {label: fuser, "max": create_fuser("max")}, args.sudden_change)
            print(f"sudden change: {result.plot}, {result.table}")
    except (ValueError, OSError) as err:  # DatasetError and VideoStreamError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.video",
                                     description="Fuse an infrared and a visible stream (video files or frame "
                                                 "folders).")
    add_fuser_arguments(parser)
    parser.add_argument("--ir", required=True, type=Path, help="infrared video file or frame folder")
    parser.add_argument("--vis", required=True, type=Path, help="visible video file or frame folder")
    parser.add_argument("--out", required=True, type=Path,
                        help="fused video (.mp4, .avi, .mkv) or, without an extension, a folder of PNG frames")
    add_video_arguments(parser)
    args = parser.parse_args(argv)
    keep_freed_memory()  # a process that fuses frame after frame: 13-17 % faster on CPU (fusion.models.inference)
    fuser = build_fuser(args)
    if fuser is None:
        return 2
    return run_video(fuser, args)


if __name__ == "__main__":
    raise SystemExit(main())
