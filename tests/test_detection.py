"""Detection stage: YOLO export, pycocotools scoring, presets, TensorBoard mirror, and one tiny offline training.

Everything but the ``tiny_run`` fixture runs in milliseconds. ``tiny_run`` trains twice (same seed, to check
determinism) at imgsz 64 for 2 epochs in ONE subprocess with HOME and the working directory pointed at empty
temporary folders, under the network guard.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from data.errors import DatasetError
from data.store import KeyedStore
from data.types import Annotation, Box
from detection import export as export_module
from detection.coco_eval import coco_map
from detection.export import (YoloDataset, coco_image_id, default_class_names, export_yolo_dataset, voc_to_coco,
                              voc_to_yolo)
from detection.presets import PRESETS_PATH, load_preset, preset_names
from detection.train import TensorBoardMirror, train_and_evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"People": (0, 0, 255), "Car": (0, 255, 0), "Lamp": (255, 0, 0)}  # BGR
CLASS_NAMES = default_class_names()  # M3FD's: what an export given no class list uses


def make_synthetic(folder: Path, n: int, *, size: int = 96, seed: int = 0) -> tuple[dict, dict]:
    """``n`` grey ``size``x``size`` PNGs with 1-3 coloured rectangles each (People, Car, Lamp); ids 00000...."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = {}, {}
    for i in range(n):
        image = np.full((size, size, 3), 40, np.uint8)
        boxes = []
        for k in range(int(rng.integers(1, 4))):
            name = list(COLOURS)[k]
            w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            image[y:y + h, x:x + w] = COLOURS[name]
            boxes.append(Box(name, x + 1, y + 1, x + w, y + h))  # VOC: 1-based, inclusive
        image_id = f"{i:05d}"
        images[image_id] = folder / f"{image_id}.png"
        cv2.imwrite(str(images[image_id]), image)
        annotations[image_id] = Annotation(image_id, size, size, tuple(boxes))
    return images, annotations


def _blank(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))
    return path


# ----------------------------------------------------------------------------------------------- conversion

def test_voc_to_yolo_matches_hand_computed_boxes():
    # Pixels 0..9 wide and 0..19 tall in a 100x50 image: centre (5, 10), size 10x20.
    yolo = voc_to_yolo(np.array([[1, 1, 10, 20], [91, 31, 100, 50]]), 100, 50)
    np.testing.assert_allclose(yolo[0], [5 / 100, 10 / 50, 10 / 100, 20 / 50])
    np.testing.assert_allclose(yolo[1], [95 / 100, 40 / 50, 10 / 100, 20 / 50])  # touches the far corner
    np.testing.assert_allclose(voc_to_coco(np.array([[11, 21, 30, 60]])), [[10, 20, 20, 40]])


def test_coco_image_id_follows_ultralytics_stem_rule():
    assert coco_image_id("00159") == 159
    assert coco_image_id("cam_a") == "cam_a"


# --------------------------------------------------------------------------------------------------- export

