"""Flow-based temporal metrics (fusion.video.flow: VF-Bench's BiSWE and MS2R) on tiny sequences with known answers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.io import write_image
from fusion.video.flow import FLOW_ESTIMATORS, FLOW_METRICS, FlowStats, consistent, resolve_flow
from fusion.video.temporal import (
    TEMPORAL_METRICS,
    TemporalStats,
    evaluate_sequences,
    evaluate_temporal,
    flow_stats,
    main,
    temporal_metric_names,
)

SIZE = 96
FRAMES = 6


def texture(seed: int, size: int = 160) -> np.ndarray:
    """Smooth random texture (blurred noise, 20..220): enough structure everywhere for a patch-based flow."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.round(20 + 200 * smooth)


def panning(image: np.ndarray, offsets: list[int]) -> list[np.ndarray]:
    """Frames of a camera panning over ``image``: frame i is the crop starting ``offsets[i]`` columns in, so the
    content moves ``offsets[i-1] - offsets[i]`` pixels in x from frame i-1 to frame i."""
    return [image[20:20 + SIZE, 20 + o:20 + o + SIZE].copy() for o in offsets]


def moving_sources(step: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    offsets = [step * i for i in range(FRAMES)]
    return panning(texture(0), offsets), panning(texture(1), offsets)


def fused_max(ir, vis):
    return [np.maximum(a, b) for a, b in zip(ir, vis)]


def flow_of(fused, ir, vis, estimator="dis") -> FlowStats:
    stats = TemporalStats.of(fused, ir, vis, flow=estimator)
    return stats.flow


def test_flow_metrics_are_opt_in_and_listed_after_the_others():
    assert FLOW_METRICS.names() == ["biswe", "ms2r"] and {"dis", "dis_fast", "farneback"} <= set(FLOW_ESTIMATORS)
    assert temporal_metric_names(flow=True) == TEMPORAL_METRICS.names() + ["biswe", "ms2r"]
    ir, vis = moving_sources()
    assert list(evaluate_temporal(fused_max(ir, vis), ir, vis)) == TEMPORAL_METRICS.names()
    assert list(evaluate_temporal(fused_max(ir, vis), ir, vis, flow="dis")) == temporal_metric_names(flow=True)


def test_static_scene_has_no_warping_error():
    ir, vis = [texture(0)[:SIZE, :SIZE]] * 4, [texture(1)[:SIZE, :SIZE]] * 4
    values = evaluate_temporal(fused_max(ir, vis), ir, vis, flow="dis")
    assert values["biswe"] == pytest.approx(0.0, abs=1e-3) and values["ms2r"] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("estimator", ["dis", "farneback"])
def test_a_known_shift_followed_exactly_warps_without_error(estimator):
    ir, vis = moving_sources(step=2)  # content moves 2 px per frame to the left in both sources
    flow = flow_of(fused_max(ir, vis), ir, vis, estimator)
    values = flow.values()
    assert values["biswe"] < 0.25  # grey levels; bilinear interpolation of sub-pixel flow errors only
    assert values["ms2r"] < 0.05  # px per frame^2: the fused motion changes exactly as the sources' (not at all)
    assert min(flow.kept) > 0.8  # the sources' masks drop the strip that leaves the frame, little else
    # the same shift warped with no flow at all would be far off: the metric sees the motion
    zero = flow_of(fused_max(ir, vis), ir, vis, lambda a, b: np.zeros((*a.shape, 2), np.float32)).values()
    assert zero["biswe"] > 10 * max(values["biswe"], 0.5)


@pytest.mark.parametrize("moving", [False, True])
def test_one_flickering_frame_is_found_in_time(moving):
    k, d = 3, 20
    ir, vis = moving_sources() if moving else ([texture(0)[:SIZE, :SIZE]] * FRAMES, [texture(1)[:SIZE, :SIZE]] * FRAMES)
    steady = fused_max(ir, vis)
    fused = list(steady)
    fused[k] = fused[k] + d  # brightened by d grey levels, the sources unchanged
    flow = flow_of(fused, ir, vis)
    per_frame = flow.per_frame()
    assert int(np.argmax(per_frame["biswe"])) + 1 == k  # index t-1 holds centre frame t
    assert sorted(np.argsort(per_frame["step_error"])[-2:] + 1) == [k, k + 1]  # the two steps into and out of k
    assert flow.values()["biswe"] > 5 * flow_of(steady, ir, vis).values()["biswe"] + 1
    # e = d on each step into or out of frame k, up to the flow's small error on the brightened frame
    assert per_frame["biswe"][k - 1] == pytest.approx(2 * d, abs=0.5)
    assert per_frame["biswe"][k - 2] == pytest.approx(d, abs=0.5)
    assert per_frame["biswe"][k] == pytest.approx(d, abs=0.5)


def test_motion_unlike_the_sources_scores_worse_on_ms2r():
    ir, vis = moving_sources(step=1)  # a steady pan
    following = fused_max(ir, vis)
    big = np.maximum(texture(0), texture(1))
    shaky = panning(big, [0, 3, 2, 6, 4, 8])  # same scene, but the fused view jumps back and forth
    good, bad = (flow_of(f, ir, vis).values()["ms2r"] for f in (following, shaky))
    assert good < 0.1 and bad > 1.0
    # documented blind spot: a second difference cannot see a constant speed difference (TC does)
    frozen = [following[0]] * FRAMES
    values = evaluate_temporal(frozen, ir, vis, flow="dis")
    assert values["ms2r"] < 0.1 and values["temporal_correlation"] == 0.0


def test_a_plugged_in_flow_is_used():
    calls = []

    def zero_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        calls.append((first.shape, first.dtype))
        return np.zeros((*first.shape, 2), np.float32)

    ir, vis = moving_sources()
    evaluate_temporal(fused_max(ir, vis), ir, vis, flow=zero_flow)
    assert len(calls) == 6 * (FRAMES - 1)  # fused, ir, vis, both directions, per step
    assert set(calls) == {((SIZE, SIZE), np.dtype(np.uint8))}
    assert resolve_flow(zero_flow) is zero_flow
    assert callable(resolve_flow("fusion.video.flow:farneback"))  # a package.module:factory path
    with pytest.raises(KeyError, match="known: dis"):
        flow_stats("sea_raft")


def test_masks_come_from_the_sources():
    h = w = 16
    still = np.zeros((h, w, 2), np.float32)
    assert consistent(still, still).all()
    out = still.copy()
    out[..., 0] = w  # every target beyond the right edge: nothing to warp from
    assert not consistent(out, -out).any()
    # fused frames that change where the sources' flows disagree (occluded) are not counted
    ir, vis = moving_sources()
    stats = FlowStats(estimator=lambda a, b: np.zeros((*a.shape, 2), np.float32), threshold=-1.0)  # masks empty
    for frame in zip([f + 30 * (i % 2) for i, f in enumerate(fused_max(ir, vis))], ir, vis):
        stats.add(*frame)
    assert stats.values()["biswe"] == 0.0 and max(stats.kept) == 0.0


def test_sequences_and_cli_report_flow_metrics(tmp_path, capsys):
    ir, vis = moving_sources()
    fused = fused_max(ir, vis)
    fused[2] = fused[2] + 25
    folders = {kind: tmp_path / kind for kind in ("fused", "ir", "vis")}
    run = []
    for i, images in enumerate(zip(fused, ir, vis)):
        triple = tuple(folders[kind] / f"{i:03d}.png" for kind in folders)
        for path, image in zip(triple, images):
            path.parent.mkdir(exist_ok=True)
            write_image(path, image.astype(np.uint8))
        run.append(triple)
    mean = evaluate_sequences([run], flow="dis")
    assert list(mean) == temporal_metric_names(flow=True)
    assert mean == pytest.approx(evaluate_temporal(fused, ir, vis, flow="dis"), abs=1e-6)
    assert main(["--fused", str(folders["fused"]), "--ir", str(folders["ir"]), "--vis", str(folders["vis"]),
                 "--frames", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("5 frames;") and "biswe" in printed and "BiSWE peaks (frame: value): 2:" in printed
    assert main(["--fused", str(folders["fused"]), "--ir", str(folders["ir"]), "--vis", str(folders["vis"]),
                 "--flow", "nope"]) == 2
