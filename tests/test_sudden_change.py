"""Sudden changes of visibility (fusion.video.sudden_change): time profiles, change detection, the report and its
files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.errors import DatasetError
from data.io import write_image
from data.shared import SHARED_DATA
from fusion.fusers.catalog import create_fuser
from fusion.video.sudden_change import (
    ChangeSequence,
    TimeVaryingCorruption,
    detect_change,
    parse_corruption,
    sudden_change_report,
)

W, H, N = 64, 48, 8


def frames(folder: Path, n: int = N, moving: bool = False) -> tuple[Path, Path]:
    """n frames of a textured still (or slowly moving) scene: grey infrared, colour visible, as PNG folders."""
    rng = np.random.default_rng(0)
    texture = rng.uniform(40, 200, (H, W + n)).astype(np.float32)
    ir_dir, vis_dir = folder / "ir", folder / "vis"
    for i in range(n):
        view = texture[:, i:i + W] if moving else texture[:, :W]
        write_image(ir_dir / f"{i:04d}.png", np.round(255 - view).astype(np.uint8))
        write_image(vis_dir / f"{i:04d}.png", np.dstack([view, view * 0.8, view * 0.6]).astype(np.uint8))
    return ir_dir, vis_dir


def test_time_profiles():
    switch = TimeVaryingCorruption("fog", "switch", start=3)
    ramp = TimeVaryingCorruption("fog", "ramp", start=2, duration=4)
    flash = TimeVaryingCorruption("glare", "flash", start=1, duration=2)
    assert [switch.strength(t) for t in range(5)] == [0, 0, 0, 1, 1]
    assert [ramp.strength(t) for t in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert [flash.strength(t) for t in range(8)] == [0, 1, 1, 0, 0, 1, 1, 0]
    assert parse_corruption("fog:ramp:30:20:2", "k") == TimeVaryingCorruption("fog", "ramp", 30, 20, 2, key="k")


def test_corruption_blends_with_a_fixed_pattern():
    """Strength 0 is the clean frame; a ramp blends towards one corrupted image drawn with a fixed key, so the
    fog's pattern does not change between frames of one strength."""
    rng = np.random.default_rng(1)
    ir = rng.integers(0, 255, (H, W), dtype=np.uint8)
    vis = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    fog = TimeVaryingCorruption("fog", "ramp", start=0, duration=2)
    assert TimeVaryingCorruption("fog", "switch", start=5).apply(0, ir, vis)[1] is vis
    half, full = fog.apply(0, ir, vis)[1], fog.apply(1, ir, vis)[1]
    assert np.array_equal(fog.apply(1, ir, vis)[1], full)  # same key, same strength: the same pixels
    assert np.array_equal(fog.apply(0, ir, vis)[0], ir)  # fog never reaches the thermal camera
    gap = np.abs(full.astype(int) - vis).mean()
    assert gap > 5 and 0.3 * gap < np.abs(half.astype(int) - vis).mean() < 0.7 * gap


def test_detect_change_finds_where_detail_falls():
    rng = np.random.default_rng(2)
    sharp = rng.uniform(0, 255, (H, W)).astype(np.float32)
    seq = [sharp] * 12 + [np.full((H, W), 120, np.float32)] * 12
    assert detect_change(seq, smooth=3) == 12


def test_report_on_a_fog_switch(tmp_path):
    ir, vis = frames(tmp_path)
    seq = ChangeSequence("still", ir, vis, corruption=TimeVaryingCorruption("fog", "switch", start=4, key="still"))
    result = sudden_change_report([seq], {"max": create_fuser("max"), "ir": create_fuser("ir")}, tmp_path / "out",
                                  metrics=("SD", "Qabf"), flow="dis_fast", window=3)
    assert result.plot.stat().st_size > 1000 and result.plot.read_bytes()[:4] == b"\x89PNG"
    assert len(result.frames) == 2 * N and [r.offset for r in result.frames[:N]] == list(range(-4, N - 4))
    by = {s.fuser: s for s in result.summaries}
    assert by["max"].change_frame == 4 and by["max"].change_source == "corruption"
    # The infrared copy ignores the visible camera: its frames, against the clean sources, do not change at all.
    assert by["ir"].before["Qabf@clean"] == pytest.approx(by["ir"].after["Qabf@clean"])
    assert by["ir"].flicker_around == 0
    # max follows the fogged visible pixels: its frames change at the switch and only there (one fog pattern on a
    # still scene), and never more than the visible source changed (no flicker).
    qabf = [r.metrics["Qabf@clean"] for r in result.frames if r.fuser == "max"]
    assert len(set(qabf[:4])) == 1 and len(set(qabf[4:])) == 1 and abs(qabf[4] - qabf[3]) > 0.01
    assert by["max"].flicker_around < 0.01
    # A still scene: nothing moves before the change, so the warping error there is (near) zero.
    assert by["max"].warp_before < 0.5
    saved = json.loads(result.json.read_text())
    assert len(saved["frames"]) == 2 * N and saved["config"]["window"] == 3
    assert "| still | max | 4 (corruption) |" in result.table.read_text()


def test_every_problem_before_any_fusing(tmp_path):
    ir, vis = frames(tmp_path, n=3)
    bad = [ChangeSequence("a", tmp_path / "missing", vis),
           ChangeSequence("b", ir, vis, frames=10, corruption=TimeVaryingCorruption("smog", "pulse", severity=7))]
    with pytest.raises(DatasetError) as err:
        sudden_change_report(bad, {"max": create_fuser("max")}, tmp_path / "out")
    text = str(err.value)
    for piece in ("missing", "unknown corruption 'smog'", "unknown time profile 'pulse'", "severity", "b: needs"):
        assert piece in text
    with pytest.raises(DatasetError, match="unknown metric 'XYZ'"):
        sudden_change_report(bad, {"max": create_fuser("max")}, tmp_path / "out", metrics=("XYZ",))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (SHARED_DATA / "m3fd_sample" / "Ir" / "00000.png").is_file(),
                    reason="needs the shared M3FD sample (../shared/data/m3fd_sample)")
def test_m3fd_consecutive_frames_with_glare(tmp_path):
    root = SHARED_DATA / "m3fd_sample"
    seq = ChangeSequence("m3fd", root / "Ir", root / "Vis", stems=("00000", "00001", "00002"),
                         corruption=TimeVaryingCorruption("glare", "switch", start=1, key="m3fd"))
    result = sudden_change_report([seq], {"ir": create_fuser("ir")}, tmp_path, metrics=("SD",), flow=None,
                                  window=1, plot_metric="SD")
    assert [r.frame for r in result.frames] == [0, 1, 2] and result.frames[1].strength == 1.0
    assert result.frames[1].warp_error is None and result.frames[1].flicker == 0
