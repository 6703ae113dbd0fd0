"""Stage ``late``: late fusion, scored like any candidate without training anything.

For each detector seed, the single-modality detectors of that seed (already trained, each on its own modality's
images) have their saved evaluation predictions merged per image and class (``detection.late_fusion``: weighted
boxes fusion or NMS), under both protocols. Seeds pair up by index, as every other row's do, so the late row's
spread over seeds is the single-modality detectors' training noise carried through the merge.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.provenance import content_key
from data.store import KeyedStore

from ..records import DetectorRun, LateRun, ProtocolScore
from .detect import scenario_scores

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.config import PipelineConfig


def stage_late(cfg: PipelineConfig, candidate: Candidate, singles: list[Candidate], dataset, *, seeds: list[int],
               scenarios: dict[str, list[str]], store: KeyedStore) -> None:
    """Fill ``candidate.record.detection_runs`` with the merged detectors' scores per seed.

    Raises:
        RuntimeError: a single-modality row has no detector for some seed (it failed): no late fusion without it.
    """
    from detection.export import YoloDataset
    from detection.late_fusion import score_late_fusion

    missing = [f"{c.name} (seed {s})" for c in singles for s in seeds if s not in c.record.detection_runs]
    if missing or not singles:
        raise RuntimeError("late fusion needs every single-modality detector; missing: "
                           + (", ".join(missing) or "no single-modality rows"))
    method = candidate.spec.args.get("method", "wbf")
    yolo = YoloDataset.load(Path(singles[0].record.yolo))
    annotations = dataset.annotations(cfg.eval_split)
    boxes = {s: sum(len(annotations[i].boxes) for i in ids) for s, ids in scenarios.items()}
    candidate.record.detection_runs = {}
    for seed in seeds:
        runs = {c.spec.modality: c.record.detection_runs[seed] for c in singles}
        key = content_key("late", method, {m: r.key for m, r in runs.items()}, scenarios)

        def merge(runs: dict[str, DetectorRun] = runs, seed: int = seed) -> dict[str, Any]:
            out_dir = cfg.out / "runs" / candidate.name / f"seed{seed}"
            scores = score_late_fusion(runs, yolo, out_dir, method=method)
            field, deployed = ProtocolScore.from_dict(scores["field"]), ProtocolScore.from_dict(scores["deployed"])
            first = next(iter(runs.values()))
            return LateRun(
                seed=seed, map50=field.map50, map50_95=field.map50_95, ap50=field.ap50,
                map50_deployed=deployed.map50, map50_95_deployed=deployed.map50_95,
                ap50_deployed=deployed.ap50, predictions_path=field.predictions_path,
                deployed_predictions_path=deployed.predictions_path, coco_gt=first.coco_gt,
                eval_split=first.eval_split, n_images=first.n_images, n_boxes=first.n_boxes, run_dir=str(out_dir),
                key=key, merged={m: r.run_dir for m, r in runs.items()}, method=method,
                scenarios=scenario_scores(Path(first.coco_gt), Path(field.predictions_path),
                                          Path(deployed.predictions_path), scenarios, boxes)).to_dict()

        stored = store.cached(candidate.name, f"late_seed{seed}", key, merge)
        candidate.record.detection_runs[seed] = LateRun.from_dict(stored)
