"""Late fusion: one detector per modality, each run on its own images, and their boxes merged per image.

The inputs are the single-modality detectors' saved predictions (COCO results, as Ultralytics' ``predictions.json``
and :mod:`detection.coco_eval` use them: ``{image_id, category_id, bbox: [x, y, w, h], score}``); no detector is
trained or run again. Boxes are merged per image and per class by one of :data:`MERGERS`:

* ``wbf``: weighted boxes fusion (Solovyev, Wang and Gabruseva, "Weighted boxes fusion: Ensembling boxes from
  different object detection models", Image and Vision Computing 107, 2021; the ``ensemble-boxes`` package's
  ``weighted_boxes_fusion`` with ``conf_type='avg'``). Boxes are taken by falling score; each joins the cluster
  whose fused box it overlaps most with IoU > ``iou``, else starts one. A cluster's fused box is the
  score-weighted mean of its boxes' corners, its score the mean score times ``min(T, n) / T`` (``n`` boxes,
  ``T`` modalities, all weights 1), so a box only one of two detectors found keeps half its score.
* ``nms``: every modality's boxes together, then per-class NMS (``torchvision.ops.batched_nms``): the best box
  of each overlapping group survives unchanged.

Both merge class by class, so what a protocol (``detection.protocols``) makes of a box survives the merge: the
``field`` predictions (several labels per box) give the field's late fusion, the ``deployed`` predictions (one
class per box) the deployed one, and each is scored like any candidate (:func:`score_late_fusion`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.io import atomic_write_json
from detection.coco_eval import MAX_DETS, coco_map

# Per method, the IoU above which boxes are the same object, when the caller gives none: WBF's 0.55 is the
# paper's (and ensemble-boxes') default; NMS uses the 0.7 every detector's own NMS used in validation, so merging
# two detectors' boxes suppresses no more than each detector suppressed within its own.
DEFAULT_IOU = {"wbf": 0.55, "nms": 0.7}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with each of (K, 4) xyxy boxes (continuous coordinates, no +1)."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _wbf_one_class(boxes: np.ndarray, weighted: np.ndarray, iou: float, n_models: int, total_weight: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted boxes fusion of one class's boxes (N, 4) xyxy with their weighted scores (N,): (fused boxes,
    fused scores), clusters in the order they were started (by falling score)."""
    order = np.argsort(-weighted, kind="stable")  # ties: the modality given first, then its own order
    members: list[list[int]] = []
    fused = np.empty((0, 4))
    for j in order:
        overlap = _iou(boxes[j], fused) if len(fused) else np.empty(0)
        best = int(np.argmax(overlap)) if overlap.size else -1
        if best >= 0 and overlap[best] > iou:
            members[best].append(j)
            cluster = members[best]
            fused[best] = (weighted[cluster, None] * boxes[cluster]).sum(0) / weighted[cluster].sum()
        else:
            members.append([j])
            fused = np.vstack([fused, boxes[j]])
    # ensemble-boxes' rescaling, so that equal weights give the paper's mean score * min(T, n) / T
    fused_scores = np.array([weighted[c].sum() / len(c) * min(n_models, len(c)) / total_weight for c in members])
    return fused, fused_scores


def wbf(boxes: np.ndarray, scores: np.ndarray, weights: np.ndarray, categories: np.ndarray, iou: float, *,
        n_models: int, total_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted boxes fusion of one image's boxes, class by class.

    Args:
        boxes: (N, 4) xyxy from every modality; scores: (N,) their confidences; weights: (N,) their modality's
            weight; categories: (N,) their category ids; iou: a box joins a cluster of its class when its IoU
            with the cluster's fused box is above this;
        n_models, total_weight: how many modalities are merged and the sum of their weights, whether or not
            each found anything here (``T`` of the module docstring is both when every weight is 1).

    Returns:
        (fused xyxy (M, 4), fused scores (M,), their category ids (M,)).
    """
    weighted = scores * weights
    out_boxes, out_scores, out_categories = [np.empty((0, 4))], [np.empty(0)], [np.empty(0, np.int64)]
    for category in dict.fromkeys(categories.tolist()):  # classes in the order first met
        mine = categories == category
        fused, fused_scores = _wbf_one_class(boxes[mine], weighted[mine], iou, n_models, total_weight)
        out_boxes.append(fused)
        out_scores.append(fused_scores)
        out_categories.append(np.full(len(fused), category, np.int64))
    return np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_categories)


def nms(boxes: np.ndarray, scores: np.ndarray, weights: np.ndarray, categories: np.ndarray, iou: float, *,
        n_models: int, total_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class NMS of one image's boxes (``torchvision.ops.batched_nms``; same arguments as :func:`wbf`): each
    score is multiplied by its modality's weight (1 by default: unchanged), the kept boxes are returned as
    they were."""
    import torch
    from torchvision.ops import batched_nms

    weighted = scores * weights
    keep = batched_nms(torch.as_tensor(boxes, dtype=torch.float64), torch.as_tensor(weighted, dtype=torch.float64),
                       torch.as_tensor(categories, dtype=torch.int64), iou).numpy()
    return boxes[keep], weighted[keep], categories[keep]


MERGERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"wbf": wbf, "nms": nms}


