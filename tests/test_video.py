"""Video fusion (fusion.video.streaming), DAE-Fuse batched inference, the video command (python -m fusion.video) and
the temporal metrics."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data.errors import DatasetError
from data.io import read_gray_reference, read_image, write_image
from data.types import Pair
from fusion.fusers.base import fuse_arrays, fuse_pair
from fusion.fusers.catalog import create_fuser
from fusion.fusers.fuse import load_fuser_checkpoint
from fusion.video.temporal import (
    TEMPORAL_METRICS,
    TemporalStats,
    consecutive_runs,
    conventions,
    evaluate_sequences,
    evaluate_temporal,
)
from fusion.training.train import train
from fusion.video.__main__ import main as video_main
from fusion.video.sources import VideoStreamError
from fusion.video.streaming import (
    StabilisedFuser,
    StabiliserConfig,
    VideoConfig,
    fuse_video,
    ir_input,
    visible_input,
)
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W, H, FRAMES, FPS = 64, 48, 6, 10.0


def scene(n: int = FRAMES, size: tuple[int, int] = (W, H), shift: int = 3) -> tuple[list, list]:
    """n frames of a grey infrared scene (a warm blob moving right) and a colour visible one (a moving ramp)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ir, vis = [], []
    for i in range(n):
        blob = 200 * np.exp(-((xx - 10 - shift * i) ** 2 + (yy - h / 2) ** 2) / 60)
        ir.append(np.clip(30 + blob + yy, 0, 255).astype(np.uint8))
        vis.append(np.dstack([(xx * 2 + i * 4) % 200 + 20, yy * 3 + 40, 120 + 0 * xx]).astype(np.uint8))
    return ir, vis


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS, fourcc: str = "FFV1") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, frames[0].shape[1::-1], True)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
    writer.release()
    return path


def decode(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_folder(folder: Path, frames: list[np.ndarray], prefix: str = "") -> Path:
    for i, frame in enumerate(frames):
        write_image(folder / f"{prefix}{i:05d}.png", frame)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    ir, vis = scene()
    return {
        "ir_dir": write_folder(root / "ir", ir), "vis_dir": write_folder(root / "vis", vis),
        "ir_mkv": write_video(root / "ir.mkv", ir), "vis_mkv": write_video(root / "vis.mkv", vis),
        "ir_mp4": write_video(root / "ir.mp4", ir, fourcc="mp4v"),
        "vis_mp4": write_video(root / "vis.mp4", vis, fourcc="mp4v"),
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_root) -> Path:
    out = tmp_path_factory.mktemp("video_run")
    return train(tiny_config("phases=[{name: fuse, epochs: 1}]"), synthetic_root, out, progress=False).last_checkpoint


def expected_from_frames(fuser, ir_frames, vis_frames) -> list[np.ndarray]:
    """Image-by-image fusion of decoded BGR frames (what fuse_pair does with the same frames as files)."""
    out = []
    for ir_bgr, vis_bgr in zip(ir_frames, vis_frames):
        y, bgr = visible_input(vis_bgr)
        out.append(fuse_arrays(fuser, ir_input(ir_bgr), y, bgr))
    return out


def as_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


# --------------------------------------------------------------------------------------------------------------
# Fusing streams
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["max", "mean", "ir"])
def test_frame_folders_fuse_exactly_as_image_by_image(clips, tmp_path, rule):
    fuser = create_fuser(rule)
    report = fuse_video(fuser, clips["ir_dir"], clips["vis_dir"], tmp_path / "out", VideoConfig(batch_size=4))
    outputs = sorted((tmp_path / "out").iterdir())
    assert report.frames == FRAMES and [p.name for p in outputs] == [f"{i:05d}.png" for i in range(FRAMES)]
    for path in outputs:
        pair = Pair(path.stem, clips["ir_dir"] / path.name, clips["vis_dir"] / path.name)
        assert np.array_equal(read_image(path), fuse_pair(fuser, pair))
    assert report.frames_per_second > 0 and set(report.seconds) == {"check", "read", "fuse", "write", "total"}


