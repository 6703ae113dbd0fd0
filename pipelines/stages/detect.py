"""Stage ``detect``: the detector recipe every candidate gets, the YOLO dataset of a candidate's images, and one
job per detector seed, run by an executor (``pipelines.executors``) and stored as each result arrives.

``detect_job`` is module-level and fed plain data, so it runs in another process or on another machine.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.provenance import content_key, file_sha256
from data.store import KeyedStore

from ..executors import Job, RunExecutor
from ..progress import Progress
from ..records import DetectorRun, ScenarioScore

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.config import PipelineConfig

LOGGER = logging.getLogger(__name__)

# What a finished detector stage holds; a record of another scoring is scored again (its detector is not retrained).
DETECT_SCORING = "field+deployed/1"


def detection_settings(cfg: PipelineConfig, detection_preset: str) -> dict[str, Any]:
    """The detector recipe every candidate gets: the preset's, with the command line's overrides.

    Raises:
        ValueError: the recipe cannot train (model not a yaml, missing weights, epochs < 1, ...), all problems listed.
    """
    from detection.presets import load_preset
    from detection.train import check_recipe

    recipe = load_preset(detection_preset).train_kwargs()
    overrides = {"model": cfg.model, "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch}
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    recipe["weights"] = str(Path(cfg.weights).resolve()) if cfg.weights else None
    problems = check_recipe(recipe["model"], recipe["weights"], recipe["epochs"], recipe["imgsz"], recipe["batch"],
                            recipe["extra_args"])
    if problems:  # before the dataset is read or anything is fused: every candidate would fail the same way
        raise ValueError("detector recipe: " + "; ".join(problems))
    recipe["weights_sha256"] = file_sha256(cfg.weights) if cfg.weights else None  # the cache follows the bytes
    return recipe


def detector_splits(cfg: PipelineConfig, dataset) -> tuple[dict[str, list[str]], str]:
    """The detector dataset's splits by Ultralytics role, and the role that is scored.

    'train' fits the weights, 'val' is validated every epoch and picks best.pt, 'test' scores best.pt: selecting
    the epoch on the scored images would flatter every candidate, the noisier ones most. Only when the user
    names the same split for both (``--eval-split val``) is 'val' scored, and the report says so.
    """
    roles = {"train": sorted(dataset.splits[cfg.train_split]), "val": sorted(dataset.splits[cfg.select_split])}
    if cfg.eval_split == cfg.select_split:
        return roles, "val"
    roles["test"] = sorted(dataset.splits[cfg.eval_split])
    return roles, "test"


def clear_tb_events(folder: Path) -> None:
    """Remove the TensorBoard event files directly in ``folder`` (``--force``: a retrained model's curves would
    otherwise be drawn over the old ones at the same steps). Sub-runs (``summary/``) are left alone."""
    for events in Path(folder).glob("events.out.tfevents.*"):
        events.unlink(missing_ok=True)


def export_fused(cfg: PipelineConfig, candidate: Candidate, dataset, store: KeyedStore):
    """The candidate's fused images as a YOLO dataset (content-keyed by the fused folder; reused when there, and
    under ``--force`` rebuilt once per run by the run's ``store``)."""
    from detection.export import export_yolo_dataset

    fused = candidate.record.fuse
    roles, eval_role = detector_splits(cfg, dataset)
    used = [i for ids in roles.values() for i in ids]
    return export_yolo_dataset({i: Path(fused.dir) / f"{i}.png" for i in used},
                               {i: dataset.annotation(i) for i in used}, roles,
                               cfg.out / "cache" / "yolo" / fused.key[:16], eval_split=eval_role,
                               class_names=dataset.class_names, store=store)


def export_stack(cfg: PipelineConfig, dataset, store: KeyedStore):
    """Early fusion's YOLO dataset: each sample's modalities as one N-channel image (``detection.export``: the
    colour modality as its three colour channels, every other one as one), keyed by the sources' contents and
    built by the run's ``store``, as :func:`export_fused`."""
    from detection.export import export_stacked

    from .fuse import source_fingerprint

    roles, eval_role = detector_splits(cfg, dataset)
    used = sorted({i for ids in roles.values() for i in ids})
    key = content_key("stack", str(dataset.root), used, source_fingerprint(dataset, used), list(dataset.modalities),
                      dataset.colour)
    return export_stacked(roles, {i: dict(dataset.sources(i)) for i in used},
                          {i: dataset.annotation(i) for i in used}, dataset.class_names,
                          cfg.out / "cache" / "yolo" / f"stack-{key[:16]}", colour=dataset.colour,
                          modalities=dataset.modalities, eval_split=eval_role, store=store)


