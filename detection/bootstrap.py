"""Confidence intervals for mAP@50 and for the gain of one detector over another, from the images themselves.

The evaluation images are the unit of noise: a paired bootstrap draws the same resampled images (with repetition)
for every candidate, so a gain's interval reflects how much the verdict depends on which images happened to be in
the split. It is fast because the expensive part happens once:

1. ``image_matches``: pycocotools matches each saved prediction to the ground truth at IoU 0.5 (per image and
   class, top 300 per image, exactly as ``COCOeval.evaluate`` does) and the detections are put in the order its
   ``accumulate`` sorts them in;
2. ``map50(matches, weights)``: the AP of each class is recomputed in NumPy for many image weightings at once
   (a weight is how often an image was drawn): the cumulative true and false positives at each true positive, COCO's
   precision envelope and its 101 recall points. Only true positives can set a recall point, so false positives are
   counted per segment between true positives (a sparse product) and never sorted again.

With all weights 1 the result is pycocotools' mAP@50 to floating-point rounding (a test checks 1e-6); with
resampled weights it is pycocotools' mAP@50 on the resampled image set, up to the order of exactly tied scores.
With several detector seeds, images are resampled within each seed (independently per seed) and the gain is the
mean over seeds, so the interval covers the image noise of every seed's detector.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .coco_eval import MAX_DETS, _prepare, run_cocoeval

# COCO's recall points (pycocotools Params.recThrs) and the eps its precision adds to the denominator.
RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_EPS = np.spacing(1)
DEFAULT_RESAMPLES = 1000
CHUNK = 250  # resamples computed at once: bounds memory at (CHUNK x true positives) floats per class


@dataclass
class ClassMatches:
    """One class's detections in accumulation order: which image each came from and whether it was a TP."""

    image: np.ndarray      # (D,) int: index into ImageMatches.image_ids
    tp: np.ndarray         # (D,) bool


@dataclass
class ImageMatches:
    """Per-image matches of one prediction set against the ground truth, at IoU 0.5, for each class."""

    image_ids: list[Any]               # the ground truth's image ids, in its order
    category_ids: list[int]
    n_gt: np.ndarray                   # (n_images, n_classes) ground-truth boxes that count
    classes: list[ClassMatches]


def image_matches(ground_truth: str | Path | Mapping[str, Any], predictions: str | Path | Sequence[Mapping[str, Any]]
                  ) -> ImageMatches:
    """Match ``predictions`` to ``ground_truth`` once (pycocotools ``evaluate`` at IoU 0.5, area 'all', top 300)."""
    gt, preds, empty = _prepare(ground_truth, predictions, None)
    gt_images = [image["id"] for image in gt["images"]]
    category_ids = [c["id"] for c in gt["categories"]]
    if empty is not None:  # no boxes or no predictions: every detection list is empty
        n_gt = np.zeros((len(gt_images), len(category_ids)))
        row = {i: k for k, i in enumerate(gt_images)}
        col = {c: k for k, c in enumerate(category_ids)}
        for ann in gt["annotations"]:
            if not ann.get("iscrowd", 0):
                n_gt[row[ann["image_id"]], col[ann["category_id"]]] += 1
        empty_class = ClassMatches(np.zeros(0, np.int64), np.zeros(0, bool))
        return ImageMatches(gt_images, category_ids, n_gt, [empty_class] * len(category_ids))
    evaluator = run_cocoeval(gt, preds)
    params = evaluator.params
    img_ids, cat_ids = list(params.imgIds), list(params.catIds)
    n_img, n_area = len(img_ids), len(params.areaRng)
    max_det = params.maxDets[-1]
    t50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    n_gt = np.zeros((n_img, len(cat_ids)))
    classes = []
    for k in range(len(cat_ids)):
        scores, images, tps, ignored = [], [], [], []
        for i in range(n_img):
            e = evaluator.evalImgs[k * n_area * n_img + i]  # area range 0 is 'all'
            if e is None:
                continue
            n_gt[i, k] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            d = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            scores.append(d)
            images.append(np.full(len(d), i, np.int64))
            tps.append(np.asarray(e["dtMatches"])[t50, :max_det] > 0)
            ignored.append(np.asarray(e["dtIgnore"])[t50, :max_det].astype(bool))
        if not scores:
            classes.append(ClassMatches(np.zeros(0, np.int64), np.zeros(0, bool)))
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")  # as COCOeval.accumulate sorts
        keep = ~np.concatenate(ignored)[order]                         # ignored detections count as neither
        classes.append(ClassMatches(np.concatenate(images)[order][keep], np.concatenate(tps)[order][keep]))
    original = gt["original_ids"]
    return ImageMatches([original[i] for i in img_ids], cat_ids, n_gt, classes)


