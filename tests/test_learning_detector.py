"""The pipeline's wiring checked with detectors that learn (mAP@50 far from 0), not only at zero.

One pipeline run (module fixture, ~1.5 minutes on 2 cores) on ``learnable_root`` (tests/conftest.py: large bright
shapes, M3FD layout): the ``ir`` and ``vis`` candidates each train a yolov8n from scratch with
:data:`LEARNING_ARGS` and are scored on the test split under both protocols, then again on motion-blurred inputs
(the robustness stage). Every assertion reads the run's own files and recomputes what it can with pycocotools
from the ground truth written by ``data.m3fd``, so a swap of the protocols' prediction files, a box convention
off (xyxy for xywh, a 1-pixel shift, the letterboxed scale), image ids that do not map to the evaluation split,
or corrupted images that were never really used would show.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.m3fd import load_m3fd
from detection.coco_eval import coco_map
from detection.export import coco_image_id

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_m3fd_root")]

# Measured on 2 cores (yolov8n from scratch, 32 training images of 96x96, 4 batches an epoch): with Ultralytics'
# nominal batch (nbs 64) a batch of 8 accumulates 8 batches per optimiser step, ~10 steps in 20 epochs, and every
# mAP stayed 0. With nbs = batch every batch is a step: after 20 epochs (80 steps, ~30 s) field mAP@50 0.80,
# deployed 0.65 on the test split. lr0 0.01 reached only 0.28; imgsz 64 only 0.16; 16 epochs at lr0 0.006 0.47.
EPOCHS, IMGSZ, BATCH = 20, 96, 8
LEARNING_ARGS = {"optimizer": "AdamW", "lr0": 0.004, "warmup_epochs": 1.0, "mosaic": 0.0, "nbs": BATCH}
CORRUPTION, SEVERITY = "blur", 3  # 15-pixel motion blur on 96-pixel images, in both modalities
FAR_FROM_ZERO = 0.5


def _iou_xywh(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# Run in a fresh process: torch is loaded there after OMP_WAIT_POLICY=PASSIVE (detection.ultralytics_env explains
# why spinning OpenMP threads stall training on shared cores), whatever earlier tests imported in this one.
_RUN_SCRIPT = """
import json, sys
from pathlib import Path
from pipelines import engine

cfg_kwargs, extra = json.loads(sys.argv[1]), json.loads(sys.argv[2])
plain = engine.detection_settings

def learning_settings(cfg, preset):  # the tiny preset's recipe with the arguments that make it learn
    settings = plain(cfg, preset)
    settings["extra_args"] = {**settings["extra_args"], **extra}
    return settings