def test_export_layout_links_labels_and_coco_ground_truth(tmp_path):
    src = tmp_path / "src"
    images = {"00007": _blank(src / "00007.png", 100, 50), "cam_a": _blank(src / "cam_a.jpg", 100, 50),
              "00009": _blank(src / "00009.png", 100, 50)}
    annotations = {
        "00007": Annotation("00007", 100, 50, (Box("People", 1, 1, 10, 20), Box("Truck", 11, 21, 30, 50))),
        "cam_a": Annotation("cam_a", 100, 50, (Box("Car", 91, 31, 100, 50),)),
        "00009": Annotation("00009", 100, 50, ()),  # background image: stays in with an empty label file
    }
    ds = export_yolo_dataset(images, annotations, {"train": ["00007", "00009"], "val": ["cam_a", "00007"]},
                             tmp_path / "yolo")

    root = (tmp_path / "yolo").resolve()
    assert ds.root == root and ds.split_counts == {"train": 2, "val": 2}
    linked = root / "images" / "train" / "00007.png"
    assert os.path.samefile(linked, images["00007"])  # a link, not a second copy
    assert (root / "images" / "val" / "cam_a.jpg").exists()
    lines = (root / "labels" / "train" / "00007.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "5"]  # People -> 0, Truck -> 5 (by name)
    np.testing.assert_allclose([float(v) for v in lines[0].split()[1:]], [0.05, 0.2, 0.1, 0.4], atol=1e-6)
    np.testing.assert_allclose([float(v) for v in lines[1].split()[1:]], [0.2, 0.7, 0.2, 0.6], atol=1e-6)
    assert (root / "labels" / "train" / "00009.txt").read_text() == ""

    data = yaml.safe_load(ds.yaml_path.read_text())
    assert data["path"] == str(root) and data["val"] == str(root / "images" / "val")
    assert [data["names"][i] for i in range(6)] == list(CLASS_NAMES)

    gt = json.loads(ds.coco_gt_path.read_text())
    assert ds.coco_gt_path == root / "annotations" / "val.json"
    assert {im["id"] for im in gt["images"]} == {"cam_a", 7}  # stem -> int when numeric, as predictions.json
    by_cat = {a["category_id"]: a for a in gt["annotations"]}
    assert by_cat[6]["bbox"] == [10, 20, 20, 30] and by_cat[6]["image_id"] == 7  # Truck = index 5 + 1
    assert by_cat[2]["bbox"] == [90, 30, 10, 20] and by_cat[2]["image_id"] == "cam_a"
    assert min(a["id"] for a in gt["annotations"]) == 1  # pycocotools treats a gt id of 0 as unmatched
    assert ds.box_counts["val"] == {"People": 1, "Car": 1, "Bus": 0, "Motorcycle": 0, "Lamp": 0, "Truck": 1}
    assert ds.warnings == ("00007: in both split 'train' and 'val'",)
    assert YoloDataset.load(root) == ds


def test_export_is_reused_when_unchanged_and_rebuilt_when_changed(tmp_path, monkeypatch):
    images, annotations = make_synthetic(tmp_path / "src", 4)
    splits = {"train": ["00000", "00001"], "val": ["00002", "00003"]}
    first = export_yolo_dataset(images, annotations, splits, tmp_path / "yolo")
    manifest = tmp_path / "yolo" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    with monkeypatch.context() as patch:
        patch.setattr(export_module, "probe_sizes", lambda paths: pytest.fail("a reused export probes nothing"))
        assert export_yolo_dataset(images, annotations, splits, tmp_path / "yolo") == first
    assert manifest.stat().st_mtime_ns == stamp  # reused, not rewritten

    annotations["00002"] = Annotation("00002", 96, 96, (Box("Bus", 1, 1, 20, 20),))
    second = export_yolo_dataset(images, annotations, splits, tmp_path / "yolo")
    assert second.key != first.key and second.box_counts["val"]["Bus"] == 1
    assert (tmp_path / "yolo" / "labels" / "val" / "00002.txt").read_text().startswith("2 ")


def test_forced_export_is_rebuilt_and_swapped_in_whole(tmp_path, monkeypatch):
    images, annotations = make_synthetic(tmp_path / "src", 4)
    splits = {"train": ["00000", "00001"], "val": ["00002", "00003"]}
    first = export_yolo_dataset(images, annotations, splits, tmp_path / "yolo")
    stale = tmp_path / "yolo" / "labels" / "val" / "stale.txt"
    stale.write_text("left by an older export")
    probed = []
    real_probe = export_module.probe_sizes
    monkeypatch.setattr(export_module, "probe_sizes", lambda paths: probed.append(1) or real_probe(paths))
    again = export_yolo_dataset(images, annotations, splits, tmp_path / "yolo",
                                store=KeyedStore(tmp_path, force=True))
    assert probed and again.key == first.key  # validated and written again, same content
    assert not stale.exists()  # a new folder replaced the old one whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "yolo"]  # no temporary or old folder beside it


def test_interrupted_export_is_never_taken_for_complete(tmp_path, monkeypatch):
    images, annotations = make_synthetic(tmp_path / "src", 4)
    splits = {"train": ["00000", "00001"], "val": ["00002", "00003"]}
    out = tmp_path / "yolo"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("interrupted while writing COCO json")

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "_coco_json", crash)
        with pytest.raises(KeyboardInterrupt):
            export_yolo_dataset(images, annotations, splits, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "src"]  # no half dataset, no temp folder

    # A folder holding files but no manifest (e.g. copied half-way) is rebuilt, not reused.
    (out / "labels").mkdir(parents=True)
    (out / "stray.txt").write_text("partial")
    with pytest.raises(FileNotFoundError):
        YoloDataset.load(out)
    ds = export_yolo_dataset(images, annotations, splits, out)
    assert not (out / "stray.txt").exists() and ds.split_counts == {"train": 2, "val": 2}

    # A failed re-export leaves the previous complete export untouched.
    annotations["00000"] = Annotation("00000", 96, 96, ())
    with monkeypatch.context() as patch:
        patch.setattr(export_module, "_coco_json", crash)
        with pytest.raises(KeyboardInterrupt):
            export_yolo_dataset(images, annotations, splits, out)
    assert YoloDataset.load(out) == ds


def test_bad_input_raises_one_error_naming_every_offender(tmp_path):
    src = tmp_path / "src"
    (src / "garbled.png").parent.mkdir(parents=True)
    (src / "garbled.png").write_bytes(b"not a png at all")
    truncated = _blank(src / "truncated.png", 50, 40)
    truncated.write_bytes(truncated.read_bytes()[:-1])  # its header is whole: only decoding it tells
    images = {
        "missing": src / "missing.png",
        "garbled": src / "garbled.png",
        "truncated": truncated,
        "imageonly": _blank(src / "imageonly.png", 50, 40),
        "farout": _blank(src / "farout.png", 50, 40),
        "dog": _blank(src / "dog.png", 50, 40),
        "ok": _blank(src / "ok.png", 50, 40),
    }
    annotations = {
        "missing": Annotation("missing", 50, 40, ()),
        "garbled": Annotation("garbled", 50, 40, ()),
        "truncated": Annotation("truncated", 50, 40, ()),
        "annonly": Annotation("annonly", 50, 40, ()),
        "farout": Annotation("farout", 50, 40, (Box("Car", 10, 10, 60, 30),)),
        "dog": Annotation("dog", 50, 40, (Box("Dog", 1, 1, 5, 5),)),
        "ok": Annotation("ok", 50, 40, ()),
    }
    splits = {"train": ["missing", "garbled", "truncated", "imageonly", "annonly", "farout", "dog", "ok"],
              "val": ["ok"], "test": []}
    with pytest.raises(DatasetError) as info:
        export_yolo_dataset(images, annotations, splits, tmp_path / "yolo")
    problems = info.value.problems
    for offender in ("missing.png", "garbled.png", "truncated.png", "imageonly", "annonly", "farout", "Dog",
                     "split 'test'"):
        assert sum(offender in p for p in problems) == 1, (offender, problems)
    assert f"truncated: unreadable image {truncated}: cannot decode image" in problems
    assert any(", ".join(CLASS_NAMES) in p for p in problems)  # the unknown class error lists the known ones
    assert not (tmp_path / "yolo").exists()


