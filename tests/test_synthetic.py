"""Built-in synthetic M3FD-layout data (data/synthetic.py): layout, determinism, reuse, and that the scenes
make fusion matter (IR-bright people that are dim in night visible, lamps bright in visible and absent in IR)."""
from __future__ import annotations

import dataclasses
import json
import warnings
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.io import read_ir, read_visible
from data.m3fd import DatasetWarning, load_m3fd
from data.splits import labels_crossing_splits
from data.synthetic import PARAMS_FILE, README_FILE, generate_synthetic_m3fd, main, make_scene, render_frame

SCENES, FRAMES = 6, 3  # two scenes of each scenario, 18 frames of 320x256


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return generate_synthetic_m3fd(tmp_path_factory.mktemp("syn") / "m3fd", num_scenes=SCENES, frames_per_scene=FRAMES, seed=7)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_read_by_load_m3fd_without_any_problem(synthetic_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        ds = load_m3fd(synthetic_root)
    assert len(ds.ids) == SCENES * FRAMES and ds.ids[0] == "00000"
    assert ds.split_info["method"] == "meta-lists" and all(ds.splits.values())
    assert sum(len(v) for v in ds.splits.values()) == len(ds.ids)
    assert {ds.scenario_of(i) for i in ds.ids} == {"night", "daytime", "overcast"}
    assert len({ds.scene_of(i) for i in ds.ids}) == SCENES
    assert labels_crossing_splits(ds.splits, {i: ds.scene_of(i) for i in ds.ids}) == {}  # scenes kept whole
    ir, vis = read_ir(ds.ir_path("00000")), read_visible(ds.vis_path("00000"))[1]
    assert ir.shape == (256, 320) and vis is not None and vis.shape == (256, 320, 3)  # grey IR, colour visible
    heights = [b.height for i in ds.ids for b in ds.annotation(i).boxes]
    assert min(heights) >= 12 and max(b.width for i in ds.ids for b in ds.annotation(i).boxes) <= 110
    per_image = [len(ds.annotation(i).boxes) for i in ds.ids]
    assert min(per_image) >= 1 and np.mean(per_image) >= 3
    readme = (synthetic_root / README_FILE).read_text()
    assert "SYNTHETIC" in readme and "not M3FD" in readme
    assert json.loads((synthetic_root / PARAMS_FILE).read_text())["synthetic"] is True


def test_consecutive_frames_are_near_duplicates(synthetic_root):
    a, b = (read_ir(synthetic_root / "Ir" / f"0000{k}.png").astype(float) for k in (0, 1))
    other_scene = read_ir(synthetic_root / "Ir" / f"{FRAMES:05d}.png").astype(float)
    assert np.abs(a - b).mean() < 0.3 * np.abs(a - other_scene).mean()


def box_means(ds, image_id: str, box, pad: int = 6) -> dict[str, tuple[float, float]]:
    """(mean inside the box, inside minus the ring around it) for IR and visible luma."""
    ir = read_ir(ds.ir_path(image_id)).astype(np.float64)
    luma = read_visible(ds.vis_path(image_id))[0].astype(np.float64)
    x0, y0, x1, y1 = int(box.xmin) - 1, int(box.ymin) - 1, int(box.xmax), int(box.ymax)
    X0, Y0, X1, Y1 = max(0, x0 - pad), max(0, y0 - pad), min(ir.shape[1], x1 + pad), min(ir.shape[0], y1 + pad)
    out = {}
    for name, img in (("ir", ir), ("vis", luma)):
        inner, outer = img[y0:y1, x0:x1], img[Y0:Y1, X0:X1]
        ring = (outer.sum() - inner.sum()) / (outer.size - inner.size)
        out[name] = (inner.mean(), inner.mean() - ring)
    return out


def fusion_stats(ds) -> dict[tuple[str, str], list[dict]]:
    stats: dict[tuple[str, str], list] = defaultdict(list)
    for image_id in ds.ids:
        for box in ds.annotation(image_id).boxes:
            stats[(ds.scenario_of(image_id), box.name)].append(box_means(ds, image_id, box))
    return stats


def test_fusion_matters_people_and_lamps(synthetic_root):
    stats = fusion_stats(load_m3fd(synthetic_root))
    med = lambda values: float(np.median(values))  # noqa: E731
    night = stats[("night", "People")]
    assert night and stats[("daytime", "People")]
    # Warm people: bright in infrared everywhere; dim and low-contrast in night visible, normal by day.
    assert min(s["ir"][0] for s in night) > 150 and med([s["ir"][1] for s in night]) > 40
    assert med([s["vis"][0] for s in night]) < 30 and med([abs(s["vis"][1]) for s in night]) < 8
    assert med([abs(s["vis"][1]) for s in stats[("daytime", "People")]]) > 3 * med([abs(s["vis"][1]) for s in night])
    # Lamps: bright in visible, no thermal signature.
    lamps = [s for (_, name), v in stats.items() if name == "Lamp" for s in v]
    assert lamps and stats[("night", "Lamp")]
    assert min(s["vis"][0] for s in lamps) > 150
    # By day the sun-heated facade behind a lamp head is itself warm in infrared, so the gap is checked off daytime.
    unheated = [s for (scenario, name), v in stats.items() if name == "Lamp" and scenario != "daytime" for s in v]
    assert unheated and min(s["vis"][0] - s["ir"][0] for s in unheated) > 50
    assert med([s["vis"][1] for s in stats[("night", "Lamp")]]) > 100


@pytest.mark.parametrize("scenario", ["night", "daytime", "overcast"])
def test_lamps_leave_no_trace_in_infrared(scenario):
    """Rendering a scene with and without its lamps (same noise): infrared identical; in visible the lamp
    stands out (by day a white panel under a dark housing, at night a lit panel far above its surroundings)."""
    for k in range(20):
        scene = make_scene(np.random.default_rng([3, k]), "s", scenario, 320, 256)
        if any(t.name == "Lamp" for t in scene.things):
            break
    no_lamps = dataclasses.replace(scene, things=tuple(t for t in scene.things if t.name != "Lamp"))
    ir, vis, boxes = render_frame(scene, 2, np.random.default_rng(0))
    ir_without, vis_without, _ = render_frame(no_lamps, 2, np.random.default_rng(0))
    assert np.array_equal(ir, ir_without)
    for name, x0, y0, x1, y1 in boxes:
        if name == "Lamp":
            inside = np.s_[y0 - 1 : y1, x0 - 1 : x1]
            with_lamp, without = vis[inside].astype(float), vis_without[inside].astype(float)
            assert np.abs(with_lamp - without).mean() > 30
            if scenario == "night":
                assert with_lamp.mean() > without.mean() + 100


def test_deterministic_reused_and_safe(tmp_path, synthetic_root):
    again = generate_synthetic_m3fd(tmp_path / "again", num_scenes=SCENES, frames_per_scene=FRAMES, seed=7)
    assert files_of(again) == files_of(synthetic_root)  # byte-identical
    other = generate_synthetic_m3fd(tmp_path / "other", num_scenes=SCENES, frames_per_scene=FRAMES, seed=8)
    assert files_of(other)["Ir/00000.png"] != files_of(synthetic_root)["Ir/00000.png"]
    marker = again / "marker"
    marker.write_text("x")
    generate_synthetic_m3fd(again, num_scenes=SCENES, frames_per_scene=FRAMES, seed=7)
    assert marker.exists()  # complete with the same parameters: reused, not regenerated
    (again / "Ir" / "00000.png").unlink()
    generate_synthetic_m3fd(again, num_scenes=SCENES, frames_per_scene=FRAMES, seed=7)
    assert not marker.exists() and (again / "Ir" / "00000.png").exists()  # incomplete: regenerated
    generate_synthetic_m3fd(again, num_scenes=3, frames_per_scene=2, seed=7)
    assert len(list((again / "Ir").iterdir())) == 6  # other parameters: regenerated
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        generate_synthetic_m3fd(foreign, num_scenes=3, frames_per_scene=1)
    assert (foreign / "precious.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="at least 3"):
        generate_synthetic_m3fd(tmp_path / "few", num_scenes=2, frames_per_scene=1)


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--scenes", "3", "--frames", "1", "--size", "160", "128", "--seed", "1"]) == 0
    assert "synthetic" in capsys.readouterr().out
    ds = load_m3fd(tmp_path / "cli")
    assert len(ds.ids) == 3 and (ds.annotation("00000").width, ds.annotation("00000").height) == (160, 128)


# ------------------------------------------------------------------------------------- the opt-in near-infrared band
# sha256 over (relative path, bytes) of every file of generate_synthetic_m3fd(num_scenes=3, frames_per_scene=2,
# size=(96, 64), seed=5), recorded with the generator before the near-infrared band existed (version 2 at 2274ae5):
# the default two-band output must never change (the pipeline's default run depends on it).
TWO_BAND_DIGEST = "ef3b1a0a5270354f226a157c5492138040835eeda3b99a71ff6e33fe04e7e007"


def _digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, data in files_of(root).items():
        h.update(name.encode())
        h.update(data)
    return h.hexdigest()


def test_default_two_band_output_is_byte_identical_and_nir_is_opt_in(tmp_path):
    two = generate_synthetic_m3fd(tmp_path / "two", num_scenes=3, frames_per_scene=2, size=(96, 64), seed=5)
    assert _digest(two) == TWO_BAND_DIGEST and not (two / "Nir").exists()
    three = generate_synthetic_m3fd(tmp_path / "three", num_scenes=3, frames_per_scene=2, size=(96, 64), seed=5, nir=True)
    a, b = files_of(two), files_of(three)
    for name, data in a.items():  # infrared, visible, boxes, splits: the same bytes with the third band
        if name.startswith(("Ir/", "Vis/", "Annotation/", "meta/")):
            assert b[name] == data, name
    assert sorted(n for n in b if n.startswith("Nir/")) == sorted(n.replace("Ir/", "Nir/") for n in a if n.startswith("Ir/"))
    assert json.loads(b[PARAMS_FILE])["bands"] == ["ir", "vis", "nir"] and "bands" not in json.loads(a[PARAMS_FILE])
    assert "Near-infrared" in b[README_FILE].decode()
    assert generate_synthetic_m3fd(three, num_scenes=3, frames_per_scene=2, size=(96, 64), seed=5, nir=True) == three
    assert main(["--out", str(tmp_path / "cli"), "--scenes", "3", "--frames", "1", "--size", "96", "64", "--nir"]) == 0
    assert len(list((tmp_path / "cli" / "Nir").iterdir())) == 3


def test_nir_sees_retro_reflectors_and_lamps_at_night_not_heat():
    from data.synthetic import render_frame_bands

    for k in range(20):
        scene = make_scene(np.random.default_rng([4, k]), "s", "night", 320, 256)
        if any(t.name == "Lamp" for t in scene.things) and any(t.name == "People" for t in scene.things):
            break
    ir, vis, nir, boxes = render_frame_bands(scene, 0, np.random.default_rng(0), np.random.default_rng(1))
    ir2, vis2, _ = render_frame(scene, 0, np.random.default_rng(0))
    assert np.array_equal(ir, ir2) and np.array_equal(vis, vis2)  # the third band draws from its own stream
    vis_y = cv2.cvtColor(vis, cv2.COLOR_BGR2GRAY).astype(float)
    marks = scene.retro
    assert marks.any()
    # road markings: retro-reflective under the car's illuminator, dim in night visible
    assert nir[marks].mean() > 150 and vis_y[marks].mean() < 80
    for name, x0, y0, x1, y1 in boxes:
        inside = np.s_[y0 - 1 : y1, x0 - 1 : x1]
        if name == "Lamp":
            assert nir[inside].mean() > 150  # lamps are bright in near-infrared
        if name == "People":
            # a warm body: far above its surroundings in thermal, not in near-infrared (no heat there)
            ring = np.s_[max(0, y0 - 7) : y1 + 6, max(0, x0 - 7) : x1 + 6]
            assert ir[inside].mean() - ir[ring].mean() > abs(nir[inside].mean() - nir[ring].mean()) + 10
