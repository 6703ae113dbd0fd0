"""Video fusion throughput: frames/s of each fuser and where the time goes (read, fuse, write).

    .venv/bin/python benchmarks/bench_video.py [--checkpoint CKPT] [--frames 10] [--devices cpu cuda]

Issue 15's targets: DAE-Fuse on a 2-core CPU at least 5 frames/s at 640x512 and 2 at 1024x768; on an H100/H200
at least 100 frames/s at 1024x768 in bf16 (``benchmarks/gpu_check.sh`` runs the CUDA rows there).

Each row streams two synthetic mp4v videos (a moving warm blob over a ramp; grey infrared, colour visible) through
``fusion.video.streaming.fuse_video`` into an mp4v video in a temporary folder, as ``python -m fusion.video`` does.
Fusers: the rules ``ir``, ``mean``, ``max`` and DAE-Fuse, from ``--checkpoint`` or else a freshly initialised
``dae_fuse_s`` (labelled "untrained": the cost does not depend on the weights, the images do). Rows: CPU with each
``--threads`` count (torch and OpenCV both limited to it), and, when CUDA is present, DAE-Fuse in fp32, bf16, and bf16
with channels-last weights. Stages run one after the other (``overlap_io`` off) so that read + fuse + write is the wall
time; ``--overlap`` measures the pipelined throughput instead. ``fuse fps`` is frames / fuse seconds
(the model, transfers and colour restoration); ``model fps`` times ``fuse_luma_batch`` alone on one held batch
(the figure comparable with bench_fuse.py). One untimed warm-up batch precedes each DAE-Fuse row. Prints figures,
asserts nothing.

Temporal consistency (issue 23), a second mode::

    .venv/bin/python benchmarks/bench_video.py temporal --frames 120 --json OUT.json \
        --candidate release=fusion/weights/dae_fuse_release.pt --candidate max [--stabilise release]

decodes the first ``--frames`` frames of each evaluation clip (M3SVD ``0117_1605``, ``0117_1620``: the clips that are
not the temporal fine-tuning's training clip; TNO Nato camp, all 32) to lossless PNG folders in a temporary folder,
fuses them with each candidate through ``fusion.video.streaming.fuse_video`` (what ``python -m fusion.video`` runs) and
scores flicker, temporal correlation, BiSWE and MS2R (DIS flow) while streaming. ``--stabilise LABEL`` adds
``LABEL+stabilised``: that candidate wrapped in ``fusion.video.streaming.StabilisedFuser``.

End-to-end speed on real footage (issue 23), a third mode::

    .venv/bin/python benchmarks/bench_video.py speed --frames 60 --rounds 2 --json OUT.json

re-encodes the first ``--frames`` frames of ``0117_1605`` (640x480) and of the M3FD sample (1024x768, its 35
frames at most) as mp4v and streams them through ``fuse_video`` into mp4v (decode, fuse, encode, as the CLI does)
with the release (I/O overlapped, the CLI's default, and in turn), the release stabilised, and ``max``, in
interleaved rounds, recording the load average beside each row (the machine is shared).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from data.shared import SHARED_DATA
from fusion.fusers.catalog import create_fuser
from fusion.fusers.fuse import load_fuser_checkpoint
from fusion.models.checkpoint import ARCHITECTURE
from fusion.models.dae_fuse import create_model
from fusion.models.inference import for_inference, keep_freed_memory
from fusion.video.streaming import VideoConfig, fuse_video

RULES: tuple[str, ...] = ("ir", "mean", "max")
SIZES: tuple[str, ...] = ("640x512", "1024x768")


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    size: str
    fuser: str
    device: str
    batch: int
    frames: int
    seconds: dict[str, float]
    model_fps: float | None = None  # fuse_luma_batch alone on a held batch (DAE-Fuse rows)

    def cells(self) -> list[str]:
        s, n = self.seconds, self.frames
        ms = lambda k: f"{1000 * s[k] / n:.1f}"
        fuse_fps = n / s["fuse"] if s["fuse"] > 0 else float("inf")
        model = "-" if self.model_fps is None else f"{self.model_fps:.2f}"
        return [self.size, self.fuser, self.device, str(self.batch), f"{n / s['total']:.2f}", f"{fuse_fps:.2f}",
                model, ms("read"), ms("fuse"), ms("write")]


HEADER = ["size", "fuser", "device", "batch", "frames/s", "fuse fps", "model fps", "read ms", "fuse ms", "write ms"]


def synthetic_videos(folder: Path, width: int, height: int, frames: int) -> tuple[Path, Path]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = folder / f"ir_{width}x{height}.mp4", folder / f"vis_{width}x{height}.mp4"
    writers = [cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height), True) for p in paths]
    for i in range(frames):
        blob = 200 * np.exp(-((xx - width * (0.2 + 0.02 * i)) ** 2 + (yy - height / 2) ** 2) / (width * 2))
        ir = np.clip(30 + blob + yy * (100 / height), 0, 255).astype(np.uint8)
        vis = np.dstack([(xx * (400 / width) + 4 * i) % 200 + 20, yy * (150 / height) + 40, 120 + 0 * xx])
        writers[0].write(cv2.cvtColor(ir, cv2.COLOR_GRAY2BGR))
        writers[1].write(vis.astype(np.uint8))
    for writer in writers:
        writer.release()
    return paths


def untrained_checkpoint(folder: Path, variant: str) -> Path:
    """A checkpoint file of a freshly initialised variant (no fusion epoch: loaded with allow_unfused)."""
    model = create_model(variant)
    path = folder / f"{variant}_untrained.pt"
    torch.save({"architecture": ARCHITECTURE, "model": model.state_dict(), "model_config": model.cfg.to_dict()},
               path)
    return path


def measure(fuser, label: str, device: str, size: str, videos: tuple[Path, Path], out: Path,
            config: VideoConfig, frames: int) -> Row:
    model_fps = None
    if hasattr(fuser, "fuse_luma_batch"):
        width, height = map(int, size.split("x"))
        batch = [np.random.default_rng(0).uniform(0, 255, (height, width)).astype(np.float32)] * config.batch_size
        fuser.fuse_luma_batch(batch, batch)  # untimed warm-up: allocator, kernel selection
        repeats = 2 if device.startswith("cpu") else 5
        t = time.perf_counter()
        for _ in range(repeats):
            fuser.fuse_luma_batch(batch, batch)  # returns host arrays: the device has finished
        model_fps = repeats * config.batch_size / (time.perf_counter() - t)
    report = fuse_video(fuser, *videos, out, config)
    return Row(size, label, device, config.batch_size, report.frames, report.seconds, model_fps)


VIDEO_ROOT = SHARED_DATA / "video"
EVAL_CLIPS: dict[str, tuple[str, str]] = {
    "0117_1605": ("m3svd/0117_1605_infrared.mp4", "m3svd/0117_1605_visible.mp4"),
    "0117_1620": ("m3svd/0117_1620_infrared.mp4", "m3svd/0117_1620_visible.mp4"),
    "nato_camp": ("tno_nato_camp/ir", "tno_nato_camp/vis"),
}
# The clip settings are chosen on (SOURCE.md: 0113_1714 is the one to train on; the others are evaluation only).
TRAIN_CLIPS: dict[str, tuple[str, str]] = {
    "0113_1714": ("m3svd/0113_1714_infrared.mp4", "m3svd/0113_1714_visible.mp4"),
}


def frame_folder(source: Path, out: Path, frames: int) -> Path:
    """The first ``frames`` frames of a video as lossless PNGs in ``out`` (a folder source is used as it is)."""
    if source.is_dir():
        return source
    out.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(source))
    for index in range(frames):
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(str(out / f"{index:06d}.png"), frame)
    capture.release()
    return out


def temporal_main(argv: list[str]) -> None:
    """The ``temporal`` mode of the module docstring."""
    import json
    import platform

    from data.config import ConfigError, from_dict, parse_key_values
    from data.io import atomic_write_json
    from data.provenance import package_versions
    from fusion.video.streaming import StabilisedFuser, StabiliserConfig

    parser = argparse.ArgumentParser(prog="bench_video.py temporal")
    parser.add_argument("--frames", type=int, default=120, help="first frames of each M3SVD clip")
    parser.add_argument("--clips", nargs="+", default=list(EVAL_CLIPS), choices=[*EVAL_CLIPS, *TRAIN_CLIPS],
                        help="evaluation clips (default: all); 0113_1714 is the training clip, for choosing settings")
    parser.add_argument("--candidate", action="append", required=True,
                        help="LABEL=CHECKPOINT.pt (DAE-Fuse) or a registered fuser name")
    parser.add_argument("--stabilise", action="append", default=[], help="a candidate's LABEL to also stabilise")
    parser.add_argument("--stabiliser", nargs="+", default=[], metavar="KEY=VALUE",
                        help="StabiliserConfig fields for the stabilised rows (e.g. weight=0.7 agree_px=2.0)")
    parser.add_argument("--flow", default="dis")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fusers = {}
    for spec in args.candidate:
        label, _, path = spec.partition("=")
        fusers[label] = load_fuser_checkpoint(path) if path else create_fuser(label)
    try:
        stabiliser = from_dict(StabiliserConfig, parse_key_values(args.stabiliser), "--stabiliser")
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    for label in args.stabilise:
        fusers[f"{label}+stabilised"] = (fusers[label], stabiliser)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_video_temporal_") as tmp:
        for clip in args.clips:
            ir, vis = (frame_folder(VIDEO_ROOT / rel, Path(tmp) / clip / kind, args.frames)
                       for rel, kind in zip({**EVAL_CLIPS, **TRAIN_CLIPS}[clip], ("ir", "vis")))
            for label, fuser in fusers.items():
                if isinstance(fuser, tuple):
                    fuser = StabilisedFuser(*fuser)
                report = fuse_video(fuser, ir, vis, Path(tmp) / clip / f"fused_{label}",
                                    VideoConfig(temporal=True, flow=args.flow, folder_fps=30.0))
                rows.append({"clip": clip, "candidate": label, "frames": report.frames, **report.temporal,
                             "fuse_ms_per_frame": 1000 * report.seconds["fuse"] / report.frames})
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        atomic_write_json(args.json, {"command": "benchmarks/bench_video.py temporal " + " ".join(argv),
                                      "stabiliser": dataclasses.asdict(stabiliser), "flow": args.flow, "frames": args.frames, "threads": args.threads,
                                      "machine": platform.processor() or platform.machine(),
                                      "versions": package_versions(), "rows": rows})


def cut_video(frames: list[Path] | Path, out: Path, count: int) -> Path:
    """An mp4v video of the first ``count`` frames of a video file or of a list of image files (as a camera's
    stream would arrive: decoding it is part of what is timed)."""
    if isinstance(frames, Path):
        capture = cv2.VideoCapture(str(frames))
        images = [capture.read()[1] for _ in range(count)]
        capture.release()
    else:
        images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in frames[:count]]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height), True)
    for image in images:
        writer.write(image)
    writer.release()
    return out


def speed_main(argv: list[str]) -> None:
    """End-to-end frames/s on real footage: decode (mp4v), fuse, encode (mp4v), as ``python -m fusion.video``
    runs it, rounds interleaved so that every configuration sees the same machine load."""
    import json
    import os

    from data.io import atomic_write_json
    from data.provenance import package_versions
    from fusion.video.streaming import StabilisedFuser

    parser = argparse.ArgumentParser(prog="bench_video.py speed")
    parser.add_argument("--checkpoint", default="fusion/weights/dae_fuse_release.pt")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (frames fused 16 per forward there)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--return-freed-memory", action="store_true",
                        help="leave glibc's default (freed blocks go back to the OS), as before keep_freed_memory")
    parser.add_argument("--no-warmup", action="store_true", help="time from the first frame (no untimed round)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    allocator = "glibc default" if args.return_freed_memory else f"freed memory kept: {keep_freed_memory()}"
    m3fd = SHARED_DATA / "m3fd_sample"
    needed = [VIDEO_ROOT / EVAL_CLIPS["0117_1605"][0], m3fd / "Ir"]
    if not all(p.exists() for p in needed):
        print(f"speed: skipped, the shared footage is not here ({', '.join(map(str, needed))})")
        return
    batch = 16 if args.device.startswith("cuda") else VideoConfig().batch_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_video_speed_") as tmp:
        tmp = Path(tmp)
        clips = {
            "0117_1605 640x480": tuple(cut_video(VIDEO_ROOT / rel, tmp / f"1605_{kind}.mp4", args.frames)
                                       for rel, kind in zip(EVAL_CLIPS["0117_1605"], ("ir", "vis"))),
            "m3fd 1024x768": tuple(cut_video(sorted((m3fd / sub).iterdir()), tmp / f"m3fd_{sub}.mp4", args.frames)
                                   for sub in ("Ir", "Vis")),
        }
        configs = {
            "release, I/O overlapped (CLI default)": (lambda: load_fuser_checkpoint(args.checkpoint, args.device),
                                                      True),
            "release, stages in turn": (lambda: load_fuser_checkpoint(args.checkpoint, args.device), False),
            "release + stabilised": (lambda: StabilisedFuser(load_fuser_checkpoint(args.checkpoint, args.device)),
                                     True),
            "max": (lambda: create_fuser("max"), True),
        }
        # round -1 is an untimed warm-up (oneDNN picks and caches its kernels per shape on first use: the first
        # configuration timed without it ran 30 % slower than the same one a round later)
        for round_ in range(0 if args.no_warmup else -1, args.rounds):
            for clip, (ir, vis) in clips.items():
                for label, (make, overlap) in configs.items():
                    load = os.getloadavg()[0]
                    report = fuse_video(make(), ir, vis, tmp / "out.mp4",
                                        VideoConfig(batch_size=batch, overlap_io=overlap))
                    if round_ < 0:
                        continue
                    s, n = report.seconds, report.frames
                    rows.append({"round": round_, "clip": clip, "config": label, "device": args.device, "frames": n,
                                 "fps": n / s["total"], "read_ms": 1000 * s["read"] / n,
                                 "fuse_ms": 1000 * s["fuse"] / n, "write_ms": 1000 * s["write"] / n,
                                 "load_avg_1min": load, "allocator": allocator})
                    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        atomic_write_json(args.json, {"command": "benchmarks/bench_video.py speed " + " ".join(argv),
                                      "threads": args.threads, "allocator": allocator, "versions": package_versions(), "rows": rows})


def main() -> None:
    import sys

    if sys.argv[1:2] == ["temporal"]:
        temporal_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["speed"]:
        speed_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a DAE-Fuse checkpoint (default: an untrained dae_fuse_s)")
    parser.add_argument("--variant", default="dae_fuse_s", help="variant built when no --checkpoint is given")
    parser.add_argument("--frames", type=int, default=10, help="frames per video")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WIDTHxHEIGHT")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--fusers", nargs="+", default=[*RULES, "dae_fuse"], choices=[*RULES, "dae_fuse"])
    parser.add_argument("--batch-size", type=int, default=4, help="frames per forward on CPU")
    parser.add_argument("--cuda-batch-size", type=int, default=16, help="frames per forward on CUDA")
    parser.add_argument("--overlap", action="store_true", help="read and write on helper threads while fusing")
    args = parser.parse_args()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(tmp, args.variant)
        dae_label = "dae_fuse" if args.checkpoint else f"dae_fuse ({args.variant}, untrained)"
        print(f"DAE-Fuse: {checkpoint if args.checkpoint else dae_label}; {args.frames} frames per video; "
              f"stages {'overlapped' if args.overlap else 'sequential'}")
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            videos = synthetic_videos(tmp, width, height, args.frames)
            out = tmp / f"fused_{size}.mp4"
            cpu_config = VideoConfig(batch_size=args.batch_size, overlap_io=args.overlap)
            if "cpu" in args.devices:
                previous = torch.get_num_threads(), cv2.getNumThreads()
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    cv2.setNumThreads(threads)
                    for name in args.fusers:
                        fuser = (load_fuser_checkpoint(checkpoint, "cpu", allow_unfused=True) if name == "dae_fuse"
                                 else create_fuser(name))
                        label = dae_label if name == "dae_fuse" else name
                        rows.append(measure(fuser, label, f"cpu {threads}t", size, videos, out, cpu_config,
                                            args.frames))
                        print(" | ".join(rows[-1].cells()), flush=True)
                torch.set_num_threads(previous[0])
                cv2.setNumThreads(previous[1])
            if "cuda" in args.devices and "dae_fuse" in args.fusers:
                if not torch.cuda.is_available():
                    print("CUDA: not available here")
                    continue
                cuda_config = VideoConfig(batch_size=args.cuda_batch_size, overlap_io=args.overlap)
                for precision, channels_last in (("fp32", False), ("bf16", False), ("bf16", True)):
                    fuser = load_fuser_checkpoint(checkpoint, "cuda", allow_unfused=True)
                    fuser.precision = precision  # timing only: the cache key keeps the constructor's bf16
                    fuser.inference_model = for_inference(fuser.model, "cuda", channels_last=channels_last)
                    device = f"cuda {precision}" + (" cl" if channels_last else "")
                    rows.append(measure(fuser, dae_label, device, size, videos, out, cuda_config, args.frames))
                    print(" | ".join(rows[-1].cells()), flush=True)
                    del fuser
                    torch.cuda.empty_cache()
    if torch.cuda.is_available() and "cuda" in args.devices:
        print(f"CUDA device: {torch.cuda.get_device_name()}")
    table = [HEADER] + [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    print()
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) if j < 3 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