def test_box_off_by_one_pixel_is_clipped_with_a_warning(tmp_path):
    images = {"a": _blank(tmp_path / "a.png", 50, 40)}
    annotations = {"a": Annotation("a", 50, 40, (Box("Lamp", 0, 1, 51, 40), Box("Lamp", 0, 1, 51, 40)))}
    ds = export_yolo_dataset(images, annotations, {"train": ["a"], "val": ["a"]}, tmp_path / "yolo")
    assert any("clipped" in w for w in ds.warnings) and any("duplicate" in w for w in ds.warnings)
    label = (tmp_path / "yolo" / "labels" / "val" / "a.txt").read_text().splitlines()
    assert label == ["4 0.500000 0.500000 1.000000 1.000000"]  # clipped to the image, duplicate dropped
    assert json.loads(ds.coco_gt_path.read_text())["annotations"][0]["bbox"] == [0, 0, 50, 40]


# ----------------------------------------------------------------------------------------------- pycocotools

def _gt(boxes: list[tuple[int | str, int, list[float]]]) -> dict:
    ids = sorted({b[0] for b in boxes}, key=str)
    return {"images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in ids],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": bbox, "area": bbox[2] * bbox[3],
                             "iscrowd": 0} for k, (i, c, bbox) in enumerate(boxes)],
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)]}


GT_BOXES = [(7, 1, [10, 10, 40, 40]), (7, 2, [100, 20, 50, 30]), ("cam_a", 1, [50, 60, 20, 60]),
            ("cam_a", 1, [120, 120, 60, 40])]


def _predictions(shift: float, scores: list[float] | None = None) -> list[dict]:
    """GT boxes as predictions, moved right by ``shift`` of their width (IoU = (1 - shift) / (1 + shift))."""
    scores = scores or [0.9] * len(GT_BOXES)
    return [{"image_id": i, "category_id": c, "bbox": [x + shift * w, y, w, h], "score": s}
            for (i, c, (x, y, w, h)), s in zip(GT_BOXES, scores)]


def test_coco_map_perfect_predictions_score_one():
    scores = coco_map(_gt(GT_BOXES), _predictions(0.0))
    assert scores.map50 == pytest.approx(1.0) and scores.map50_95 == pytest.approx(1.0)


def test_coco_map_shifted_predictions_give_hand_computed_values():
    # Shift 0.2: IoU = 0.8 / 1.2 = 0.667, a hit at the IoU thresholds 0.50..0.65 (4 of 10) -> 1.0 and 0.4.
    scores = coco_map(_gt(GT_BOXES), _predictions(0.2))
    assert scores.map50 == pytest.approx(1.0) and scores.map50_95 == pytest.approx(0.4)
    # Shift 0.5 (IoU 1/3, a miss everywhere) for the two lower-scored People boxes: People has precision 1 up to
    # recall 1/3 and never reaches more, i.e. 34 of COCO's 101 recall points; Car (class 2) stays perfect.
    mixed = _predictions(0.0, [0.9, 0.9, 0.5, 0.4])
    for p in mixed[2:]:
        p["bbox"][0] += 0.5 * p["bbox"][2]
    scores = coco_map(_gt(GT_BOXES), mixed)
    assert scores.map50 == pytest.approx((34 / 101 + 1.0) / 2)
    assert scores.map50_95 == pytest.approx((34 / 101 + 1.0) / 2)


def test_coco_map_on_a_subset_of_images():
    # The People misses of the mixed case are both on image "cam_a": restricted to image 7 everything is perfect,
    # restricted to "cam_a" only People is left and it never gets past recall 0 (both boxes missed).
    mixed = _predictions(0.0, [0.9, 0.9, 0.5, 0.4])
    for p in mixed[2:]:
        p["bbox"][0] += 0.5 * p["bbox"][2]
    assert coco_map(_gt(GT_BOXES), mixed, image_ids=[7]).map50 == pytest.approx(1.0)
    assert coco_map(_gt(GT_BOXES), mixed, image_ids=["cam_a"]).map50 == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_map(_gt(GT_BOXES), mixed, image_ids=["nope"])


def test_coco_map_edge_cases():
    assert coco_map(_gt(GT_BOXES), []).map50 == 0.0
    assert coco_map({**_gt(GT_BOXES), "annotations": []}, []).map50 is None  # undefined, not 0
    with pytest.raises(ValueError, match="unknown image ids"):
        coco_map(_gt(GT_BOXES), [{"image_id": "00007", "category_id": 1, "bbox": [10, 10, 40, 40], "score": 1}])


def test_coco_map_on_an_export_with_numeric_and_string_ids(tmp_path):
    images, annotations = make_synthetic(tmp_path / "src", 3)
    images["cam_a"], annotations["cam_a"] = images["00002"], Annotation("cam_a", 96, 96, annotations["00002"].boxes)
    ds = export_yolo_dataset(images, annotations, {"train": ["00000"], "val": ["00001", "cam_a", "00002"]},
                             tmp_path / "yolo")
    gt = json.loads(ds.coco_gt_path.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    assert coco_map(ds.coco_gt_path, perfect).map50 == pytest.approx(1.0)


def _ultralytics_scores(gt: dict, predictions: list[dict], save_dir: Path) -> tuple[float, float]:
    """(mAP@50, mAP@50:95) of COCO-format ``predictions`` by Ultralytics' own metric code: the detection
    validator's matching (``match_predictions``, IoU thresholds 0.50:0.95) per image and ``DetMetrics`` (which
    calls ``ap_per_class``), as ``YOLO.val`` does after NMS."""
    import torch

    from detection.ultralytics_env import setup_offline

    setup_offline(save_dir / ".ultralytics")
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils.metrics import DetMetrics, box_iou

    validator = DetectionValidator(save_dir=save_dir / "val")
    metrics = DetMetrics(names={c["id"] - 1: c["name"] for c in gt["categories"]})

    def xyxy(boxes):
        return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float64).reshape(-1, 4)

    for image in gt["images"]:
        truth = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        preds = sorted((p for p in predictions if p["image_id"] == image["id"]), key=lambda p: -p["score"])
        pred_cls = torch.tensor([p["category_id"] - 1 for p in preds])
        true_cls = torch.tensor([a["category_id"] - 1 for a in truth])
        iou = box_iou(xyxy([a["bbox"] for a in truth]), xyxy([p["bbox"] for p in preds]))
        tp = validator.match_predictions(pred_cls, true_cls, iou).numpy() if preds else np.zeros((0, 10), bool)
        metrics.update_stats({"tp": tp, "conf": np.array([p["score"] for p in preds]), "pred_cls": pred_cls.numpy(),
                              "target_cls": true_cls.numpy(), "target_img": np.unique(true_cls.numpy()),
                              "im_name": str(image["id"])})
    metrics.process()
    return float(metrics.box.map50), float(metrics.box.map)