def merge_predictions(
    predictions_by_modality: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    method: str = "wbf",
    iou: float | None = None,
    weights: Mapping[str, float] | None = None,
    max_det: int = MAX_DETS[-1],
) -> list[dict[str, Any]]:
    """Merge several detectors' predictions of the same images, per image and per class.

    Args:
        predictions_by_modality: modality -> that detector's COCO results on its own images of the same ids
            (``image_id`` and ``category_id`` as the export writes them, ``bbox`` ``[x, y, w, h]`` in pixels).
            An image one detector has no box for is merged from the others'.
        method: ``wbf`` or ``nms`` (module docstring).
        iou: boxes overlapping above this are one object; default :data:`DEFAULT_IOU` of the method.
        weights: modality -> weight (default 1 each): multiplies its scores in the merge.
        max_det: boxes kept per image, best first (Ultralytics keeps 300 and pycocotools reads AP at 300).

    Returns:
        COCO results ``{image_id, category_id, bbox, score}`` sorted by image (as first met), then falling score;
        ``bbox`` rounded to 3 decimals and ``score`` to 5, as Ultralytics writes them.
    """
    if method not in MERGERS:
        raise ValueError(f"unknown late-fusion method '{method}'; choose from {', '.join(MERGERS)}")
    if not predictions_by_modality:
        raise ValueError("merge_predictions needs the predictions of at least one modality")
    iou = DEFAULT_IOU[method] if iou is None else float(iou)
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou must be within 0..1, got {iou}")
    weight_of = {m: 1.0 for m in predictions_by_modality} | dict(weights or {})
    unknown = sorted(set(weight_of) - set(predictions_by_modality))
    if unknown or any(w <= 0 for w in weight_of.values()):
        raise ValueError(f"weights must be positive and name given modalities; got {dict(weights or {})}")
    total_weight = sum(weight_of[m] for m in predictions_by_modality)

    # image id -> rows (x0, y0, x1, y1, score, weight, category id), gathered in the modalities' order
    grouped: dict[Any, list[tuple[float, ...]]] = {}
    for modality, predictions in predictions_by_modality.items():
        for q in predictions:
            x, y, w, h = (float(v) for v in q["bbox"])
            grouped.setdefault(q["image_id"], []).append(
                (x, y, x + w, y + h, float(q["score"]), weight_of[modality], int(q["category_id"])))

    merge = MERGERS[method]
    merged: list[dict[str, Any]] = []
    for image_id, rows in grouped.items():
        table = np.array(rows, dtype=np.float64)
        boxes, scores, categories = merge(table[:, :4], table[:, 4], table[:, 5], table[:, 6].astype(np.int64), iou,
                                          n_models=len(predictions_by_modality), total_weight=total_weight)
        order = np.argsort(-scores, kind="stable")[:max_det]  # equal scores keep the merger's order
        for k in order:
            x0, y0, x1, y1 = (float(v) for v in boxes[k])
            merged.append({"image_id": image_id, "category_id": int(categories[k]),
                           "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                           "score": round(float(scores[k]), 5)})
    return merged


def merge_prediction_files(paths_by_modality: Mapping[str, str | Path], out_path: str | Path, *,
                           method: str = "wbf", iou: float | None = None, weights: Mapping[str, float] | None = None,
                           max_det: int = MAX_DETS[-1]) -> Path:
    """:func:`merge_predictions` of ``predictions.json`` files, written atomically to ``out_path``.

    A missing file is a detector that predicted nothing (Ultralytics then writes none) and contributes no box.
    """
    predictions = {m: (json.loads(Path(p).read_text()) if Path(p).is_file() else [])
                   for m, p in paths_by_modality.items()}
    merged = merge_predictions(predictions, method=method, iou=iou, weights=weights, max_det=max_det)
    out_path = Path(out_path)
    atomic_write_json(out_path, merged)
    return out_path


def score_late_fusion(
    results_by_modality: Mapping[str, Any],
    dataset: Any,
    out_dir: str | Path,
    *,
    method: str = "wbf",
    iou: float | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Late fusion of trained single-modality detectors, scored under every protocol like any candidate.

    Args:
        results_by_modality: modality -> its :class:`detection.train.DetectionResult` (or its ``to_dict()``),
            one seed each, evaluated on the same split of the same ids.
        dataset: a :class:`detection.export.YoloDataset` with that split's ground truth (any of the modalities'
            exports: they share ids and boxes).
        out_dir: where ``late_<method>_<protocol>.json`` (the merged predictions) are written.

    Returns:
        ``{protocol: {"map50", "map50_95", "ap50", "predictions_path"}}``, as
        :func:`detection.train.score_detector` returns (pycocotools; ``ap50`` by class name, None for a class
        the split has no box of).
    """
    from detection.protocols import PROTOCOLS

    results = {m: (r if isinstance(r, Mapping) else r.to_dict()) for m, r in results_by_modality.items()}
    splits = {r["eval_split"] for r in results.values()}
    if len(splits) != 1:
        raise ValueError(f"the detectors were evaluated on different splits: {sorted(splits)}")
    split = splits.pop()
    files = {"field": "predictions_path", "deployed": "deployed_predictions_path"}
    absent = {name for name in dataset.class_names if dataset.box_counts[split].get(name, 0) == 0}
    out_dir = Path(out_dir)
    scores = {}
    for protocol in PROTOCOLS.names():
        missing = sorted(m for m, r in results.items() if not r.get(files[protocol]))
        if missing:
            raise ValueError(f"no {protocol} predictions saved for {', '.join(missing)}")
        merged = merge_prediction_files({m: r[files[protocol]] for m, r in results.items()},
                                        out_dir / f"late_{method}_{protocol}.json", method=method, iou=iou,
                                        weights=weights)
        coco = coco_map(dataset.coco_gt(split), merged)
        per_category = coco.ap50 or {}
        scores[protocol] = {
            "map50": coco.map50, "map50_95": coco.map50_95,
            "ap50": {name: (None if name in absent else per_category.get(i + 1) or 0.0)
                     for i, name in enumerate(dataset.class_names)},
            "predictions_path": str(merged),
        }
    return scores
