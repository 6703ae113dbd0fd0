"""Intervals for the pipeline's verdicts, holding the noise of detector training and of the evaluation images
(``detection.bootstrap``: seed spread + paired bootstrap over images, Student-t).

For each scoring protocol (``detection.protocols``) and every candidate with detector results: its mAP@50 with a
95% interval and its per-seed values, its gain over the better single modality (chosen by point estimate, as the
table's gain is), and the gain of the top candidate over the runner-up. The same resampled images serve every
candidate and seed (paired); candidates are paired by seed index. With one seed every interval is images-only and
marked provisional: the verdict then calls nothing a win.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detection.bootstrap import PairedBootstrap, image_matches
from detection.protocols import PROTOCOLS

from .report import is_single

LOGGER = logging.getLogger(__name__)
# Where each protocol's saved predictions are in a detector run's result.
PREDICTIONS_KEY = {"field": "predictions_path", "deployed": "deployed_predictions_path"}


def protocol_map50(record: dict[str, Any], protocol: str) -> float | None:
    """A record's mean mAP@50 under ``protocol`` (None without a detector result for it)."""
    det = record.get("detection") or {}
    stat = det.get("map50" if protocol == "field" else f"map50_{protocol}")
    return None if stat is None else stat["mean"]


def _matches(run: dict[str, Any], protocol: str):
    path = run.get(PREDICTIONS_KEY[protocol])
    gt = run.get("coco_gt")
    if not gt or not path:
        return None
    # Ultralytics writes no predictions.json for a detector that predicted nothing: that is no detections.
    return image_matches(Path(gt), Path(path) if Path(path).is_file() else [])


def bootstrap_verdicts(records: list[dict[str, Any]], seeds: list[int], n_resamples: int, seed: int
                       ) -> dict[str, Any]:
    """``{"method": ..., "protocols": {name: {"map50": {cand: interval}, "reference": name, "gains": {cand:
    interval}, "top_two": {...}}}}`` for every protocol the detector results carry."""
    out: dict[str, Any] = {"protocols": {}}
    for protocol in PROTOCOLS.names():
        per_candidate = {}
        for r in records:
            runs = {run["seed"]: run for run in r.get("detection_runs") or []}
            if not r.get("detection") or any(s not in runs for s in seeds):
                continue
            matches = [_matches(runs[s], protocol) for s in seeds]
            if any(m is None for m in matches):
                continue
            per_candidate[r["name"]] = matches
        if not per_candidate:
            continue
        image_ids = next(iter(per_candidate.values()))[0].image_ids
        boot = PairedBootstrap(image_ids, n_resamples, seed)
        for name, matches in per_candidate.items():
            boot.add(name, matches)
        out.setdefault("method", boot.describe())
        section: dict[str, Any] = {"map50": {n: boot.interval(n).to_dict() for n in per_candidate}, "gains": {},
                                   "seeds": list(seeds),  # per_seed values are in this order
                                   "per_seed": {n: boot.per_seed_points[n].tolist() for n in per_candidate}}
        singles = [r for r in records if is_single(r) and r["name"] in per_candidate]
        if singles:
            reference = max(singles, key=lambda r: boot.points[r["name"]])["name"]
            section["reference"] = reference
            section["gains"] = {n: boot.gain(n, reference).to_dict() for n in per_candidate if n != reference}
        # The question behind image fusion: does the best fused image beat the detector that fuses for itself?
        image = [r["name"] for r in records if r["name"] in per_candidate and not is_single(r)
                 and r.get("fused_image", True)]
        itself = [r["name"] for r in records if r["name"] in per_candidate and r.get("kind") in ("stack", "late")]
        if image and itself:
            best_image = max(image, key=lambda n: boot.points[n])
            best_itself = max(itself, key=lambda n: boot.points[n])
            section["image_vs_detector_fusion"] = {"image": best_image, "detector": best_itself,
                                                   **boot.gain(best_image, best_itself).to_dict()}
        ordered = sorted(per_candidate, key=lambda n: -boot.points[n])
        if len(ordered) >= 2:
            section["top_two"] = {"first": ordered[0], "second": ordered[1],
                                  **boot.gain(ordered[0], ordered[1]).to_dict()}
        out["protocols"][protocol] = section
    return out
