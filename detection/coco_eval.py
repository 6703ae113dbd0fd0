"""COCO mAP with pycocotools, as an independent check of Ultralytics' own mAP.

The predictions are Ultralytics' ``predictions.json`` (``val(save_json=True)``); the ground truth is the
export's ``annotations/<split>.json`` (same image-id and category-id conventions, see ``detection.export``).

Ultralytics keeps up to 300 detections per image, so the evaluation uses ``maxDets = [1, 100, 300]`` and reads
AP at 300; with COCO's default top-100 the two numbers can drift further apart. Both match detections to boxes
the same way, but integrate differently: COCO averages the precision envelope's step values at 101 recall points,
Ultralytics (``compute_ap``) integrates the envelope, linearly interpolated at the same points, with the trapezoid
rule, ending at precision 0 at recall 1 (a perfect detector: COCO 1.0, Ultralytics 0.995). So the two agree closely
on realistic prediction sets (about 0.005 in ``../shared/ULTRALYTICS_OFFLINE.md`` section 5; within 0.01 on the
hand-made set of ``tests/test_detection.py``) but not exactly.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Ultralytics' val keeps max_det=300 boxes per image; read COCO AP at that many (see the module docstring).
MAX_DETS = (1, 100, 300)


@dataclass(frozen=True)
class CocoScores:
    """pycocotools box AP over all areas at ``MAX_DETS[-1]`` detections per image.

    ``None`` when the ground truth has no boxes at all (AP is undefined, not 0).
    """

    map50: float | None
    map50_95: float | None
    n_predictions: int
    # category id -> AP@50 (101-point, as map50 averages them); None for a category without ground-truth boxes
    ap50: dict[int, float | None] | None = None


def _load(source: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> Any:
    if isinstance(source, (str, Path)):
        return json.loads(Path(source).read_text())
    return copy.deepcopy(source)


def coco_map(
    ground_truth: str | Path | Mapping[str, Any],
    predictions: str | Path | Sequence[Mapping[str, Any]],
    *,
    image_ids: Collection[int | str] | None = None,
) -> CocoScores:
    """mAP@50 and mAP@50:95 of ``predictions`` against ``ground_truth`` with pycocotools.

    Args:
        ground_truth: a COCO json (path or dict) with ``images``, ``annotations`` and ``categories``.
        predictions: a COCO results list (path or list) of ``{image_id, category_id, bbox: [x, y, w, h], score}``.
        image_ids: restrict the evaluation to these ground-truth image ids (e.g. one scenario's images); the
            other images' boxes and predictions are left out. ``None``: every image.

    Image ids may be ints or strings (Ultralytics' stem rule gives both); they are mapped to consecutive ints
    before pycocotools sees them, because it sorts the ids and cannot sort a mix.

    Raises:
        ValueError: a prediction names an image id or category the ground truth does not have (a convention
            mismatch would otherwise score as silently low AP).
    """
    gt, preds, empty = _prepare(ground_truth, predictions, image_ids)
    if empty is not None:
        return empty
    evaluator = run_cocoeval(gt, preds)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
    # precision: [iou thresholds (10), recall points (101), classes, area ranges (all first), max dets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {c: (float(precision[0, :, k].mean()) if (precision[0, :, k] > -1).all() else None)
                 for k, c in enumerate(evaluator.params.catIds)}
    return CocoScores(map50=_mean_defined(precision[0]), map50_95=_mean_defined(precision), n_predictions=len(preds),
                      ap50={c["id"]: per_class.get(c["id"]) for c in gt["categories"]})


def _prepare(ground_truth, predictions, image_ids):
    """(ground truth, predictions) checked, restricted to ``image_ids`` and renumbered for pycocotools, plus the
    scores to return at once when there is nothing to evaluate (else None)."""
    gt = _load(ground_truth)
    preds = list(_load(predictions))
    index = {image["id"]: i + 1 for i, image in enumerate(gt["images"])}
    categories = {c["id"] for c in gt["categories"]}
    bad_images = sorted({str(p["image_id"]) for p in preds if p["image_id"] not in index})
    bad_categories = sorted({p["category_id"] for p in preds if p["category_id"] not in categories})
    if bad_images or bad_categories:
        raise ValueError(
            "predictions do not match the ground truth: "
            + (f"unknown image ids {bad_images[:10]}{' ...' if len(bad_images) > 10 else ''}; " if bad_images else "")
            + (f"unknown category ids {bad_categories}" if bad_categories else "")
        )
    if image_ids is not None:
        keep = set(image_ids)
        unknown = sorted(str(i) for i in keep - set(index))
        if unknown:
            raise ValueError(f"image ids not in the ground truth: {unknown[:10]}")
        gt["images"] = [image for image in gt["images"] if image["id"] in keep]
        gt["annotations"] = [ann for ann in gt["annotations"] if ann["image_id"] in keep]
        preds = [p for p in preds if p["image_id"] in keep]
    category_ids = [c["id"] for c in gt["categories"]]
    if not gt["annotations"]:
        return gt, preds, CocoScores(None, None, len(preds), {c: None for c in category_ids})
    if not preds:
        with_boxes = {a["category_id"] for a in gt["annotations"]}
        return gt, preds, CocoScores(0.0, 0.0, 0, {c: (0.0 if c in with_boxes else None) for c in category_ids})
    gt["original_ids"] = {index[image["id"]]: image["id"] for image in gt["images"]}
    for image in gt["images"]:
        image["id"] = index[image["id"]]
    for ann in gt["annotations"]:
        ann["image_id"] = index[ann["image_id"]]
    for pred in preds:
        pred["image_id"] = index[pred["image_id"]]
    gt.setdefault("info", {})
    return gt, preds, None


def run_cocoeval(gt: Mapping[str, Any], preds: Sequence[Mapping[str, Any]]):
    """A pycocotools ``COCOeval`` (bbox, maxDets ``MAX_DETS``) after ``evaluate()``, on prepared inputs."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # pycocotools prints progress on every step; keep it out of the caller's output.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: v for k, v in gt.items() if k != "original_ids"}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(list(preds))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = list(MAX_DETS)
        evaluator.evaluate()
    return evaluator


def _mean_defined(values: np.ndarray) -> float:
    # -1 marks classes without ground truth; COCOeval.summarize averages the rest the same way.
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else 0.0