engine.detection_settings = learning_settings
engine.run_pipeline(engine.PipelineConfig(**cfg_kwargs))
"""


@pytest.fixture(scope="module")
def learned(tmp_path_factory, learnable_root):
    """The pipeline on the learnable set: candidates ir and vis, one seed, blur severity 3 in the robustness stage."""
    out = tmp_path_factory.mktemp("learning") / "out"
    cfg = dict(out=str(out), data=str(learnable_root), preset="tiny", baselines=[], train_dae_fuse=False,
               epochs=EPOCHS, imgsz=IMGSZ, batch=BATCH, corruptions=[CORRUPTION], severities=[SEVERITY],
               bootstrap_resamples=1000, progress=False)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-c", _RUN_SCRIPT, json.dumps(cfg), json.dumps(LEARNING_ARGS)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r["detection_runs"][0] for r in results["candidates"]}
    return out, results, load_m3fd(learnable_root), runs


def test_every_candidate_learns_under_both_protocols(learned):
    _, results, _, runs = learned
    assert sorted(runs) == ["ir", "vis"]
    assert results["config"]["detection"]["extra_args"]["nbs"] == BATCH  # the learning recipe was the one used
    for name, run in runs.items():
        assert run["epochs_completed"] == EPOCHS and run["imgsz"] == IMGSZ
        assert run["coco_map50"] > FAR_FROM_ZERO, (name, run["coco_map50"])
        assert run["map50_deployed"] > FAR_FROM_ZERO, (name, run["map50_deployed"])
        assert run["map50"] > FAR_FROM_ZERO  # Ultralytics' own metric on the same predictions
        assert abs(run["map50"] - run["coco_map50"]) < 0.05  # the two AP integrations agree far from 0 too
        for cls in ("People", "Car"):
            assert run["ap50"][cls] > 0.2 and run["ap50_deployed"][cls] > 0.2, (name, cls)


def test_each_protocol_is_read_from_its_own_predictions_file(learned):
    """The record's field numbers are pycocotools on the field file, the deployed numbers on the deployed file;
    the files differ (multi-label vs one class per box), so a swap changes the numbers."""
    _, _, _, runs = learned
    differs = []
    for name, run in runs.items():
        field_file, deployed_file = Path(run["predictions_path"]), Path(run["deployed_predictions_path"])
        assert field_file != deployed_file and field_file.is_file() and deployed_file.is_file()
        assert field_file.parent.name == "eval_test" and deployed_file.parent.name == "eval_test_deployed"
        field = coco_map(Path(run["coco_gt"]), field_file)
        deployed = coco_map(Path(run["coco_gt"]), deployed_file)
        assert field.map50 == run["coco_map50"] and field.map50_95 == run["coco_map50_95"]
        assert deployed.map50 == run["map50_deployed"] and deployed.map50_95 == run["map50_95_deployed"]
        differs.append(field.map50 != deployed.map50)
        # The files are what their names say: the deployed one has one class per box, the field one (multi-label)
        # the same box again under another class.
        field_boxes, deployed_boxes = (json.loads(p.read_text()) for p in (field_file, deployed_file))
        def boxes(predictions):
            return [(p["image_id"], *(round(v, 2) for v in p["bbox"])) for p in predictions]
        assert len(boxes(deployed_boxes)) == len(set(boxes(deployed_boxes)))
        assert len(boxes(field_boxes)) > len(set(boxes(field_boxes)))
    # a perfect detector (mAP@50 1.0) scores the same under both; where the protocols differ, a swap shows
    assert any(differs)


def test_saved_predictions_are_xywh_in_original_pixels_on_the_eval_split_ids(learned):
    """Ground-truth boxes of the test split (from the VOC files: 1-based inclusive -> pixel span [xmin - 1, xmax])
    are found by deployed predictions (score > 0.01) with IoU > 0.5 read as xywh pixels of the 96x96 original
    image, most of them with the right class; the same predictions read as xyxy match far fewer; every image id is
    a test image and every test image has predictions."""
    _, _, dataset, runs = learned
    wanted = {coco_image_id(i): dataset.annotation(i) for i in dataset.splits["test"]}
    class_id = {name: k + 1 for k, name in enumerate(dataset.class_names)}
    for name, run in runs.items():
        predictions = json.loads(Path(run["deployed_predictions_path"]).read_text())
        assert {p["image_id"] for p in predictions} == set(wanted)  # every test image, and nothing else
        assert {im["id"] for im in json.loads(Path(run["coco_gt"]).read_text())["images"]} == set(wanted)
        located = right_class = as_xyxy = total = 0
        for image_id, annotation in wanted.items():
            kept = [p for p in predictions if p["image_id"] == image_id and p["score"] > 0.01]
            for b in (p["bbox"] for p in kept):  # inside the original image, not the letterboxed one
                assert -1 <= b[0] and -1 <= b[1] and b[0] + b[2] <= 97 and b[1] + b[3] <= 97
            for box in annotation.boxes:
                total += 1
                truth = (box.xmin - 1, box.ymin - 1, box.xmax - box.xmin + 1, box.ymax - box.ymin + 1)
                located += max((_iou_xywh(truth, p["bbox"]) for p in kept), default=0.0) > 0.5
                right_class += max((_iou_xywh(truth, p["bbox"]) for p in kept
                                    if p["category_id"] == class_id[box.name]), default=0.0) > 0.5
                swapped = [(b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in (p["bbox"] for p in kept)
                           if b[2] > b[0] and b[3] > b[1]]
                as_xyxy += max((_iou_xywh(truth, b) for b in swapped), default=0.0) > 0.5
        assert located >= 0.8 * total and right_class >= 0.6 * total, (name, located, right_class, total)
        assert as_xyxy < located / 2, (name, as_xyxy, located)


def test_per_scenario_map_is_recomputed_from_the_scenarios_images(learned):
    """Per-scenario mAP@50 (daytime: even ids, night: odd ids) is > 0, equals pycocotools on that scenario's
    images of the right protocol's file, and the scenarios partition the test split."""
    _, results, dataset, runs = learned
    scenario_ids = dataset.scenario_ids("test")
    assert sorted(scenario_ids) == ["daytime", "night"]
    assert sorted(i for ids in scenario_ids.values() for i in ids) == sorted(dataset.splits["test"])
    assert {s: v["n_images"] for s, v in results["scenarios"].items()} == {s: len(v) for s, v in scenario_ids.items()}
    distinct = []
    for name, run in runs.items():
        for scenario, ids in scenario_ids.items():
            cell = run["scenarios"][scenario]
            image_ids = [coco_image_id(i) for i in ids]
            field = coco_map(Path(run["coco_gt"]), Path(run["predictions_path"]), image_ids=image_ids)
            deployed = coco_map(Path(run["coco_gt"]), Path(run["deployed_predictions_path"]), image_ids=image_ids)
            assert cell["map50"] == field.map50 > 0.3, (name, scenario)
            assert cell["map50_deployed"] == deployed.map50 > 0.3, (name, scenario)
            assert cell["n_boxes"] == sum(len(dataset.annotation(i).boxes) for i in ids)
        distinct.append(len({*(run["scenarios"][s]["map50_deployed"] for s in scenario_ids), run["map50_deployed"]}))
    assert max(distinct) > 1  # not the overall number copied into every scenario (a perfect detector ties them)