def test_lossless_video_matches_image_by_image_fusion(clips, tmp_path):
    """FFV1 (.mkv) is lossless both ways, so the fused video's frames equal fusing the original frames exactly."""
    fuser = create_fuser("max")
    report = fuse_video(fuser, clips["ir_mkv"], clips["vis_mkv"], tmp_path / "fused.mkv")
    ir, vis = scene()
    expected = expected_from_frames(fuser, [as_bgr(f) for f in ir], vis)
    got = decode(tmp_path / "fused.mkv")
    capture = cv2.VideoCapture(str(tmp_path / "fused.mkv"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert report.frames == len(got) == FRAMES and got[0].shape == (H, W, 3)
    assert all(np.array_equal(g, as_bgr(e)) for g, e in zip(got, expected))


def test_lossy_video_matches_fusing_the_decoded_frames(clips, tmp_path):
    """mp4v is lossy: the reference is the fusion of the DECODED input frames. Into a frame folder that is exact;
    into an mp4 it is exact too once the reference goes through the same encoder (deterministic: the same frames
    encode to the same bytes), so no tolerance is needed."""
    fuser = create_fuser("mean")
    expected = expected_from_frames(fuser, decode(clips["ir_mp4"]), decode(clips["vis_mp4"]))
    fuse_video(fuser, clips["ir_mp4"], clips["vis_mp4"], tmp_path / "frames")
    frames = sorted((tmp_path / "frames").iterdir())
    assert [p.stem for p in frames] == [f"{i:06d}" for i in range(FRAMES)]
    assert all(np.array_equal(read_image(p), e) for p, e in zip(frames, expected))

    fuse_video(fuser, clips["ir_mp4"], clips["vis_mp4"], tmp_path / "fused.mp4")
    got = decode(tmp_path / "fused.mp4")
    reference = decode(write_video(tmp_path / "reference.mp4", [as_bgr(e) for e in expected], fourcc="mp4v"))
    assert len(got) == FRAMES and got[0].shape == (H, W, 3)
    assert all(np.array_equal(g, r) for g, r in zip(got, reference))


def test_dae_fuse_batch_equals_image_by_image(checkpoint, clips, tmp_path, monkeypatch):
    fuser = load_fuser_checkpoint(checkpoint)
    ir, vis = scene()
    irs = [f.astype(np.float32) for f in ir]
    vis_ys = [visible_input(f)[0] for f in vis]
    batch = fuser.fuse_luma_batch(irs, vis_ys)
    single = np.stack([fuser.fuse_luma(a, b) for a, b in zip(irs, vis_ys)])
    assert batch.shape == (FRAMES, H, W) and batch.dtype == np.float32
    assert np.abs(batch - single).max() < 1e-2  # float rounding only: far below one grey level

    calls = []
    batched = fuser.fuse_luma_batch
    monkeypatch.setattr(fuser, "fuse_luma_batch", lambda a, b: calls.append(len(a)) or batched(a, b))
    monkeypatch.setattr(fuser, "fuse_luma", lambda *a: pytest.fail("the video path fused frame by frame"))
    fuse_video(fuser, clips["ir_dir"], clips["vis_dir"], tmp_path / "out", VideoConfig(batch_size=4))
    assert calls == [4, 2]
    monkeypatch.undo()
    for path in sorted((tmp_path / "out").iterdir()):
        pair = Pair(path.stem, clips["ir_dir"] / path.name, clips["vis_dir"] / path.name)
        diff = np.abs(read_image(path).astype(int) - fuse_pair(fuser, pair).astype(int))
        assert diff.max() <= 1, f"{path.name}: {diff.max()} grey levels from image-by-image fusion"


def test_counts_and_rates_within_tolerance_pair_on_timestamps(clips, tmp_path):
    ir, vis = scene(n=12)
    fuser = create_fuser("max")
    # one visible frame more (within count_tolerance): the extra frame is left out
    vis7 = write_video(tmp_path / "vis7.mkv", vis[:7])
    assert fuse_video(fuser, clips["ir_mkv"], vis7, tmp_path / "a.mkv").frames == FRAMES
    # visible at twice the rate: frame i of the (slower) infrared goes with visible frame 2i
    vis20 = write_video(tmp_path / "vis20.mkv", vis, fps=2 * FPS)
    report = fuse_video(fuser, clips["ir_mkv"], vis20, tmp_path / "b", VideoConfig(fps_tolerance=1.0))
    expected = expected_from_frames(fuser, [as_bgr(f) for f in ir[:FRAMES]], vis[::2])
    got = [read_image(p) for p in sorted((tmp_path / "b").iterdir())]
    assert report.frames == FRAMES and report.fps == FPS and "ir timeline" in report.pairing
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_folders_without_shared_stems_pair_by_order(clips, tmp_path):
    ir, vis = scene()
    ir_dir = write_folder(tmp_path / "thermal", ir, prefix="ir_")
    vis_dir = write_folder(tmp_path / "rgb", vis, prefix="vis_")
    fuser = create_fuser("max")
    fuse_video(fuser, ir_dir, vis_dir, tmp_path / "out")
    for i, path in enumerate(sorted((tmp_path / "out").iterdir())):
        assert path.name == f"ir_{i:05d}.png"
        assert np.array_equal(read_image(path), fuse_pair(fuser, Pair("x", clips["ir_dir"] / f"{i:05d}.png",
                                                                       clips["vis_dir"] / f"{i:05d}.png")))


# --------------------------------------------------------------------------------------------------------------
# Bad inputs: one error naming every problem, before any fusing; nothing half-written
# --------------------------------------------------------------------------------------------------------------

def no_fusing(*args):
    pytest.fail("fused although the inputs were bad")


def test_mismatched_count_size_and_rate_are_one_error(clips, tmp_path, monkeypatch):
    monkeypatch.setattr("fusion.video.streaming.fuse_batch", no_fusing)
    _, vis = scene(n=9, size=(32, 24))
    other = write_video(tmp_path / "other.mkv", vis, fps=25.0)
    with pytest.raises(DatasetError) as err:
        fuse_video(create_fuser("max"), clips["ir_mkv"], other, tmp_path / "out.mp4")
    text = str(err.value)
    assert len(err.value.problems) == 3
    assert "frame sizes differ" in text and "64x48" in text and "32x24" in text
    assert "frame rates differ: ir 10 fps, vis 25 fps" in text
    assert "durations differ" in text
    assert list(tmp_path.iterdir()) == [other]


def test_count_beyond_tolerance(clips, tmp_path):
    _, vis = scene(n=9)
    with pytest.raises(DatasetError, match=r"durations differ: ir 6 frames at 10 fps, vis 9 frames at 10 fps \(3 "):
        fuse_video(create_fuser("max"), clips["ir_mkv"], write_video(tmp_path / "v.mkv", vis), tmp_path / "o.mkv")


def test_unreadable_missing_and_empty_sources(clips, tmp_path):
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        fuse_video(create_fuser("max"), tmp_path / "broken.mp4", tmp_path / "empty", tmp_path / "out")
    assert len(err.value.problems) == 2
    assert "cannot open" in err.value.problems[0] and "broken.mp4" in err.value.problems[0]
    assert err.value.problems[1] == f"no image frames in {tmp_path / 'empty'}"
    with pytest.raises(DatasetError, match="source does not exist"):
        fuse_video(create_fuser("max"), tmp_path / "nope.mkv", clips["vis_mkv"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_frame_and_output_paths(clips, tmp_path):
    ir_dir = tmp_path / "ir"
    ir_dir.mkdir()
    for path in clips["ir_dir"].iterdir():
        (ir_dir / path.name).write_bytes(path.read_bytes())
    (ir_dir / "00003.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as err:
        fuse_video(create_fuser("max"), ir_dir, clips["vis_dir"], tmp_path / "x.webm")
    assert any("unreadable frame" in p and "00003.png" in p for p in err.value.problems)
    assert any("unknown video extension '.webm'" in p for p in err.value.problems)
    with pytest.raises(DatasetError, match="would replace the source"):
        fuse_video(create_fuser("max"), clips["ir_dir"], clips["vis_dir"], clips["vis_dir"])


def test_a_failure_midway_leaves_nothing(clips, tmp_path):
    class Breaks:
        name, keeps_visible_chroma, calls = "breaks", True, 0

        def fuse_luma(self, ir, vis):
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("boom")
            return ir

        def cache_key(self):
            return "breaks"

    for out in (tmp_path / "out.mkv", tmp_path / "frames"):
        with pytest.raises(RuntimeError, match="boom"):
            fuse_video(Breaks(), clips["ir_mkv"], clips["vis_mkv"], out, VideoConfig(batch_size=2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overlap_io", [True, False])
def test_a_video_shorter_than_declared_is_an_error(clips, tmp_path, monkeypatch, overlap_io):
    """A container may declare more frames than its stream holds: found when reading, and nothing is written."""
    import dataclasses

    import fusion.video.sources

    probe = fusion.video.sources._probe_video
    monkeypatch.setattr(fusion.video.sources, "_probe_video",
                        lambda path, problems: dataclasses.replace(probe(path, problems), frames=FRAMES + 2))
    with pytest.raises(VideoStreamError, match=r"ended after 6 of its 8 declared frames"):
        fuse_video(create_fuser("max"), clips["ir_mkv"], clips["vis_mkv"], tmp_path / "o.mkv",
                   VideoConfig(overlap_io=overlap_io, batch_size=4))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------

def test_cli_video_mode(clips, tmp_path, capsys, checkpoint):
    out = tmp_path / "fused.avi"
    assert video_main(["--baseline", "max", "--ir", str(clips["ir_mkv"]), "--vis", str(clips["vis_mkv"]),
                 "--out", str(out), "--temporal"]) == 0
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "flicker" in printed and len(decode(out)) == FRAMES
    assert video_main(["--checkpoint", str(checkpoint), "--ir", str(clips["ir_dir"]),
                 "--vis", str(clips["vis_dir"]), "--out", str(tmp_path / "dae"), "--batch-size", "3"]) == 0
    assert len(list((tmp_path / "dae").iterdir())) == FRAMES
    assert video_main(["--baseline", "max", "--ir", str(tmp_path / "missing.mp4"),
                 "--vis", str(tmp_path / "empty"), "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "missing.mp4" in err and "empty" in err


# --------------------------------------------------------------------------------------------------------------
# The stabilised streaming fuser
# --------------------------------------------------------------------------------------------------------------

class Shimmering:
    """The mean of the sources plus fresh noise on every call: a fuser that flickers where the sources are still."""

    name, keeps_visible_chroma = "shimmer", True

    def __init__(self, amplitude: float = 3.0):
        self.rng, self.amplitude = np.random.default_rng(0), amplitude

    def fuse_luma(self, ir, vis_y):
        noise = self.rng.uniform(-self.amplitude, self.amplitude, ir.shape).astype(np.float32)
        return np.clip((ir + vis_y) / 2 + noise, 0, 255)


def test_stabiliser_first_frame_is_the_fuser_and_still_noise_falls():
    ir, vis = (frames_[0].astype(np.float32) for frames_ in static_sources(1))
    raw, stable = Shimmering(), StabilisedFuser(Shimmering(), StabiliserConfig(weight=0.5))
    first = stable.fuse_luma(ir, vis)
    assert np.array_equal(first, raw.fuse_luma(ir, vis))  # same noise stream: the first frame is the fuser's
    outputs = [raw.fuse_luma(ir, vis) for _ in range(8)], [stable.fuse_luma(ir, vis) for _ in range(8)]
    spread = [np.std(np.diff(np.stack(o), axis=0)) for o in outputs]
    assert spread[1] < 0.75 * spread[0]  # recursive blending of a still scene: less frame-to-frame change


@pytest.mark.parametrize("flow_scale", [1.0, 0.5])
def test_stabiliser_clamp_removes_flicker_and_follows_motion(flow_scale):
    """A still visible scene and an infrared blob moving 3 px a frame: the clamped output stops shimmering where
    both are still and still moves with the blob."""
    rng = np.random.default_rng(3)
    still = rng.uniform(40, 200, (H, W)).astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    irs = [np.round(np.clip(30 + 200 * np.exp(-((xx - 10 - 3 * i) ** 2 + (yy - H / 2) ** 2) / 60), 0, 255))
           for i in range(8)]
    vis_y = [np.round(still)] * 8
    stable = StabilisedFuser(Shimmering(), StabiliserConfig(weight=0.5, clamp=0.0, flow_scale=flow_scale))
    fused = [stable.fuse_luma(a, b) for a, b in zip(irs, vis_y)]
    assert all(f.shape == (H, W) for f in fused)
    shimmer = Shimmering()
    raw = [shimmer.fuse_luma(a, b) for a, b in zip(irs, vis_y)]
    metrics = [evaluate_temporal(f, irs, vis_y) for f in (raw, fused)]
    assert metrics[0]["flicker"] > 1.0 and metrics[1]["flicker"] < 0.05
    moving = np.abs(irs[-1] - irs[0]) > 20  # where the blob was or came: the output follows it there
    assert np.abs(fused[-1] - fused[0])[moving].mean() > 0.5 * np.abs(irs[-1] - irs[0])[moving].mean() / 2
    mean = create_fuser("mean")
    stable = StabilisedFuser(mean, StabiliserConfig(weight=0.5, clamp=0.0))
    stable.fuse_luma(irs[0], vis_y[0])
    stable.reset()  # a new stream: its first frame is the fuser's own again, nothing carried over
    assert np.array_equal(stable.fuse_luma(irs[7], vis_y[7]), mean.fuse_luma(irs[7], vis_y[7]))
    with pytest.raises(ValueError, match="weight must be in.*flow_scale must be in"):
        StabiliserConfig(weight=1.0, flow_scale=2.0)


def test_cli_stabilise_and_sudden_change(clips, tmp_path, capsys):
    out = tmp_path / "stable"
    assert video_main(["--baseline", "mean", "--ir", str(clips["ir_dir"]), "--vis", str(clips["vis_dir"]),
                 "--out", str(out), "--stabilise", "0.5", "--temporal", "--sudden-change", str(tmp_path / "sc"),
                 "--change-frame", "3"]) == 0
    printed = capsys.readouterr().out
    assert "flicker" in printed and "sudden change" in printed and len(list(out.iterdir())) == FRAMES
    assert (tmp_path / "sc" / "sudden_change.png").is_file()
    assert "| 3 (given) |" in (tmp_path / "sc" / "sudden_change.md").read_text()


# --------------------------------------------------------------------------------------------------------------
# Temporal metrics: known answers
# --------------------------------------------------------------------------------------------------------------

def static_sources(t: int = 6):
    rng = np.random.default_rng(0)
    ir, vis = rng.integers(0, 200, (H, W)).astype(np.uint8), rng.integers(0, 200, (H, W)).astype(np.uint8)
    return [ir] * t, [vis] * t


def test_registry_and_conventions():
    assert TEMPORAL_METRICS.names() == ["flicker", "temporal_correlation"]
    assert all("ours" in line for line in conventions().values())


def test_static_scene():
    ir, vis = static_sources()
    fused = [np.maximum(a, b) for a, b in zip(ir, vis)]
    assert evaluate_temporal(fused, ir, vis) == {"flicker": 0.0, "temporal_correlation": 1.0}


@pytest.mark.parametrize("k, expected", [(2, 2 * 10 / 5), (5, 10 / 5)])
def test_one_flickering_frame(k, expected):
    ir, vis = static_sources()
    fused = [np.maximum(a, b) for a, b in zip(ir, vis)]
    fused[k] = fused[k] + np.uint8(10)  # the sources stay still: every fused change is flicker
    values = evaluate_temporal(fused, ir, vis)
    assert values["flicker"] == pytest.approx(expected)
    assert values["temporal_correlation"] == 0.0


def test_following_the_sources():
    ir, vis = scene()
    vis_y = [np.round(visible_input(v)[0]) for v in vis]
    # the fused video is the infrared one: all its changes are explained (TC 1) and none exceeds the sources'
    assert evaluate_temporal(ir, ir, vis_y) == {"flicker": 0.0, "temporal_correlation": 1.0}
    mean = evaluate_temporal([(a.astype(np.float32) + b) / 2 for a, b in zip(ir, vis_y)], ir, vis_y)
    assert mean["temporal_correlation"] > 0.99 and mean["flicker"] < 0.5  # rounding of .5 only
    # a fused video frozen while the sources move follows nothing
    frozen = evaluate_temporal([ir[0]] * FRAMES, ir, vis_y)
    assert frozen == {"flicker": 0.0, "temporal_correlation": 0.0}


def test_sequence_checks():
    ir, vis = static_sources(3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        evaluate_temporal(ir[:1], ir[:1], vis[:1])
    with pytest.raises(ValueError, match="differ in length"):
        evaluate_temporal(ir, ir, vis[:2])
    with pytest.raises(ValueError, match="sizes differ"):
        TemporalStats().add(ir[0], ir[0][:10], vis[0])


def test_evaluate_sequences_averages_runs(tmp_path):
    ir, vis = static_sources()
    fused = [np.maximum(a, b) for a, b in zip(ir, vis)]
    fused[2] = fused[2] + np.uint8(10)
    paths = []
    for i, images in enumerate(zip(fused, ir, vis)):
        triple = tuple(tmp_path / f"{kind}_{i}.png" for kind in ("f", "a", "b"))
        for path, image in zip(triple, images):
            write_image(path, image)
        paths.append(triple)
    flickering, still, single = paths[:6], [paths[0], paths[1]], [paths[3]]
    mean = evaluate_sequences([flickering, still, single])
    assert mean == {"flicker": pytest.approx((4.0 + 0.0) / 2), "temporal_correlation": pytest.approx(0.5)}
    assert evaluate_sequences([single]) == {}
    with pytest.raises(DatasetError) as err:
        evaluate_sequences([[paths[0], (tmp_path / "x.png", tmp_path / "y.png", paths[0][2])]])
    assert len(err.value.problems) == 2


def test_video_temporal_metrics_match_the_written_frames(clips, tmp_path):
    report = fuse_video(create_fuser("max"), clips["ir_dir"], clips["vis_dir"], tmp_path / "out",
                        VideoConfig(temporal=True))
    run = [(tmp_path / "out" / p.name, p, clips["vis_dir"] / p.name) for p in sorted(clips["ir_dir"].iterdir())]
    assert report.temporal == pytest.approx(evaluate_sequences([run]))
    assert read_gray_reference(run[0][0]).shape == (H, W)
    # --flow adds VF-Bench's flow metrics, streamed as the frames are written, equal to scoring the written files
    with_flow = fuse_video(create_fuser("max"), clips["ir_dir"], clips["vis_dir"], tmp_path / "flow",
                           VideoConfig(temporal=True, flow="farneback"))
    run = [(tmp_path / "flow" / p.name, p, clips["vis_dir"] / p.name) for p in sorted(clips["ir_dir"].iterdir())]
    assert set(with_flow.temporal) == set(report.temporal) | {"biswe", "ms2r"}
    assert with_flow.temporal == pytest.approx(evaluate_sequences([run], flow="farneback"))


def test_consecutive_runs():
    assert consecutive_runs(["00003", "00001", "00002", "00007", "x"]) == [["00001", "00002", "00003"], ["00007"],
                                                                           ["x"]]


def test_the_batched_path_gives_a_fuser_the_same_whole_number_lumas_as_the_frame_path():
    """A fuser with ``fuse_luma_batch`` (DAE-Fuse on video) receives the visible luma rounded, as ``fuse_pair``
    and the frame-by-frame path give it (the documented value domain), not the colour conversion's fractions."""
    from fusion.video.streaming import _Batch, fuse_batch

    seen = []

    class Recording:
        name, keeps_visible_chroma = "recording", True

        def fuse_luma(self, ir, vis_y):
            return ir

        def fuse_luma_batch(self, irs, vis_ys):
            seen.extend([*irs, *vis_ys])
            return list(irs)

    rng = np.random.default_rng(0)
    batch = _Batch(irs=[rng.integers(0, 256, (8, 8)).astype(np.float32) for _ in range(2)],
                   vis_ys=[rng.uniform(0, 255, (8, 8)).astype(np.float32) for _ in range(2)],
                   vis_bgrs=[None, None])
    assert any(np.any(y != np.round(y)) for y in batch.vis_ys)  # the input really has fractions
    fuse_batch(Recording(), batch)
    assert len(seen) == 4 and all(np.array_equal(a, np.round(a)) for a in seen)
