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

Two sources of noise, one interval (:func:`seed_and_image_interval`). A verdict is about detectors trained with
*any* seed and scored on *any* images like these, so its interval must contain the noise of training (initial
weights, data order, and floating point that differs between machines) as well as that of the evaluation images.
With S detector seeds scored on the same n images, a candidate's estimate (the mean over seeds) varies by

    Var = sigma_img^2 + (sigma_seed^2 + sigma_seed_x_img^2) / S

where ``sigma_img^2`` is the image noise every seed shares (the same images are scored) and the second term is what
differs from seed to seed. Each term is estimated where it shows:

* the shared image part is the mean covariance, across pairs of seeds, of the seeds' bootstrap replicates, drawn
  on the *same* resampled images for every seed (paired across candidates and seeds);
* the per-seed part is the sample variance of the seeds' own full-set values (of the per-seed gains for a gain,
  candidates paired by seed index), divided by S.

With three seeds the per-seed part is known to 2 degrees of freedom only, so the interval is Student-t with
Welch-Satterthwaite degrees of freedom (the image part counts n - 1). In simulations with known noise
(``tests/test_interval_coverage.py``; 200-400 experiments of 3 seeds on 15-40 images, seed noise from small to
dominant) it covered the true gain 92-96% of the time; the images-only interval 52-91%, and a two-level percentile
bootstrap (resample the 3 seeds, then the images) 87-99.5%: too narrow when the seeds differ most, too wide when
they agree, because three resampled seeds can only spread the mean between the lowest and the highest one.
Counting seeds as a random effect beside the data sample follows Bouthillier et al., "Accounting for Variance in
Machine Learning Benchmarks" (MLSys 2021). The stratified bootstrap of Agarwal et al., "Deep RL at the Edge of the
Statistical Precipice" (NeurIPS 2021), stratifies runs by task; with one dataset it reduces to resampling the 3
seeds, the two-level bootstrap measured above. With one seed the
training noise is unknown: the interval is the images-only percentile bootstrap and says so (``n_seeds`` 1,
``provisional``).
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
        rows = np.flatnonzero(defined[start:start + w.shape[0]])
        if rows.size == 0:
            continue
        # For every row at once, how many recall values lie below each recall point (pycocotools' searchsorted
        # 'left'): each recall value is placed among the recall points (exact float comparisons, no offsets),
        # then counted per row and point. Recall never decreases along a row, so the count is that position.
        recall = tp_cum[rows] / npig[start + rows, None]
        n_points = RECALL_POINTS.size
        slot = np.searchsorted(RECALL_POINTS, recall, side="right")  # recall < RECALL_POINTS[k] <=> slot <= k
        flat = (slot + (n_points + 1) * np.arange(rows.size)[:, None]).ravel()
        per_slot = np.bincount(flat, minlength=rows.size * (n_points + 1)).reshape(rows.size, n_points + 1)
        at = np.cumsum(per_slot, axis=1)[:, :n_points]
        q = np.where(at < n_tp, np.take_along_axis(envelope[rows], np.minimum(at, n_tp - 1), axis=1), 0.0)
        ap[start + rows] = q.mean(axis=1)
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
    """A point estimate with its 95% interval and where the interval's width comes from.

    ``n_seeds`` detector seeds went into it. With one seed the interval is the images-only percentile bootstrap and
    ``provisional`` (training noise unknown); with several it is Student-t over both noise sources
    (:func:`seed_and_image_interval`), ``seed_std`` the spread of the per-seed values and ``image_se`` the standard
    error that the shared evaluation images add.
    """

    point: float
    low: float
    high: float
    level: float = 0.95
    n_seeds: int = 1
    seed_std: float | None = None   # sample std (ddof 1) of the per-seed values; None with one seed
    image_se: float | None = None   # standard error of the point from the shared evaluation images
    dof: float | None = None        # Welch-Satterthwaite degrees of freedom of the t interval; None: percentile

    @property
    def provisional(self) -> bool:
        """One detector seed: the noise of training is not in the interval, so no verdict may rest on it."""
        return self.n_seeds < 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {"point": self.point, "low": self.low, "high": self.high, "level": self.level,
                "n_seeds": self.n_seeds, "seed_std": self.seed_std, "image_se": self.image_se, "dof": self.dof,
                "provisional": self.provisional}