def queue_detector_jobs(cfg: PipelineConfig, candidate: Candidate, yolo, input_key: str, dataset, *,
                        settings: dict[str, Any], seeds: list[int], scenarios: dict[str, list[str]],
                        store: KeyedStore) -> list[dict[str, Any]]:
    """The jobs of the candidate's seeds not yet finished on its exported dataset ``yolo`` (``input_key``: what
    its images were made from); finished ones are read back into ``candidate.record.detection_runs``.

    Under ``--force`` each job carries the run's decision (``store.redo``): train its detector again only the
    first time this run asks for it, so a detector two stages ask for is trained once."""
    roles, eval_role = detector_splits(cfg, dataset)
    annotations = dataset.annotations(cfg.eval_split)
    scenario_boxes = {s: sum(len(annotations[i].boxes) for i in ids) for s, ids in scenarios.items()}
    candidate.record.detection_runs = {}
    candidate.record.yolo = str(yolo.root)
    tb_dir = cfg.out / "tb" / candidate.name
    if store.redo(f"tensorboard:{tb_dir}"):  # every seed trains again: its curves replace the old ones
        clear_tb_events(tb_dir)
    jobs = []
    for seed in seeds:
        key = content_key("detect", input_key, yolo.key, settings, seed, roles, eval_role, cfg.device, scenarios,
                          DETECT_SCORING)
        stored = store.get(candidate.name, f"detect_seed{seed}", key)
        if stored:
            run = DetectorRun.from_dict(stored)
            LOGGER.info("%s: detector seed %d reused (%s)", candidate.name, seed, run.run_dir)
            candidate.record.detection_runs[seed] = run
            continue
        runs = cfg.out / "runs" / candidate.name
        jobs.append({"candidate": candidate.name, "seed": seed, "recipe": settings, "dataset": str(yolo.root),
                     "coco_gt": str(yolo.coco_gt_path), "device": cfg.device, "eval_split": eval_role,
                     "run_dir": str(runs), "tb_dir": str(tb_dir), "scenario_ids": scenarios,
                     "scenario_boxes": scenario_boxes, "key": key,
                     "redo": store.redo(f"detector:{runs / f'seed{seed}'}:{key}")})
    return jobs


def scenario_scores(coco_gt: Path, field_predictions: Path, deployed_predictions: Path,
                    scenarios: dict[str, list[str]], boxes: dict[str, int]) -> dict[str, ScenarioScore]:
    """mAP@50 per scenario under both protocols from saved predictions (a missing file: no detections, which is
    what Ultralytics leaves for a detector that predicted nothing)."""
    from detection.coco_eval import coco_map
    from detection.export import coco_image_id

    out = {}
    for scenario, ids in scenarios.items():
        image_ids = [coco_image_id(i) for i in ids]
        field = coco_map(coco_gt, field_predictions if field_predictions.is_file() else [], image_ids=image_ids)
        one_class = coco_map(coco_gt, deployed_predictions if deployed_predictions.is_file() else [],
                             image_ids=image_ids)
        out[scenario] = ScenarioScore(field.map50, one_class.map50, n_images=len(ids), n_boxes=boxes[scenario])
    return out


def detect_job(job: dict[str, Any]) -> dict[str, Any]:
    """One detector run on an exported dataset, plus mAP@50 per scenario from its saved predictions: a
    :class:`DetectorRun`, returned as its JSON (plain data back across the executor's boundary)."""
    from torch.utils.tensorboard import SummaryWriter

    from detection.export import YoloDataset
    from detection.train import train_and_evaluate

    recipe = dict(job["recipe"])
    recipe.pop("weights_sha256")
    writer = SummaryWriter(job["tb_dir"])
    try:
        result = train_and_evaluate(
            YoloDataset.load(Path(job["dataset"])), **recipe, seed=job["seed"], device=job["device"],
            out_dir=Path(job["run_dir"]), name=f"seed{job['seed']}", tb_writer=writer,
            tb_prefix=f"detect/{job['candidate']}/seed{job['seed']}", eval_split=job["eval_split"],
            store=KeyedStore(job["run_dir"], force=job["redo"]))  # forced where the run decided it, once
    finally:
        writer.close()
    scenarios = scenario_scores(Path(job["coco_gt"]), Path(result.predictions_path),
                                Path(result.deployed_predictions_path), job["scenario_ids"], job["scenario_boxes"])
    return DetectorRun.of(result, coco_gt=job["coco_gt"], scenarios=scenarios).to_dict()


def run_detector_jobs(pending: list[tuple[Candidate, dict[str, Any]]], executor: RunExecutor,
                      store: KeyedStore) -> None:
    """Run the queued detector jobs on the run's executor; each result is stored as it arrives (a killed run
    resumes from the finished ones), and a failed job fails its candidate while the others go on."""
    if not pending:
        return
    progress = Progress("detector", len(pending))
    progress.stage(0, f"{len(pending)} run(s)", f"training and evaluating on {executor.describe()}")
    for outcome in executor.run([Job(detect_job, job) for _, job in pending]):
        cand, job = pending[outcome.index]
        progress.finished()
        if outcome.error is not None:
            err = outcome.error
            LOGGER.error("detector run %s seed %s failed: %s", cand.name, job["seed"], err)
            cand.error = f"detector (seed {job['seed']}): {type(err).__name__}: {err}"
            progress.stage(progress.done, cand.name, f"seed {job['seed']} failed")
            continue
        run = DetectorRun.from_dict(outcome.result)
        store.put(cand.name, f"detect_seed{job['seed']}", job["key"], run.to_dict())
        cand.record.detection_runs[job["seed"]] = run
        progress.stage(progress.done, cand.name, f"seed {job['seed']} done")