def _realistic_set(seed: int = 0, n_images: int = 40) -> tuple[dict, list[dict]]:
    """Random boxes of three classes on ``n_images`` images and predictions as a decent detector makes them:
    most boxes found with jittered corners and spread scores, some missed, a few false alarms."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    for image_id in range(n_images):
        images.append({"id": image_id, "width": 200, "height": 200, "file_name": f"{image_id}.png"})
        for _ in range(int(rng.integers(1, 6))):
            w, h = rng.uniform(15, 60, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 200 - h)
            category = int(rng.integers(1, 4))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < 0.15:
                continue  # missed
            jitter = rng.normal(0, 0.08, 4)
            predictions.append({"image_id": image_id, "category_id": category, "score": float(rng.uniform(0.3, 1)),
                                "bbox": [x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]),
                                         h * (1 + jitter[3])]})
        for _ in range(int(rng.integers(0, 3))):  # false alarms
            w, h = rng.uniform(15, 60, 2)
            predictions.append({"image_id": image_id, "category_id": int(rng.integers(1, 4)),
                                "score": float(rng.uniform(0, 0.7)), "bbox": [*rng.uniform(0, 140, 2), w, h]})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}, predictions


def test_ultralytics_and_pycocotools_agree_where_map_is_far_from_zero(tmp_path):
    """The same predictions scored by Ultralytics' metric code and by pycocotools (``coco_map``), on a set where
    mAP@50 is about 0.8. They differ only by the AP integration (``detection.coco_eval``'s docstring): COCO
    averages the precision envelope's step values at 101 recall points, Ultralytics integrates the envelope,
    linearly interpolated at the same points, with the trapezoid rule and ends it at precision 0 at recall 1.
    Hand-computed on one class with two boxes: found at once, COCO 1.0 and Ultralytics 0.995; found with a false
    alarm between them, COCO (51 + 50 * 2/3) / 101 and Ultralytics 0.8283. On a realistic set the gap stays
    within 0.01 (about 0.005 measured, ``../shared/ULTRALYTICS_OFFLINE.md`` section 5)."""
    two = [(0, 1, [10, 10, 40, 40]), (0, 1, [100, 100, 50, 30])]
    gt = _gt(two)
    perfect = [{"image_id": 0, "category_id": 1, "bbox": b, "score": 0.9} for _, _, b in two]
    assert coco_map(gt, perfect).map50 == pytest.approx(1.0)
    assert _ultralytics_scores(gt, perfect, tmp_path)[0] == pytest.approx(0.995)
    with_false_alarm = [{**perfect[0], "score": 0.9}, {**perfect[1], "score": 0.7},
                        {"image_id": 0, "category_id": 1, "bbox": [150, 10, 30, 30], "score": 0.8}]
    assert coco_map(gt, with_false_alarm).map50 == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert _ultralytics_scores(gt, with_false_alarm, tmp_path)[0] == pytest.approx(0.828333, abs=1e-6)

    gt, predictions = _realistic_set()
    ours = coco_map(gt, predictions)
    theirs = _ultralytics_scores(gt, predictions, tmp_path)
    assert ours.map50 > 0.6 and ours.map50_95 > 0.2
    assert abs(theirs[0] - ours.map50) < 0.01
    assert abs(theirs[1] - ours.map50_95) < 0.01
    # the check can fail: a box convention off by one corner (xyxy read as xywh) moves pycocotools far away
    shifted = [{**p, "bbox": [p["bbox"][0], p["bbox"][1], p["bbox"][0] + p["bbox"][2], p["bbox"][1] + p["bbox"][3]]}
               for p in predictions]
    assert abs(coco_map(gt, shifted).map50 - theirs[0]) > 0.2


# ---------------------------------------------------------------------------------------------------- presets

def test_presets_load_and_every_key_is_commented():
    assert preset_names() == ["paper", "standard", "quick", "tiny"]
    paper = load_preset("paper")
    assert (paper.imgsz, paper.epochs, paper.batch) == (640, 300, 16)
    assert paper.train_args["optimizer"] == "SGD" and paper.train_args["lr0"] == 0.01
    assert load_preset("standard").imgsz == 640 and "time" in load_preset("standard").train_args
    tiny = load_preset("tiny")
    assert tiny.imgsz <= 128 and tiny.epochs <= 2
    kwargs = load_preset("standard").train_kwargs()
    assert "time" not in kwargs["extra_args"]  # null means "no cap" and is not passed to Ultralytics
    with pytest.raises(KeyError, match="paper, standard, quick, tiny"):
        load_preset("huge")

    lines = PRESETS_PATH.read_text().splitlines()
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and line.startswith(" "):  # a key inside a preset
            previous = next(p.strip() for p in reversed(lines[:n]) if p.strip())
            assert previous.startswith("#"), f"presets.yaml line {n + 1} has no comment: {line!r}"


# ----------------------------------------------------------------------------------------- TensorBoard mirror

class _Writer:
    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass


def _trainer(epoch: int, stop: bool, with_val_losses: bool = True) -> SimpleNamespace:
    metrics = {"metrics/precision(B)": 0.5, "metrics/recall(B)": 0.25, "metrics/mAP50(B)": 0.3 + epoch / 10,
               "metrics/mAP50-95(B)": 0.1}
    if with_val_losses:
        metrics["val/box_loss"] = 1.5
    return SimpleNamespace(
        epoch=epoch, epochs=2, stop=stop, tloss=object(), metrics=metrics, lr={"lr/pg0": 0.01}, epoch_time=3.0,
        label_loss_items=lambda loss, prefix: {f"{prefix}/box_loss": 2.0, f"{prefix}/cls_loss": 1.0},
    )


def test_tensorboard_mirror_logs_epochs_and_treats_the_extra_call_as_best():
    writer = _Writer()
    mirror = TensorBoardMirror(writer, "detect/ir/")
    mirror(_trainer(0, stop=False))
    mirror(_trainer(1, stop=True))  # the last epoch sets trainer.stop
    mirror(_trainer(2, stop=True, with_val_losses=False))  # Ultralytics' final_eval on best.pt
    steps = {(tag, step) for tag, _, step in writer.scalars}
    assert {("detect/ir/train/box_loss", 1), ("detect/ir/mAP50", 2), ("detect/ir/val/box_loss", 2),
            ("detect/ir/lr/pg0", 1), ("detect/ir/precision", 1), ("detect/ir/best/mAP50", 2)} <= steps
    assert max(step for _, _, step in writer.scalars) == 2  # no phantom epoch 3
    assert ("detect/ir/best/mAP50", 0.5, 2) in writer.scalars


def test_tensorboard_mirror_replays_results_csv_for_runs_it_never_saw(tmp_path):
    # Ultralytics' DDP subprocesses (--device 0,1) never call in-process callbacks; results.csv has the curves.
    (tmp_path / "results.csv").write_text(
        "epoch,time,train/box_loss,metrics/mAP50(B),val/box_loss,lr/pg0\n1,2.5,4.0,0.1,5.0,0.01\n2,6.0,3.0,0.2,4.5,0.005\n")
    writer = _Writer()
    mirror = TensorBoardMirror(writer, "detect/ir")
    assert not mirror.received
    assert mirror.replay_results_csv(tmp_path / "results.csv") == 2
    assert {("detect/ir/train/box_loss", 4.0, 1), ("detect/ir/mAP50", 0.2, 2), ("detect/ir/val/box_loss", 4.5, 2),
            ("detect/ir/lr/pg0", 0.005, 2), ("detect/ir/epoch_time_s", 2.5, 1), ("detect/ir/epoch_time_s", 3.5, 2)} \
        <= set(writer.scalars)
    assert mirror.received


# -------------------------------------------------------------------------------------------------- training

def test_train_rejects_bad_arguments_before_any_work(tmp_path):
    images, annotations = make_synthetic(tmp_path / "src", 2)
    ds = export_yolo_dataset(images, annotations, {"train": ["00000"], "val": ["00001"]}, tmp_path / "yolo")
    with pytest.raises(ValueError) as info:
        train_and_evaluate(ds, model="yolov8n", weights=tmp_path / "missing.pt", epochs=1, imgsz=64, batch=2,
                           out_dir=tmp_path / "runs", extra_args={"data": "x.yaml"}, eval_split="test")
    message = str(info.value)
    for expected in ("model 'yolov8n' must be a model yaml", "missing.pt", "may not set data", "'test'"):
        assert expected in message
    assert not (tmp_path / "runs").exists()


class _FakeUltralytics:
    """Stands in for Ultralytics' training and validation in ``detection.train`` (milliseconds): records every call;
    a training writes ``weights/last.pt`` (resumable: epoch and optimizer) after epoch 1 and stops there when
    ``interrupt`` is set, else finishes with ``best.pt``; a validation writes an empty ``predictions.json``."""

    def __init__(self, monkeypatch):
        import detection.train as train_module

        self.calls: list[str] = []
        self.interrupt = False
        monkeypatch.setattr(train_module, "_fit", self.fit)
        monkeypatch.setattr(train_module, "_evaluate", self.evaluate)
        monkeypatch.setattr(train_module, "setup_offline", lambda *a, **k: None)

    def fit(self, model, train_args, mirror):
        import torch

        resume = bool(train_args.get("resume"))
        folder = Path(model).parents[1] if resume else Path(train_args["project"]) / train_args["name"]
        self.calls.append(f"resume {folder.name}" if resume else f"train {folder.name}")
        (folder / "weights").mkdir(parents=True, exist_ok=True)
        if not resume:
            torch.save({"epoch": 0, "optimizer": {"lr": 0.01}}, folder / "weights" / "last.pt")
            (folder / "results.csv").write_text("epoch,time\n1,1.0\n")
            if self.interrupt:
                raise KeyboardInterrupt("simulated interruption after epoch 1")
        with (folder / "results.csv").open("a") as f:
            f.write("2,2.0\n")
        for kind in ("last", "best"):
            torch.save({"epoch": -1, "optimizer": None}, folder / "weights" / f"{kind}.pt")

    def evaluate(self, weights, dataset, run_dir, *, eval_split, imgsz, batch, device, workers, protocol="field"):
        from detection.coco_eval import CocoScores

        self.calls.append(f"evaluate {run_dir.name} {protocol}")
        eval_dir = run_dir / (f"eval_{eval_split}" if protocol == "field" else f"eval_{eval_split}_{protocol}")
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / "predictions.json").write_text("[]")
        box = SimpleNamespace(map50=0.5, map=0.3, mp=0.4, mr=0.6, ap_class_index=[], ap50=[])
        return SimpleNamespace(box=box), CocoScores(0.5, 0.3, 0, {}), eval_dir / "predictions.json"


def _tiny_export(tmp_path):
    images, annotations = make_synthetic(tmp_path / "src", 4)
    return export_yolo_dataset(images, annotations, {"train": ["00000", "00001"], "val": ["00002", "00003"]},
                               tmp_path / "yolo")


def test_a_detector_run_is_a_store_folder_resumed_reused_and_forced_once(tmp_path, monkeypatch):
    """Training and evaluation happen in ``<name>.partial``, renamed to ``<name>`` with the result as its record:
    an interrupted run resumes from its last checkpoint, a finished one is reused, a forced store trains it again."""
    fake = _FakeUltralytics(monkeypatch)
    ds, runs = _tiny_export(tmp_path), tmp_path / "runs"
    kwargs = {"model": "yolov8n.yaml", "epochs": 2, "imgsz": 64, "batch": 2, "out_dir": runs, "name": "c"}
    fake.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(ds, **kwargs)
    assert not (runs / "c").exists() and (runs / "c.partial" / "weights" / "last.pt").is_file()

    fake.interrupt = False
    result = train_and_evaluate(ds, **kwargs)
    assert fake.calls == ["train c.partial", "resume c.partial", "evaluate c.partial field",
                          "evaluate c.partial deployed"]
    assert result.resumed and result.epochs_completed == 2 and not (runs / "c.partial").exists()
    assert result.run_dir == str(runs / "c")
    for path in (result.predictions_path, result.deployed_predictions_path):
        assert Path(path).is_file() and Path(path).is_relative_to(runs / "c")
    assert sorted(p.name for p in (runs / "c").iterdir() if p.name.startswith(".") or p.suffix == ".json") == [
        "detection_result.json"]  # the store's record; no progress record left

    fake.calls.clear()
    assert train_and_evaluate(ds, **kwargs) == result and fake.calls == []  # finished: reused
    forced = train_and_evaluate(ds, **kwargs, store=KeyedStore(runs, force=True))
    assert fake.calls[0] == "train c.partial" and not forced.resumed  # from scratch, not resumed
    assert forced.key == result.key and not (runs / "c.partial").exists()


def test_a_run_folder_written_by_the_previous_version_is_reused_or_trained_again(tmp_path, monkeypatch):
    """The previous version kept ``run_state.json`` and ``detection_result.json`` in ``<name>/`` itself: a finished
    run is reused (the same record); one it left interrupted, or one scored before the deployed protocol, is
    trained again from scratch and replaces the folder whole."""
    from data.io import read_record, write_record

    fake = _FakeUltralytics(monkeypatch)
    ds, runs = _tiny_export(tmp_path), tmp_path / "runs"
    kwargs = {"model": "yolov8n.yaml", "epochs": 2, "imgsz": 64, "batch": 2, "out_dir": runs, "name": "old"}
    result = train_and_evaluate(ds, **kwargs)
    run = runs / "old"
    write_record(run / "run_state.json", result.key, {"trained": True, "settings": {}})
    fake.calls.clear()
    assert train_and_evaluate(ds, **kwargs) == result and fake.calls == []

    legacy = {k: v for k, v in read_record(run / "detection_result.json").items()
              if k != "deployed_predictions_path"}
    write_record(run / "detection_result.json", result.key, legacy)
    again = train_and_evaluate(ds, **kwargs)
    assert fake.calls[0] == "train old.partial" and again.deployed_predictions_path
    assert not (run / "run_state.json").exists()

    (run / "detection_result.json").unlink()  # killed during training by the previous version
    write_record(run / "run_state.json", result.key, {"trained": False, "settings": {}})
    fake.calls.clear()
    train_and_evaluate(ds, **kwargs)
    assert fake.calls[0] == "train old.partial" and not (run / "run_state.json").exists()


_TINY_RUN_SCRIPT = """
import json, sys
from pathlib import Path
from torch.utils.tensorboard import SummaryWriter
from data.store import KeyedStore
from tests.test_detection import make_synthetic
from detection import export_yolo_dataset, load_preset, train_and_evaluate

work = Path(sys.argv[1])
images, annotations = make_synthetic(work / "src", 12)
ids = sorted(images)
ds = export_yolo_dataset(images, annotations, {"train": ids[:8], "val": ids[8:]}, work / "yolo")
kwargs = load_preset("tiny").train_kwargs()
writer = SummaryWriter(str(work / "tb"))
a = train_and_evaluate(ds, **kwargs, out_dir=work / "runs", name="a", tb_writer=writer, tb_prefix="detect/a")
csv_stamp = (work / "runs" / "a" / "results.csv").stat().st_mtime_ns
b = train_and_evaluate(ds, **kwargs, out_dir=work / "runs", name="b")
again = train_and_evaluate(ds, **kwargs, out_dir=work / "runs", name="a")
writer.close()
b_csv = work / "runs" / "b" / "results.csv"
b_stamp = b_csv.stat().st_mtime_ns


class Epochs:  # a TensorBoard writer that records which epochs Ultralytics really trained in this call
    def __init__(self):
        self.trained = []

    def add_scalar(self, tag, value, step):
        if tag.endswith("/train/box_loss"):  # logged once per trained epoch (the final evaluation logs best/...)
            self.trained.append(step)

    def flush(self):
        pass


class Interrupt(Epochs):  # ... and stops the process's training after the first epoch
    def flush(self):
        raise KeyboardInterrupt("simulated interruption after epoch 1")


forced_writer = Epochs()
b_forced = train_and_evaluate(ds, **kwargs, out_dir=work / "runs", name="b", tb_writer=forced_writer,
                              store=KeyedStore(work / "runs", force=True))
b_forced_epochs, b_csv_rewritten = forced_writer.trained, b_csv.stat().st_mtime_ns != b_stamp

before, after = Interrupt(), Epochs()
try:
    train_and_evaluate(ds, **kwargs, out_dir=work / "runs", name="c", tb_writer=before)
    raise SystemExit("the interruption did not happen")
except KeyboardInterrupt:
    pass
interrupted = not (work / "runs" / "c" / "detection_result.json").exists()
c = train_and_evaluate(ds, **kwargs, out_dir=work / "runs", name="c", tb_writer=after)
c_csv_epochs = [int(line.split(",")[0]) for line in (work / "runs" / "c" / "results.csv").read_text().splitlines()[1:]]

# Local weights under a name Ultralytics would rewrite (yolov5s.pt -> yolov5su.pt) and then try to download. Their
# first convolution gets a pattern no initialisation makes, and the run learns at rate 0 (SGD, no warm-up): a
# detector that really starts from them still has that pattern when it is saved.
import torch

state = torch.load(Path(a.run_dir) / "weights" / "best.pt", map_location="cpu", weights_only=False)
first = state["model"].model[0].conv.weight
pattern = (torch.arange(first.numel()) % 7).reshape(first.shape).to(first.dtype) * 0.01 - 0.03
first.data.copy_(pattern)
if state.get("ema") is not None:
    state["ema"].model[0].conv.weight.data.copy_(pattern)
trap = work / "yolov5s.pt"
torch.save(state, trap)
frozen = {**kwargs["extra_args"], "optimizer": "SGD", "lr0": 0.0, "warmup_epochs": 0, "warmup_bias_lr": 0.0}
d = train_and_evaluate(ds, **{**kwargs, "epochs": 1, "extra_args": frozen}, weights=trap, out_dir=work / "runs",
                       name="d")
d_first = {}
for kind in ("last", "best"):
    kept = torch.load(Path(d.run_dir) / "weights" / f"{kind}.pt", map_location="cpu", weights_only=False)
    d_first[kind] = float((kept["model"].model[0].conv.weight.float() - pattern.float()).abs().max())
summary = {"a": a.to_dict(), "b": b.to_dict(), "again": again.to_dict(), "c": c.to_dict(), "d": d.to_dict(),
           "interrupted_left_no_result": interrupted, "epochs": kwargs["epochs"],
           "csv_rewritten": (work / "runs" / "a" / "results.csv").stat().st_mtime_ns != csv_stamp,
           "c_epochs_before": before.trained, "c_epochs_resumed": after.trained, "c_csv_epochs": c_csv_epochs,
           "d_first_conv_off_pattern": d_first, "b_forced": b_forced.to_dict(), "b_forced_epochs": b_forced_epochs,
           "b_csv_rewritten": b_csv_rewritten}
(work / "summary.json").write_text(json.dumps(summary))
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One subprocess: export 12 synthetic images, train twice with the tiny preset, re-call the first run,
    train a third run that is interrupted after its first epoch and then resumed, and a fourth (1 epoch) that
    starts from the first run's weights."""
    base = tmp_path_factory.mktemp("tiny_run")
    home, cwd, work, netlog = base / "home", base / "cwd", base / "work", base / "netguard.log"
    home.mkdir(), cwd.mkdir()
    netlog.touch()
    env = {**os.environ, "HOME": str(home), "NETGUARD_LOG": str(netlog), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "OMP_WAIT_POLICY": "PASSIVE"}  # torch loads before setup_offline
    env.pop("MPLCONFIGDIR", None)
    env.pop("YOLO_CONFIG_DIR", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_TINY_RUN_SCRIPT), str(work)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((work / "summary.json").read_text())
    return SimpleNamespace(home=home, cwd=cwd, work=work, netlog=netlog, **summary)


@pytest.mark.slow
def test_tiny_run_is_offline_and_writes_only_under_its_folder(tiny_run):
    assert tiny_run.netlog.read_text() == ""  # no connection was even attempted
    assert list(tiny_run.home.rglob("*")) == []  # nothing in $HOME (settings, fonts, matplotlib cache)
    assert list(tiny_run.cwd.rglob("*")) == []  # no ./runs or ./datasets
    settings = tiny_run.work / "runs" / ".ultralytics" / "Ultralytics" / "settings.json"
    assert json.loads(settings.read_text())["sync"] is False
    assert (settings.parent / "Arial.ttf").is_file()
    for run in (tiny_run.a, tiny_run.b):
        assert Path(run["run_dir"]).is_relative_to(tiny_run.work / "runs")
        assert Path(run["predictions_path"]).is_relative_to(Path(run["run_dir"]))


@pytest.mark.slow
def test_tiny_run_result_has_every_class_and_marks_absent_ones(tiny_run):
    result = tiny_run.a
    assert list(result["ap50"]) == list(CLASS_NAMES)
    # The synthetic set draws People/Car/Lamp only; the 4 val images decide which of those are present.
    assert {"Bus", "Motorcycle", "Truck"} <= set(result["absent_classes"]) and "People" not in result["absent_classes"]
    for name in CLASS_NAMES:
        assert (result["ap50"][name] is None) == (name in result["absent_classes"])
        assert (result["n_boxes"][name] == 0) == (name in result["absent_classes"])
    assert result["n_images"] == 4 and result["epochs_completed"] == tiny_run.epochs
    json.dumps(result)  # JSON-serialisable as returned by to_dict()


@pytest.mark.slow
def test_tiny_run_ultralytics_and_pycocotools_agree(tiny_run):
    for run in (tiny_run.a, tiny_run.b):
        assert run["coco_map50"] is not None
        assert abs(run["map50"] - run["coco_map50"]) < 0.02


@pytest.mark.slow
def test_tiny_run_is_deterministic_and_reused(tiny_run):
    a, b = (Path(r["run_dir"]) / "results.csv" for r in (tiny_run.a, tiny_run.b))
    def without_time(path: Path) -> list[list[str]]:  # column 1 is the cumulative wall time
        return [row.split(",")[:1] + row.split(",")[2:] for row in path.read_text().splitlines()]

    assert without_time(a) == without_time(b)  # same seed and threads: identical losses and metrics every epoch
    for key in ("map50", "map50_95", "coco_map50", "ap50"):
        assert tiny_run.a[key] == tiny_run.b[key]
    assert tiny_run.again == tiny_run.a and not tiny_run.csv_rewritten  # the finished run was reused


@pytest.mark.slow
def test_force_trains_a_finished_run_again_from_scratch(tiny_run):
    """A forced store (the pipeline's --force): a finished run of the same key is not reused; every epoch is trained
    again from scratch (same seed: the same numbers), and its results.csv is written anew."""
    assert tiny_run.b_forced_epochs == list(range(1, tiny_run.epochs + 1))
    assert tiny_run.b_csv_rewritten and not tiny_run.b_forced["resumed"]
    assert tiny_run.b_forced["map50"] == tiny_run.b["map50"] and tiny_run.b_forced["ap50"] == tiny_run.b["ap50"]


@pytest.mark.slow
def test_interrupted_training_resumes_from_last_checkpoint(tiny_run):
    assert tiny_run.interrupted_left_no_result
    assert tiny_run.c["resumed"] and tiny_run.c["epochs_completed"] == tiny_run.epochs
    # What Ultralytics really trained: epoch 1 before the interruption, only epoch 2 after it (a retraining from
    # scratch or from an older checkpoint would train epoch 1 again), one results.csv row each.
    assert tiny_run.c_epochs_before == [1]
    assert tiny_run.c_epochs_resumed == list(range(2, tiny_run.epochs + 1))
    assert tiny_run.c_csv_epochs == list(range(1, tiny_run.epochs + 1))
    assert list(tiny_run.c["ap50"]) == list(CLASS_NAMES)


@pytest.mark.slow
def test_local_weights_initialise_training_without_a_download(tiny_run):
    assert tiny_run.d["weights"] == str(tiny_run.work / "yolov5s.pt")
    assert (Path(tiny_run.d["run_dir"]) / "initial_weights.pt").is_file()
    assert tiny_run.netlog.read_text() == ""
    # The given weights' first convolution (a pattern no initialisation makes), trained at rate 0, is still there
    # in the saved detector (fp16, so to its precision): the run started from those weights, not from scratch.
    assert tiny_run.d_first_conv_off_pattern["last"] < 1e-3
    assert tiny_run.d_first_conv_off_pattern["best"] < 1e-3


@pytest.mark.slow
def test_tiny_run_mirrors_metrics_to_tensorboard(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run.work / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/box_loss", "train/cls_loss", "val/box_loss", "precision", "recall", "mAP50", "mAP50-95",
                "lr/pg0", "best/mAP50"):
        assert f"detect/a/{tag}" in tags
    assert [e.step for e in events.Scalars("detect/a/mAP50")] == list(range(1, tiny_run.epochs + 1))
    assert [e.step for e in events.Scalars("detect/a/best/mAP50")] == [tiny_run.epochs]


def test_missing_faster_coco_eval_is_not_reported_to_users(tmp_path):
    """Ultralytics' own COCO evaluation step (``DetectionValidator.coco_evaluate``, run by ``val(save_json=True)``)
    without faster-coco-eval logs nothing after ``setup_offline``; other Ultralytics messages still pass."""
    import importlib.util
    import logging

    if importlib.util.find_spec("faster_coco_eval") is not None:
        pytest.skip("faster-coco-eval is installed here, so Ultralytics really evaluates with it")
    from detection.ultralytics_env import QuietMissingFasterCocoEval, setup_offline

    setup_offline(tmp_path / ".ultralytics")
    setup_offline(tmp_path / ".ultralytics")
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils import LOGGER

    quiet = [f for f in LOGGER.filters if isinstance(f, QuietMissingFasterCocoEval)]
    assert len(quiet) == 1  # once, however often setup_offline is called

    def messages() -> list[str]:
        seen: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        LOGGER.addHandler(handler)
        try:
            validator = DetectionValidator(args={"save_json": True})
            validator.jdict = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
            validator.gdict = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}
            assert validator.coco_evaluate({}, validator.jdict, validator.gdict) == {}
            LOGGER.warning("another warning")
        finally:
            LOGGER.removeHandler(handler)
        return seen

    shown = messages()
    assert len(shown) == 1 and shown[0].endswith("another warning")
    LOGGER.removeFilter(quiet[0])  # what users saw before: the step does log about faster-coco-eval
    try:
        assert sum("faster-coco-eval" in m for m in messages()) >= 2
    finally:
        LOGGER.addFilter(quiet[0])


def test_epochs_completed_counts_an_epoch_trained_again_after_a_kill_once(tmp_path):
    from detection.train import _epochs_completed

    header = "epoch,time,train/box_loss\n"
    (tmp_path / "results.csv").write_text(header + "1,1.0,5.0\n2,2.0,4.0\n2,2.1,4.1\n")  # epoch 2 redone on resume
    assert _epochs_completed(tmp_path) == 2
    assert _epochs_completed(tmp_path / "missing") == 0
