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

from detection.bootstrap import PairedBootstrap, image_matches
from detection.protocols import PROTOCOLS

from .records import Bootstrap, CandidateResult, ImageVsDetector, ProtocolIntervals, SeedRun, TopTwo

LOGGER = logging.getLogger(__name__)
# Where each protocol's saved predictions are in a detector seed's record.
PREDICTIONS_FIELD = {"field": "predictions_path", "deployed": "deployed_predictions_path"}


def _matches(run: SeedRun, protocol: str):
    path = getattr(run, PREDICTIONS_FIELD[protocol])
    if not run.coco_gt or not path:
        return None
    # Ultralytics writes no predictions.json for a detector that predicted nothing: that is no detections.
    return image_matches(Path(run.coco_gt), Path(path) if Path(path).is_file() else [])


def bootstrap_verdicts(records: list[CandidateResult], seeds: list[int], n_resamples: int, seed: int) -> Bootstrap:
    """For every protocol the detector results carry: each candidate's mAP@50 interval, the better single modality
    (``reference``) and every other candidate's gain over it, the top two, and the best image fusion against the
    better detector-side fusion."""
    out = Bootstrap()
    for protocol in PROTOCOLS.names():
        per_candidate = {}
        for r in records:
            runs = {run.seed: run for run in r.detection_runs}
            if r.detection is None or any(s not in runs for s in seeds):
                continue
            matches = [_matches(runs[s], protocol) for s in seeds]
            if any(m is None for m in matches):
                continue
            per_candidate[r.name] = matches
        if not per_candidate:
            continue
        image_ids = next(iter(per_candidate.values()))[0].image_ids
        boot = PairedBootstrap(image_ids, n_resamples, seed)
        for name, matches in per_candidate.items():
            boot.add(name, matches)
        if out.method is None:
            out.method = boot.describe()
        section = ProtocolIntervals(map50={n: boot.interval(n) for n in per_candidate},
                                    seeds=list(seeds),  # per_seed values are in this order
                                    per_seed={n: boot.per_seed_points[n].tolist() for n in per_candidate})
        singles = [r for r in records if r.is_single and r.name in per_candidate]
        if singles:
            section.reference = max(singles, key=lambda r: boot.points[r.name]).name
            section.gains = {n: boot.gain(n, section.reference) for n in per_candidate if n != section.reference}
        # The question behind image fusion: does the best fused image beat the detector that fuses for itself?
        image = [r.name for r in records if r.name in per_candidate and not r.is_single and r.fused_image]
        itself = [r.name for r in records if r.name in per_candidate and r.kind in ("stack", "late")]
        if image and itself:
            best_image = max(image, key=lambda n: boot.points[n])
            best_itself = max(itself, key=lambda n: boot.points[n])
            section.image_vs_detector_fusion = ImageVsDetector(best_image, best_itself,
                                                               boot.gain(best_image, best_itself))
        ordered = sorted(per_candidate, key=lambda n: -boot.points[n])
        if len(ordered) >= 2:
            section.top_two = TopTwo(ordered[0], ordered[1], boot.gain(ordered[0], ordered[1]))
        out.protocols[protocol] = section
    return out
