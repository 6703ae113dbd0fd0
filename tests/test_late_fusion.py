"""Late fusion (``detection.late_fusion``): hand-made boxes with hand-computed merged boxes for weighted boxes
fusion and NMS, and a late-fusion candidate scored under both protocols."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from data.types import Annotation, Box
from detection.coco_eval import coco_map
from detection.export import export_yolo_dataset
from detection.late_fusion import merge_prediction_files, merge_predictions, score_late_fusion


def p(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


# Image 1: ir and vis both see a car (category 2), slightly apart; only vis sees a person (category 1) over the
# car's place; a second, far car only ir sees. Image "cam_b" (a string id) only ir has a box for.
IR = [p(1, 2, [0, 0, 10, 10], 0.9), p(1, 2, [60, 60, 20, 10], 0.3), p("cam_b", 1, [5, 5, 4, 8], 0.5)]
VIS = [p(1, 2, [1, 1, 10, 10], 0.6), p(1, 1, [0, 0, 10, 10], 0.8)]


def by_key(predictions):
    return {(q["image_id"], q["category_id"], q["score"]): q["bbox"] for q in predictions}


def test_weighted_boxes_fusion_of_a_hand_made_case():
    merged = merge_predictions({"ir": IR, "vis": VIS}, method="wbf")  # IoU 0.55
    # The two cars (IoU 81/119 = 0.68): corners weighted by score, (0.9 * [0, 0, 10, 10] + 0.6 * [1, 1, 11, 11])
    # / 1.5 = [0.4, 0.4, 10.4, 10.4]; score mean(0.9, 0.6) * min(2, 2) / 2 = 0.75. A box one detector of two
    # found keeps its place and half its score. The person is another class: never merged with the cars.
    assert by_key(merged) == {
        (1, 2, 0.75): [0.4, 0.4, 10.0, 10.0],
        (1, 1, 0.4): [0.0, 0.0, 10.0, 10.0],
        (1, 2, 0.15): [60.0, 60.0, 20.0, 10.0],
        ("cam_b", 1, 0.25): [5.0, 5.0, 4.0, 8.0],
    }
    # Per image, best first; images in the order first met.
    assert [(q["image_id"], q["score"]) for q in merged] == [(1, 0.75), (1, 0.4), (1, 0.15), ("cam_b", 0.25)]


def test_nms_of_the_same_case_keeps_the_best_box_of_each_overlap_unchanged():
    merged = merge_predictions({"ir": IR, "vis": VIS}, method="nms", iou=0.5)
    assert by_key(merged) == {
        (1, 2, 0.9): [0.0, 0.0, 10.0, 10.0],  # the vis car (IoU 0.68 > 0.5) is suppressed
        (1, 1, 0.8): [0.0, 0.0, 10.0, 10.0],  # same place, other class: kept (per-class NMS)
        (1, 2, 0.3): [60.0, 60.0, 20.0, 10.0],
        ("cam_b", 1, 0.5): [5.0, 5.0, 4.0, 8.0],
    }
    # Above the pair's IoU nothing overlaps enough: both cars stay.
    assert len(merge_predictions({"ir": IR, "vis": VIS}, method="nms", iou=0.7)) == 5


def test_wbf_cluster_of_more_boxes_than_detectors_and_the_iou_threshold():
    # Three boxes, two from ir: they form one cluster at IoU 0.5; its score is mean(0.8, 0.6, 0.4) * min(2, 3) / 2,
    # its left edge (0.8 * 0 + 0.6 * 2 + 0.4 * 0) / 1.8.
    ir = [p(7, 1, [0, 0, 10, 10], 0.8), p(7, 1, [0, 0, 10, 10], 0.4)]
    vis = [p(7, 1, [2, 0, 10, 10], 0.6)]  # IoU with the first: 80 / 120 = 0.667
    (one,) = merge_predictions({"ir": ir, "vis": vis}, method="wbf", iou=0.5)
    assert one["score"] == pytest.approx(0.6)
    assert one["bbox"] == pytest.approx([1.2 / 1.8, 0.0, 10.0, 10.0], abs=5e-4)  # rounded to 3 decimals
    # With the threshold above 0.667 the shifted box starts a cluster of its own.
    assert len(merge_predictions({"ir": ir, "vis": vis}, method="wbf", iou=0.7)) == 2
    # Weights multiply scores: vis counted twice makes its box the cluster's first and pulls the corners to it.
    (heavy,) = merge_predictions({"ir": ir, "vis": vis}, method="wbf", iou=0.5, weights={"vis": 2.0})
    assert heavy["bbox"][0] == pytest.approx(2 * 1.2 / (0.8 + 0.4 + 1.2))  # 1.0


def test_merge_caps_boxes_per_image_and_rejects_bad_arguments():
    many = [p(1, 1, [10 * k, 0, 5, 5], 1 - k / 100) for k in range(20)]
    merged = merge_predictions({"ir": many}, method="nms", max_det=5)
    assert [q["score"] for q in merged] == [1.0, 0.99, 0.98, 0.97, 0.96]
    with pytest.raises(ValueError, match="unknown late-fusion method 'mean'"):
        merge_predictions({"ir": IR}, method="mean")
    with pytest.raises(ValueError, match="weights"):
        merge_predictions({"ir": IR}, weights={"nir": 1.0})
    with pytest.raises(ValueError, match="iou"):
        merge_predictions({"ir": IR}, iou=1.5)


def _dataset(tmp_path):
    """An export of two 64x64 images, val = both: one person each at hand-set places."""
    images, annotations = {}, {}
    for i, (x, y) in enumerate([(5, 5), (30, 20)]):
        id_ = f"{i:05d}"
        images[id_] = tmp_path / "src" / f"{id_}.png"
        images[id_].parent.mkdir(exist_ok=True)
        cv2.imwrite(str(images[id_]), np.zeros((64, 64), np.uint8))
        annotations[id_] = Annotation(id_, 64, 64, (Box("People", x + 1, y + 1, x + 20, y + 30),))
    return export_yolo_dataset(images, annotations, {"train": ["00000"], "val": ["00000", "00001"]},
                               tmp_path / "yolo", class_names=("People", "Car"))


def test_late_fusion_scored_under_both_protocols_finds_what_either_detector_found(tmp_path):
    ds = _dataset(tmp_path)
    gt = json.loads(ds.coco_gt("val").read_text())
    truth = {a["image_id"]: a["bbox"] for a in gt["annotations"]}
    # The ir detector finds the person of image 0 only, the vis detector the one of image 1 only.
    results = {}
    for modality, image_id in (("ir", 0), ("vis", 1)):
        for protocol in ("field", "deployed"):
            path = tmp_path / modality / protocol / "predictions.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps([p(image_id, 1, truth[image_id], 0.9)]))
        results[modality] = {"eval_split": "val",
                             "predictions_path": str(tmp_path / modality / "field" / "predictions.json"),
                             "deployed_predictions_path": str(tmp_path / modality / "deployed" / "predictions.json")}
        alone = coco_map(ds.coco_gt("val"), results[modality]["predictions_path"]).map50
        assert alone == pytest.approx(51 / 101)  # recall 0.5 at precision 1: 51 of COCO's 101 recall points

    for method in ("wbf", "nms"):
        scores = score_late_fusion(results, ds, tmp_path / "late", method=method)
        assert set(scores) == {"field", "deployed"}
        for protocol, score in scores.items():
            assert score["map50"] == pytest.approx(1.0)  # each person found by one of the two detectors
            assert score["ap50"] == {"People": pytest.approx(1.0), "Car": None}  # no car in the split
            written = json.loads(open(score["predictions_path"]).read())
            assert len(written) == 2 and score["predictions_path"].endswith(f"late_{method}_{protocol}.json")


def test_merge_prediction_files_treats_a_missing_file_as_no_boxes(tmp_path):
    (tmp_path / "ir.json").write_text(json.dumps(IR))
    out = merge_prediction_files({"ir": tmp_path / "ir.json", "vis": tmp_path / "none.json"}, tmp_path / "m.json",
                                 method="nms")
    assert by_key(json.loads(out.read_text())) == by_key(IR)