def _class_ap(matches: ClassMatches, n_gt: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP@50 of one class for each row of ``weights`` (B, n_images); NaN where the class has no weighted box."""
    from scipy import sparse

    n_rows = weights.shape[0]
    npig = weights @ n_gt                                          # (B,)
    ap = np.full(n_rows, np.nan)
    defined = npig > 0
    tp_images = matches.image[matches.tp]
    if tp_images.size == 0:
        ap[defined] = 0.0
        return ap
    # Each false positive belongs to the segment after the true positives that precede it.
    segment = np.cumsum(matches.tp)[~matches.tp]
    fp_images = matches.image[~matches.tp]
    n_tp = tp_images.size
    counts = sparse.csr_matrix((np.ones(fp_images.size), (fp_images, segment)), shape=(n_gt.size, n_tp + 1))
    for start in range(0, n_rows, CHUNK):
        w = weights[start:start + CHUNK]
        tp_cum = np.cumsum(w[:, tp_images], axis=1)                         # (b, n_tp)
        fp_cum = np.cumsum(np.asarray((counts.T @ w.T).T)[:, :n_tp], axis=1)  # FPs before each TP
        precision = tp_cum / (fp_cum + tp_cum + _EPS)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for row in range(w.shape[0]):
            b = start + row
            if not defined[b]:
                continue
            recall = tp_cum[row] / npig[b]
            at = np.searchsorted(recall, RECALL_POINTS, side="left")
            q = np.where(at < n_tp, envelope[row, np.minimum(at, n_tp - 1)], 0.0)
            ap[b] = q.mean()
    return ap


def map50(matches: ImageMatches, weights: np.ndarray | None = None) -> np.ndarray:
    """mAP@50 (mean AP over classes with boxes) for each row of ``weights`` (B, n_images); all ones when None."""
    if weights is None:
        weights = np.ones((1, len(matches.image_ids)))
    weights = np.asarray(weights, dtype=np.float64)
    per_class = np.stack([_class_ap(c, matches.n_gt[:, k], weights) for k, c in enumerate(matches.classes)])
    defined = ~np.isnan(per_class)
    total = np.where(defined, per_class, 0.0).sum(axis=0)
    n = defined.sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def resample_weights(n_images: int, n_resamples: int, seed: int, stream: int = 0) -> np.ndarray:
    """(n_resamples, n_images) draw counts: each row is one bootstrap resample of the images (with repetition).

    ``stream`` (e.g. the index of a detector seed) gives an independent, reproducible set of draws per stream.
    """
    rng = np.random.default_rng([seed, stream])
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_resamples).astype(np.float64)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval."""

    point: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "low": self.low, "high": self.high, "level": self.level}


def percentile_interval(point: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    values = replicates[~np.isnan(replicates)]
    if values.size == 0:
        return Interval(point, float("nan"), float("nan"), level)
    low, high = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Interval(float(point), float(low), float(high), level)


class PairedBootstrap:
    """Replicates of mAP@50 for several candidates on the same resampled images, one set of draws per seed.

    ``add(name, matches_per_seed)`` computes a candidate's replicates; ``interval(name)`` its mAP@50 interval and
    ``gain(a, b)`` the interval of a's mAP@50 minus b's, both averaged over seeds (point: the full-set means).
    """

    def __init__(self, image_ids: Sequence[Any], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
        self.image_ids = list(image_ids)
        self.n_resamples, self.seed = n_resamples, seed
        self._weights: dict[int, np.ndarray] = {}
        self.points: dict[str, float] = {}
        self.replicates: dict[str, np.ndarray] = {}

    def weights(self, stream: int) -> np.ndarray:
        if stream not in self._weights:
            self._weights[stream] = resample_weights(len(self.image_ids), self.n_resamples, self.seed, stream)
        return self._weights[stream]

    def add(self, name: str, per_seed: Sequence[ImageMatches]) -> None:
        points, reps = [], []
        for stream, matches in enumerate(per_seed):
            if list(matches.image_ids) != self.image_ids:
                raise ValueError(f"{name}: seed {stream} was scored on other images than the bootstrap's")
            points.append(float(map50(matches)[0]))
            reps.append(map50(matches, self.weights(stream)))
        self.points[name] = float(np.mean(points))
        self.replicates[name] = np.mean(reps, axis=0)

    def interval(self, name: str) -> Interval:
        return percentile_interval(self.points[name], self.replicates[name])

    def gain(self, a: str, b: str) -> Interval:
        return percentile_interval(self.points[a] - self.points[b], self.replicates[a] - self.replicates[b])

    def describe(self) -> dict[str, Any]:
        return {"n_resamples": self.n_resamples, "seed": self.seed, "n_images": len(self.image_ids),
                "level": 0.95, "method": "paired percentile bootstrap over evaluation images, per seed, mean over "
                f"seeds; COCO 101-point AP@50, top {MAX_DETS[-1]} detections per image"}
