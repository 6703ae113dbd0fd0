#!/usr/bin/env python
"""How long the paired bootstrap takes: 1,000 resamples of 840 evaluation images for 10 candidates (issue 12).

    python benchmarks/bench_bootstrap.py [--images 840] [--candidates 10] [--resamples 1000] [--seeds 1]

The predictions are synthetic (M3FD-like: six classes, ~8 boxes per image, recall 0.6-0.95 with some wrong
classes, clutter at low scores, up to 300 per image as Ultralytics keeps), so the figure is about the code, not a
detector. Prints the one-off matching time (pycocotools' evaluate per candidate), the resampling time on one core,
and the baseline measured in the same run: one pycocotools mAP@50 on the full set, so machines that differ 2x can
be compared.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from detection.bootstrap import PairedBootstrap, image_matches  # noqa: E402
from detection.coco_eval import coco_map  # noqa: E402


def synthetic(n_images: int, quality: float, seed: int):
    rng = np.random.default_rng(seed)
    boxes_rng = np.random.default_rng(12345)  # the same ground truth for every candidate
    images = [{"id": i + 1, "width": 1024, "height": 768} for i in range(n_images)]
    annotations, predictions = [], []
    for image in images:
        for _ in range(int(boxes_rng.integers(2, 15))):
            x, y = boxes_rng.uniform(0, 900), boxes_rng.uniform(0, 650)
            w, h = boxes_rng.uniform(12, 120), boxes_rng.uniform(12, 120)
            c = int(boxes_rng.integers(1, 7))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": c,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < quality:
                label = c if rng.random() < 0.9 else int(rng.integers(1, 7))
                predictions.append({"image_id": image["id"], "category_id": label, "score": float(rng.beta(5, 2)),
                                    "bbox": [x + rng.normal(0, 3), y + rng.normal(0, 3), w, h]})
        for _ in range(int(rng.integers(20, 80))):
            predictions.append({"image_id": image["id"], "category_id": int(rng.integers(1, 7)),
                                "score": float(rng.beta(1, 8)),
                                "bbox": [rng.uniform(0, 900), rng.uniform(0, 650), 40, 40]})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 7)]
    return {"images": images, "annotations": annotations, "categories": categories}, predictions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=840)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=1, help="detector seeds per candidate")
    a = p.parse_args()
    qualities = np.linspace(0.6, 0.95, a.candidates)
    sets = [[synthetic(a.images, q, 100 * k + s) for s in range(a.seeds)] for k, q in enumerate(qualities)]
    n_pred = sum(len(preds) for runs in sets for _, preds in runs)
    t = time.perf_counter()
    coco_map(*sets[0][0])
    baseline = time.perf_counter() - t
    t = time.perf_counter()
    matches = [[image_matches(gt, preds) for gt, preds in runs] for runs in sets]
    matching = time.perf_counter() - t
    t = time.perf_counter()
    boot = PairedBootstrap(matches[0][0].image_ids, a.resamples, seed=0)
    for k, runs in enumerate(matches):
        boot.add(f"c{k}", runs)
    gains = [boot.gain(f"c{k}", "c0") for k in range(1, a.candidates)]
    resampling = time.perf_counter() - t
    print(f"{a.images} images, {a.candidates} candidates x {a.seeds} seed(s), {n_pred} predictions, "
          f"{a.resamples} resamples, one thread")
    print(f"  baseline (same run): one pycocotools mAP@50, full set   {baseline:7.2f} s")
    print(f"  matching once (pycocotools evaluate, all candidates)     {matching:7.2f} s")
    print(f"  resampling (all candidates, intervals and gains)         {resampling:7.2f} s   <- target < 30 s")
    print(f"  e.g. gain of the best over the worst: {gains[-1].point:+.3f} [{gains[-1].low:+.3f}, {gains[-1].high:+.3f}]")


if __name__ == "__main__":
    main()
