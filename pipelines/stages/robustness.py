"""Does the fusion still help when the weather turns? Score every candidate's trained detector on corrupted inputs.

For each corruption and severity (``data.corruptions``) the evaluation split's sources are corrupted once
(deterministic per image and seed, cached by content), every candidate fuses the corrupted pairs with its own
fuser, and each detector seed's kept checkpoint is scored again under both protocols: nothing is retrained, so the
number says how the deployed system degrades. A pre-fused folder cannot fuse new inputs and is left out (noted).

The intervals come from one paired bootstrap per corruption and severity over the same evaluation images: each
candidate's deployed mAP@50, its drop from clean (corrupted minus clean, same resampled images) and its gain over the
better single modality under that corruption.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.io import read_ir, read_visible, write_image
from data.provenance import content_key
from data.store import KeyedStore
from data.types import Pair
from fusion.fusers.base import output_path

from ..executors import Job
from ..records import CellScore, CorruptedRun, ProtocolScore, Robustness, RobustIntervals, RobustnessCell

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.executors import RunExecutor
    from pipelines.config import PipelineConfig

LOGGER = logging.getLogger(__name__)


def corrupted_pairs(cache_root: Path, dataset, ids: list[str], corruption: str, severity: int, seed: int,
                    sources_key: str, store: KeyedStore) -> tuple[list[Pair], str]:
    """The evaluation pairs with ``corruption`` applied, written once into a content-keyed folder (atomic; under
    ``--force`` written again once, the new folder replacing the old one whole). Returns (pairs, key)."""
    from data.corruptions import corrupt_pair

    key = content_key("corrupt", corruption, severity, seed, sources_key, ids)
    folder = cache_root / "corrupted" / key[:16]

    def build(tmp: Path) -> dict[str, Any]:
        (tmp / "ir").mkdir()
        (tmp / "vis").mkdir()
        for image_id in ids:
            vis_y, vis_bgr = read_visible(dataset.vis_path(image_id))
            vis = vis_bgr if vis_bgr is not None else vis_y.astype("uint8")
            ir, vis = corrupt_pair(corruption, severity, read_ir(dataset.ir_path(image_id)), vis, image_id, seed)
            write_image(tmp / "ir" / f"{image_id}.png", ir)
            write_image(tmp / "vis" / f"{image_id}.png", vis)
        return {"corruption": corruption, "severity": severity, "seed": seed, "n_images": len(ids)}

    store.folder(folder, key, build)
    return [Pair(i, folder / "ir" / f"{i}.png", folder / "vis" / f"{i}.png") for i in ids], key


def robustness_intervals(clean: dict[str, list[Any]], corrupted: dict[str, list[Any]], image_ids: list[Any],
                         n_resamples: int, seed: int, singles: tuple[str, ...] = ("ir", "vis")) -> RobustIntervals:
    """Intervals for one corruption and severity: per candidate its deployed mAP@50, its drop from clean and its
    gain over the better single modality under the corruption (``clean``/``corrupted``: name -> matches per seed)."""
    from detection.bootstrap import PairedBootstrap

    boot = PairedBootstrap(image_ids, n_resamples, seed)
    for name, matches in corrupted.items():
        boot.add(name, matches)
        if name in clean:
            boot.add(f"clean/{name}", clean[name])
    map50 = {n: boot.interval(n) for n in corrupted}
    drop = {n: boot.gain(n, f"clean/{n}") for n in corrupted if n in clean}
    singles = [n for n in corrupted if n in singles]
    if not singles:
        return RobustIntervals(map50, drop)
    reference = max(singles, key=lambda n: boot.points[n])
    return RobustIntervals(map50, drop, reference, {n: boot.gain(n, reference) for n in corrupted if n != reference})


def stage_robustness(cfg: PipelineConfig, candidates: list[Candidate], dataset, settings: dict, seeds: list[int],
                     store: KeyedStore, executor: RunExecutor) -> Robustness | None:
    """Every candidate's kept detectors scored on corrupted evaluation inputs, one cell per corruption and
    severity, with intervals from one paired bootstrap per cell.

    Here: each cell's inputs are corrupted once, fused by every candidate (in shards on a cluster) and exported;
    then every (cell, candidate, seed) scoring not yet stored is one job on the run's executor, all at once.
    """
    if not cfg.corruptions:
        return None
    from detection.bootstrap import image_matches
    from detection.export import export_yolo_dataset

    from .. import report
    from ..progress import Progress
    from .fuse import fuse_into_cache, source_fingerprint

    ids = sorted(dataset.splits[cfg.eval_split])
    sources_key = source_fingerprint(dataset, ids)
    usable = [c for c in candidates if not c.error and c.kind != "folder" and c.spec.fuses_images
              and all(s in c.record.detection_runs for s in seeds)]
    skipped = {c.name: "a pre-fused folder cannot fuse corrupted inputs" for c in candidates if c.kind == "folder"}
    skipped.update({c.name: "early and late fusion are not yet scored on corrupted inputs"
                    for c in candidates if not c.spec.fuses_images})
    singles = tuple(c.name for c in candidates if c.spec.modality is not None)
    out = Robustness(corruptions=list(cfg.corruptions), severities=list(cfg.severities), seed=cfg.corruption_seed,
                     skipped=skipped, singles=list(singles))
    cells = [(corruption, severity) for corruption in cfg.corruptions for severity in cfg.severities]
    progress = Progress("robustness", len(cells))
    scored: dict[tuple[str, int], dict[str, dict[int, CorruptedRun]]] = {cell: {} for cell in cells}
    jobs: list[tuple[tuple[str, int], Candidate, int, str, dict[str, Any]]] = []
    for corruption, severity in cells:
        cell_name = f"{corruption}/{severity}"
        progress.stage(progress.done + 1, cell_name, f"corrupting, fusing and exporting {len(usable)} candidates")
        pairs, corrupt_key = corrupted_pairs(cfg.out / "cache", dataset, ids, corruption, severity,
                                             cfg.corruption_seed, sources_key, store)
        for cand in usable:
            try:
                fused = fuse_into_cache(cfg, cand, pairs, content_key("fuse", cand.source(cfg).cache_key(),
                                                                      corrupt_key), store, executor)
                yolo = export_yolo_dataset({i: output_path(Path(fused.dir), i) for i in ids},
                                           {i: dataset.annotation(i) for i in ids}, {"test": ids},
                                           cfg.out / "cache" / "yolo" / fused.key[:16], eval_split="test",
                                           class_names=dataset.class_names, store=store)
            except Exception as err:  # noqa: BLE001 - one candidate's failure leaves the others' cells
                LOGGER.exception("robustness %s %s failed", cell_name, cand.name)
                out.errors[f"{cell_name}/{cand.name}"] = f"{type(err).__name__}: {err}"
                continue
            scored[(corruption, severity)][cand.name] = {}
            for seed in seeds:
                stage, key, job = scoring_job(cfg, cand, yolo, fused, settings, seed, corruption, severity)
                stored = store.get(cand.name, stage, key)
                if stored is not None:
                    scored[(corruption, severity)][cand.name][seed] = CorruptedRun.from_dict(stored)
                else:
                    jobs.append(((corruption, severity), cand, seed, stage, job))
        progress.finished()
    if jobs:
        print(f"[robustness] scoring {len(jobs)} detector(s) on corrupted inputs on {executor.describe()}", flush=True)
    for outcome in executor.run([Job(score_job, job) for *_, job in jobs]):
        cell, cand, seed, stage, job = jobs[outcome.index]
        if outcome.error is not None:
            err = outcome.error
            out.errors[f"{cell[0]}/{cell[1]}/{cand.name}"] = f"{type(err).__name__}: {err}"
            scored[cell].pop(cand.name, None)
            continue
        run = CorruptedRun.from_dict(outcome.result)
        store.put(cand.name, stage, job["key"], run.to_dict())
        if cand.name in scored[cell]:
            scored[cell][cand.name][seed] = run

    clean = {}
    for cand in usable:
        runs = [cand.record.detection_runs[s] for s in seeds]
        if all(r.coco_gt and r.deployed_predictions_path for r in runs):
            clean[cand.name] = [image_matches(Path(r.coco_gt), _predictions(r.deployed_predictions_path))
                                for r in runs]
    for (corruption, severity), by_name in scored.items():
        runs_of = {name: [runs[s] for s in seeds] for name, runs in by_name.items() if len(runs) == len(seeds)}
        scores = {name: CellScore(map50_deployed=report.mean_std([r.scores["deployed"].map50 for r in runs]),
                                  map50=report.mean_std([r.scores["field"].map50 for r in runs]))
                  for name, runs in runs_of.items()}
        intervals = None
        if cfg.bootstrap_resamples and runs_of:
            corrupted = {name: [image_matches(Path(r.coco_gt), _predictions(r.scores["deployed"].predictions_path))
                                for r in runs] for name, runs in runs_of.items()}
            image_ids = next(iter(corrupted.values()))[0].image_ids
            intervals = robustness_intervals(clean, corrupted, image_ids, cfg.bootstrap_resamples,
                                             cfg.bootstrap_seed, singles)
        out.cells[f"{corruption}/{severity}"] = RobustnessCell(scores, intervals)
    return out


def _predictions(path: str | None):
    """A saved predictions file, or no detections when Ultralytics wrote none (it does not for zero boxes)."""
    return Path(path) if path and Path(path).is_file() else []


def scoring_job(cfg: PipelineConfig, cand: Candidate, yolo, fused, settings: dict, seed: int, corruption: str,
                severity: int) -> tuple[str, str, dict[str, Any]]:
    """The store stage, key and plain-data job of one detector seed's kept checkpoint scored on one cell."""
    from .detect import DETECT_SCORING

    run = cand.record.detection_runs[seed]
    key = content_key("robust", fused.key, yolo.key, run.key, DETECT_SCORING)
    weights = Path(run.run_dir) / "weights" / "best.pt"
    if not weights.is_file():
        weights = weights.with_name("last.pt")
    job = {"key": key, "weights": str(weights), "dataset": str(yolo.root), "coco_gt": str(yolo.coco_gt_path),
           "out_dir": str(cfg.out / "robustness" / cand.name / f"{corruption}_s{severity}" / f"seed{seed}"),
           "imgsz": settings["imgsz"], "batch": settings["batch"], "threads": settings.get("threads"),
           "device": cfg.device}
    return f"robust_{corruption}_{severity}_seed{seed}", key, job


def score_job(job: dict[str, Any]) -> dict[str, Any]:
    """One kept detector scored on one corrupted cell under every protocol (any process, any machine): a
    :class:`CorruptedRun`, returned as its JSON (plain data back across the executor's boundary)."""
    from detection.export import YoloDataset
    from detection.train import score_detector

    scores = score_detector(Path(job["weights"]), YoloDataset.load(Path(job["dataset"])), Path(job["out_dir"]),
                            eval_split="test", imgsz=job["imgsz"], batch=job["batch"], device=job["device"],
                            threads=job["threads"])
    return CorruptedRun({p: ProtocolScore.from_dict(s) for p, s in scores.items()}, job["coco_gt"]).to_dict()