def test_robustness_scores_the_corrupted_images(learned):
    """The robustness stage scored the kept detectors on blurred inputs: its prediction files differ from the
    clean ones, their scores equal pycocotools on them, and the mAP moved away from the clean value."""
    out, results, _, runs = learned
    cell = results["robustness"]["cells"][f"{CORRUPTION}/{SEVERITY}"]
    for name, run in runs.items():
        scored = cell["candidates"][name]
        corrupted_dir = out / "robustness" / name / f"{CORRUPTION}_s{SEVERITY}" / "seed0"
        field_file = corrupted_dir / "eval_test" / "predictions.json"
        deployed_file = corrupted_dir / "eval_test_deployed" / "predictions.json"
        assert field_file.is_file() and deployed_file.is_file()
        clean = json.loads(Path(run["deployed_predictions_path"]).read_text())
        corrupted = json.loads(deployed_file.read_text())
        assert corrupted != clean
        gt = Path(run["coco_gt"])
        assert scored["map50_deployed"]["mean"] == coco_map(gt, deployed_file).map50
        assert scored["map50"]["mean"] == coco_map(gt, field_file).map50
        assert abs(scored["map50_deployed"]["mean"] - run["map50_deployed"]) > 0.02, name
        assert abs(scored["map50"]["mean"] - run["coco_map50"]) > 0.02, name


def test_intervals_on_learned_detectors_are_pycocotools_at_the_point_and_not_degenerate(learned):
    """The bootstrap on real predictions far from 0: each protocol's mAP@50 interval is centred on pycocotools' value
    from that protocol's file, has width, and (one seed) is images-only and marked provisional; the gain of the
    weaker single modality is the difference of the points; the robustness drop is corrupted minus clean."""
    _, results, _, runs = learned
    sections = results["bootstrap"]["protocols"]
    assert sorted(sections) == ["deployed", "field"]
    for protocol, key in (("field", "coco_map50"), ("deployed", "map50_deployed")):
        section = sections[protocol]
        for name, run in runs.items():
            iv = section["map50"][name]
            assert iv["point"] == pytest.approx(run[key], abs=1e-6)
            assert iv["low"] < iv["point"] < iv["high"] or iv["point"] == 1.0 == iv["high"], (protocol, name, iv)
            assert iv["high"] - iv["low"] > 0.01 or iv["point"] == 1.0
            assert iv["n_seeds"] == 1 and iv["provisional"] and iv["seed_std"] is None
            assert section["per_seed"][name] == [pytest.approx(run[key], abs=1e-6)]
        reference = section["reference"]
        other = next(n for n in runs if n != reference)
        gain = section["gains"][other]
        assert gain["point"] == pytest.approx(runs[other][key] - runs[reference][key], abs=1e-6)
        assert gain["low"] <= gain["point"] <= gain["high"] and gain["high"] - gain["low"] > 0.01
    assert "Provisional: one detector seed" in (results_md := (learned[0] / "results.md").read_text())
    assert "Beat `" not in results_md
    drops = results["robustness"]["cells"][f"{CORRUPTION}/{SEVERITY}"]["intervals"]["drop"]
    for name, run in runs.items():
        corrupted = results["robustness"]["cells"][f"{CORRUPTION}/{SEVERITY}"]["candidates"][name]
        assert drops[name]["point"] == pytest.approx(corrupted["map50_deployed"]["mean"] - run["map50_deployed"],
                                                     abs=1e-6)
        assert drops[name]["high"] - drops[name]["low"] > 0.01