def percentile_interval(point: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    """The images-only percentile bootstrap interval (one seed, or the image part alone)."""
    values = replicates[~np.isnan(replicates)]
    image_se = float(np.std(values, ddof=1)) if values.size > 1 else None
    if values.size == 0:
        return Interval(float(point), float("nan"), float("nan"), level)
    low, high = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Interval(float(point), float(low), float(high), level, image_se=image_se)


def seed_and_image_interval(per_seed_points: np.ndarray, per_seed_replicates: np.ndarray, n_images: int,
                            level: float = 0.95) -> Interval:
    """The interval of a mean over seeds that holds both the seeds' and the shared images' noise.

    Args:
        per_seed_points: (S,) the value (mAP@50 or a gain) of each seed's detector on the full evaluation set.
        per_seed_replicates: (S, B) the same on B bootstrap resamples of the images, the same resamples for every
            seed (row b of every seed is scored on the same drawn images).
        n_images: evaluation images (the image part's degrees of freedom are n_images - 1).

    With S = 1 this is :func:`percentile_interval` (provisional). Otherwise point +- t * sqrt(shared image variance
    + per-seed variance / S), see the module docstring.
    """
    from scipy import stats

    points = np.asarray(per_seed_points, dtype=np.float64)
    reps = np.asarray(per_seed_replicates, dtype=np.float64)
    n_seeds = points.size
    if n_seeds == 1:
        return percentile_interval(float(points[0]), reps[0], level)
    point = float(points.mean())
    keep = ~np.isnan(reps).any(axis=0)
    reps = reps[:, keep]
    seed_var = float(np.var(points, ddof=1))
    if reps.shape[1] > 1:
        cov = np.cov(reps)
        # The image noise the seeds share: covariance between different seeds' replicates (a seed's own variance
        # also holds its seed-by-image part, which the spread of the per-seed values already counts).
        shared = cov[~np.eye(n_seeds, dtype=bool)].mean()
        image_var = max(float(shared), 0.0)
    else:
        image_var = 0.0
    seed_part = seed_var / n_seeds
    total = image_var + seed_part
    if total <= 0.0:
        return Interval(point, point, point, level, n_seeds, 0.0, 0.0, float("inf"))
    dof = total ** 2 / (seed_part ** 2 / (n_seeds - 1) + image_var ** 2 / max(n_images - 1, 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * np.sqrt(total)
    return Interval(point, point - half, point + half, level, n_seeds, float(np.sqrt(seed_var)),
                    float(np.sqrt(image_var)), float(dof))


class PairedBootstrap:
    """mAP@50 intervals for several candidates and their gains, with seed and image noise (module docstring).

    Every candidate and every seed is scored on the same bootstrap resamples of the evaluation images (paired), and
    candidates are paired by seed index. ``add(name, matches_per_seed)`` computes a candidate's replicates;
    ``interval(name)`` its mAP@50 interval and ``gain(a, b)`` the interval of a's mAP@50 minus b's (point: the
    full-set means over seeds). ``image_interval`` / ``image_gain`` are the images-only percentile intervals of the
    same means, which leave training noise out (shown for comparison, never used for a verdict).
    """

    def __init__(self, image_ids: Sequence[Any], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
        self.image_ids = list(image_ids)
        self.n_resamples, self.seed = n_resamples, seed
        self._weights: np.ndarray | None = None
        self.per_seed_points: dict[str, np.ndarray] = {}      # name -> (S,)
        self.per_seed_replicates: dict[str, np.ndarray] = {}  # name -> (S, B)

    def weights(self) -> np.ndarray:
        """The (B, n_images) resampled image counts every candidate and seed is scored on."""
        if self._weights is None:
            self._weights = resample_weights(len(self.image_ids), self.n_resamples, self.seed)
        return self._weights

    @property
    def points(self) -> dict[str, float]:
        """Each candidate's full-set value, the mean over its seeds."""
        return {name: float(p.mean()) for name, p in self.per_seed_points.items()}

    def add(self, name: str, per_seed: Sequence[ImageMatches]) -> None:
        for stream, matches in enumerate(per_seed):
            if list(matches.image_ids) != self.image_ids:
                raise ValueError(f"{name}: seed {stream} was scored on other images than the bootstrap's")
        self.per_seed_points[name] = np.array([float(map50(m)[0]) for m in per_seed])
        self.per_seed_replicates[name] = np.stack([map50(m, self.weights()) for m in per_seed])

    def _seeds(self, a: str, b: str) -> int:
        n_a, n_b = len(self.per_seed_points[a]), len(self.per_seed_points[b])
        if n_a != n_b:
            raise ValueError(f"'{a}' has {n_a} detector seeds and '{b}' {n_b}: a gain pairs them by seed")
        return n_a

    def interval(self, name: str) -> Interval:
        return seed_and_image_interval(self.per_seed_points[name], self.per_seed_replicates[name],
                                       len(self.image_ids))

    def gain(self, a: str, b: str) -> Interval:
        self._seeds(a, b)
        return seed_and_image_interval(self.per_seed_points[a] - self.per_seed_points[b],
                                       self.per_seed_replicates[a] - self.per_seed_replicates[b], len(self.image_ids))

    def image_interval(self, name: str) -> Interval:
        return percentile_interval(self.points[name], self.per_seed_replicates[name].mean(axis=0))

    def image_gain(self, a: str, b: str) -> Interval:
        self._seeds(a, b)
        return percentile_interval(self.points[a] - self.points[b],
                                   (self.per_seed_replicates[a] - self.per_seed_replicates[b]).mean(axis=0))

    def describe(self) -> dict[str, Any]:
        return {"n_resamples": self.n_resamples, "seed": self.seed, "n_images": len(self.image_ids),
                "level": 0.95, "method": "seeds and images: mean over detector seeds +- Student-t (Welch-"
                "Satterthwaite dof) with the seeds' spread and the shared image noise from a paired bootstrap over "
                "the evaluation images (the same resamples for every seed and candidate); one seed: images-only "
                f"percentile bootstrap, provisional; COCO 101-point AP@50, top {MAX_DETS[-1]} detections per image"}
