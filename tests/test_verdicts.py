"""Verdicts to trust (issue 12): the deployed protocol, bootstrap intervals that reproduce pycocotools, and the
verdict read from them."""
from __future__ import annotations

import numpy as np
import pytest

from detection.bootstrap import PairedBootstrap, image_matches, map50, resample_weights
from detection.coco_eval import coco_map
from pipelines import report


def synthetic_coco(n_images=40, n_classes=3, seed=0, clutter=15, tie_scores=False, recall=0.8):
    """A COCO ground truth and a prediction list: near-correct boxes (some with the wrong class) and clutter."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 640, "height": 480} for i in range(n_images)]
    annotations, predictions = [], []
    for image in images:
        for _ in range(int(rng.integers(0, 6))):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(10, 100), rng.uniform(10, 100)
            c = int(rng.integers(1, n_classes + 1))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": c,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < recall:
                label = c if rng.random() < 0.8 else int(rng.integers(1, n_classes + 1))
                predictions.append({"image_id": image["id"], "category_id": label, "score": float(rng.random()),
                                    "bbox": [x + rng.normal(0, 4), y + rng.normal(0, 4), w, h]})
        for _ in range(int(rng.integers(0, clutter))):
            score = float(np.round(rng.random(), 1)) if tie_scores else float(rng.random())
            predictions.append({"image_id": image["id"], "category_id": int(rng.integers(1, n_classes + 1)),
                                "bbox": [rng.uniform(0, 500), rng.uniform(0, 380), 30, 30], "score": score})
    categories = [{"id": c + 1, "name": f"c{c}"} for c in range(n_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, predictions


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, False)])
def test_bootstrap_point_estimate_is_pycocotools_map50(seed, ties):
    gt, predictions = synthetic_coco(seed=seed, tie_scores=ties)
    assert map50(image_matches(gt, predictions))[0] == pytest.approx(coco_map(gt, predictions).map50, abs=1e-6)


def test_a_resampled_weighting_is_pycocotools_on_the_resampled_images():
    """Drawing image 3 twice and leaving image 5 out scores like a dataset holding two copies of 3 and no 5."""
    gt, predictions = synthetic_coco(n_images=12, seed=3)
    weights = np.ones((1, 12))
    weights[0, 2], weights[0, 4] = 2, 0
    copy_id = 100
    resampled = {**gt, "images": [im for im in gt["images"] if im["id"] != 5] + [{"id": copy_id, "width": 640,
                                                                                 "height": 480}],
                 "annotations": [a for a in gt["annotations"] if a["image_id"] != 5]
                 + [{**a, "id": 1000 + a["id"], "image_id": copy_id} for a in gt["annotations"] if a["image_id"] == 3]}
    resampled_predictions = ([p for p in predictions if p["image_id"] != 5]
                             + [{**p, "image_id": copy_id} for p in predictions if p["image_id"] == 3])
    expected = coco_map(resampled, resampled_predictions).map50
    assert map50(image_matches(gt, predictions), weights)[0] == pytest.approx(expected, abs=1e-6)


def test_intervals_are_reproducible_from_their_seed_and_paired():
    gt, good = synthetic_coco(seed=4, recall=0.95, clutter=5)
    _, poor = synthetic_coco(seed=4, recall=0.5, clutter=25)
    good_m, poor_m = image_matches(gt, good), image_matches(gt, poor)
    first = PairedBootstrap(good_m.image_ids, 1000, seed=7)
    first.add("good", [good_m])
    first.add("poor", [poor_m])
    first.add("same", [good_m])
    again = PairedBootstrap(good_m.image_ids, 1000, seed=7)
    again.add("good", [good_m])
    again.add("poor", [poor_m])
    assert again.gain("good", "poor") == first.gain("good", "poor")  # the seed fixes every resample
    other = PairedBootstrap(good_m.image_ids, 1000, seed=8)
    other.add("good", [good_m])
    assert other.interval("good") != first.interval("good")
    gain = first.gain("good", "poor")
    assert gain.point == pytest.approx(coco_map(gt, good).map50 - coco_map(gt, poor).map50, abs=1e-6)
    assert gain.low <= gain.point <= gain.high and gain.excludes_zero()
    same = first.gain("good", "same")  # paired: identical predictions on identical resamples differ by exactly 0
    assert same.point == same.low == same.high == 0.0
    assert resample_weights(40, 1000, 7).sum(axis=1).tolist() == [40.0] * 1000


def test_several_seeds_average_the_gain_share_the_image_draws_and_add_their_spread():
    gt, a0 = synthetic_coco(seed=5, recall=0.9)
    _, a1 = synthetic_coco(seed=6, recall=0.9)
    _, b0 = synthetic_coco(seed=5, recall=0.6)
    boot = PairedBootstrap([im["id"] for im in gt["images"]], 1000, seed=0)
    boot.add("a", [image_matches(gt, a0), image_matches(gt, a1)])
    boot.add("b", [image_matches(gt, b0), image_matches(gt, b0)])
    per_seed = np.array([coco_map(gt, a0).map50, coco_map(gt, a1).map50]) - coco_map(gt, b0).map50
    gain = boot.gain("a", "b")
    assert gain.point == pytest.approx(per_seed.mean(), abs=1e-6)
    # every seed is scored on the same resampled images: the same predictions give the same replicates
    np.testing.assert_array_equal(boot.per_seed_replicates["b"][0], boot.per_seed_replicates["b"][1])
    assert gain.n_seeds == 2 and not gain.provisional
    assert gain.seed_std == pytest.approx(abs(per_seed[0] - per_seed[1]) / np.sqrt(2), abs=1e-6)
    assert gain.high - gain.low > boot.image_gain("a", "b").high - boot.image_gain("a", "b").low


def test_deployed_protocol_keeps_one_class_per_box(tmp_path):
    """A box scoring two classes above the threshold is two detections for the field, one when deployed."""
    import torch

    from detection.protocols import PROTOCOLS, validator_class
    from detection.ultralytics_env import setup_offline

    setup_offline(tmp_path / "ultralytics")
    from ultralytics.cfg import get_cfg

    raw = torch.zeros(1, 4 + 3, 2)  # (batch, xywh + 3 class scores, candidate boxes)
    raw[0, :, 0] = torch.tensor([50.0, 50.0, 20.0, 20.0, 0.9, 0.6, 0.0])
    raw[0, :, 1] = torch.tensor([150.0, 150.0, 20.0, 20.0, 0.0, 0.0, 0.3])
    kept = {}
    for name in ("field", "deployed"):
        validator = validator_class(PROTOCOLS.get(name))(args=get_cfg(overrides={"conf": 0.001, "iou": 0.7}))
        validator.end2end, validator.nc = False, 3
        kept[name] = validator.postprocess(raw)[0]["cls"].tolist()
    assert sorted(kept["field"]) == [0.0, 1.0, 2.0]
    assert sorted(kept["deployed"]) == [0.0, 2.0]


def _record(name, value, deployed, baseline=None):
    return {"name": name, "baseline": baseline, "error": None, "fusion": None, "fuse_seconds_per_image": None,
            "detection": {"map50": {"mean": value, "std": 0.0, "n": 1},
                          "map50_deployed": {"mean": deployed, "std": 0.0, "n": 1}}}


def test_the_verdict_reads_from_the_intervals_and_the_protocols_are_compared():
    records = [_record("ir", 0.48, 0.48, "ir"), _record("vis", 0.40, 0.40, "vis"), _record("max", 0.67, 0.42),
               _record("dae", 0.58, 0.55)]
    best = report.add_gains(records, "deployed")
    assert best == pytest.approx(0.48)
    intervals = {"reference": "ir", "gains": {
        "vis": {"point": -0.08, "low": -0.12, "high": -0.04, "n_seeds": 3},
        "max": {"point": -0.06, "low": -0.10, "high": 0.01, "n_seeds": 3},
        "dae": {"point": 0.07, "low": 0.02, "high": 0.11, "n_seeds": 3}},
        "top_two": {"first": "dae", "second": "ir", "point": 0.07, "low": 0.02, "high": 0.11, "n_seeds": 3}}
    text = report.verdict(records, best, "deployed", intervals)
    assert "Beat `ir` (95% interval over 3 detector seeds and the images above 0): `dae` +0.070 [+0.020, +0.110]" \
        in text
    assert "Not distinguishable from `ir` (interval includes 0): `max` -0.060 [-0.100, +0.010]" in text
    assert "vis" not in text.split("Better single")[1].split("(deployed protocol)")[1]  # single rows are references
    rows = report.table_rows(records, protocol="deployed", intervals=intervals)
    assert [r["candidate"] for r in rows] == ["dae", "ir", "max", "vis"]
    assert rows[0]["gain vs best single"] == "+0.070 [+0.020, +0.110]" and rows[0]["mAP@50 field"] == "0.580"
    assert "The protocols disagree" in report.ranking_disagreement(records, "deployed")  # field: max first
    no_win = {**intervals, "gains": {**intervals["gains"], "dae": {"point": 0.07, "low": -0.01, "high": 0.11,
                                                                    "n_seeds": 3}}}
    assert "none earns its keep" in report.verdict(records, best, "deployed", no_win)
    # one detector seed (or intervals written before seeds counted): provisional, nothing called a win or a loss
    one_seed = {**intervals, "gains": {n: {**iv, "n_seeds": 1} for n, iv in intervals["gains"].items()}}
    for provisional in (one_seed, {**intervals, "gains": {n: {k: v for k, v in iv.items() if k != "n_seeds"}
                                                          for n, iv in intervals["gains"].items()}}):
        text = report.verdict(records, best, "deployed", provisional)
        assert "Provisional: one detector seed; run `--seeds 0 1 2` to include training noise" in text
        assert "Ahead of `ir` on these images: `dae` +0.070 [+0.020, +0.110]" in text
        assert "Beat" not in text and "Worse" not in text and "earns its keep" not in text
    # field protocol: the table's mAP is Ultralytics' (dae 0.58 - ir 0.48 = +0.100) but the interval is
    # pycocotools': the gain shown with it is the interval's own point, as in the verdict
    report.add_gains(records, "field")
    field = {"reference": "ir", "gains": {"dae": {"point": 0.104, "low": 0.03, "high": 0.17}}}
    rows = report.table_rows(records, protocol="field", intervals=field)
    shown = {r["candidate"]: r["gain vs best single"] for r in rows}
    assert shown["dae"] == "+0.104 [+0.030, +0.170]" and shown["vis"] == "-0.080"


def test_corruptions_are_deterministic_per_image_and_seed_and_spare_the_thermal_camera():
    from data.corruptions import CORRUPTIONS, check_corruptions, corrupt_pair

    rng = np.random.default_rng(0)
    ir = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    vis = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for name in CORRUPTIONS.names():
        a_ir, a_vis = corrupt_pair(name, 2, ir, vis, "00001", seed=0)
        b_ir, b_vis = corrupt_pair(name, 2, ir, vis, "00001", seed=0)
        assert np.array_equal(a_ir, b_ir) and np.array_equal(a_vis, b_vis)
        assert a_vis.shape == vis.shape and a_vis.dtype == np.uint8 and not np.array_equal(a_vis, vis)
        assert np.array_equal(a_ir, ir) == (name in ("fog", "low_light", "glare"))  # only noise and blur reach IR
        grey_ir, grey_vis = corrupt_pair(name, 1, ir, vis[..., 0].copy(), "00001", seed=0)
        assert grey_vis.shape == (48, 64)
    _, other_seed = corrupt_pair("noise", 2, ir, vis, "00001", seed=1)
    _, other_image = corrupt_pair("noise", 2, ir, vis, "00002", seed=0)
    first = corrupt_pair("noise", 2, ir, vis, "00001", seed=0)[1]
    assert not np.array_equal(first, other_seed) and not np.array_equal(first, other_image)
    assert check_corruptions(["fog", "hail"], [1, 4]) == [
        "unknown corruption(s) hail; known: fog, low_light, glare, noise, blur", "severities must be among [1, 2, 3], got [4]"]


def test_a_tiny_robustness_run_scores_the_trained_detectors_on_corrupted_inputs(tmp_path, synthetic_root, monkeypatch):
    from pipelines.engine import OptionsError, PipelineConfig, run_pipeline

    with pytest.raises(OptionsError, match="unknown corruption"):
        run_pipeline(PipelineConfig(out=tmp_path / "refused", data=synthetic_root, preset="tiny", corruptions=["hail"]))
    assert not (tmp_path / "refused").exists()
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False, baselines=["max"],
                         checkpoints=[tmp_path / "absent.pt"], corruptions=["fog", "noise"], severities=[1, 3])
    results = run_pipeline(cfg)
    robust = results["robustness"]
    assert list(robust["cells"]) == ["fog/1", "fog/3", "noise/1", "noise/3"]
    for cell in robust["cells"].values():
        assert set(cell["candidates"]) == {"ir", "vis", "max"}
        intervals = cell["intervals"]
        assert set(intervals["drop"]) == {"ir", "vis", "max"} and intervals["reference"] in ("ir", "vis")
        for name, drop in intervals["drop"].items():
            value = cell["candidates"][name]["map50_deployed"]["mean"]
            clean = next(r for r in results["candidates"] if r["name"] == name)["detection"]["map50_deployed"]["mean"]
            assert drop["point"] == pytest.approx(value - clean, abs=1e-6)
    # fog never reaches the thermal camera: IR-only is scored on unchanged images
    assert robust["cells"]["fog/3"]["intervals"]["drop"]["ir"]["point"] == pytest.approx(0.0, abs=1e-9)
    assert "## Robustness" in (cfg.out / "results.md").read_text()
    assert (cfg.out / "plots" / "robustness.png").is_file()
    # cached like everything else: a second run corrupts, fuses and scores nothing again
    monkeypatch.setattr("detection.train.score_detector", lambda *a, **k: pytest.fail("scored again"))
    monkeypatch.setattr("fusion.fusers.fuse.fuse_folder", lambda *a, **k: pytest.fail("fused again"))
    assert run_pipeline(cfg)["robustness"]["cells"] == robust["cells"]
