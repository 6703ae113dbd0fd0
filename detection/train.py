"""Train an Ultralytics YOLO detector on an exported dataset, offline, and score it two ways.

``train_and_evaluate`` trains from a model yaml (from scratch unless ``weights=`` names a local ``.pt``), then
validates the best checkpoint on the evaluation split with ``save_json=True`` and rescoring its
``predictions.json`` with pycocotools against the export's COCO ground truth. Both scores go into the
:class:`DetectionResult`, with per-class AP@50 for every class of the dataset (``None`` for a class the split
lacks). The class names are the export's (``YoloDataset.class_names``, which its caller took from the dataset).
An early-fusion export (``detection.export.export_stacked``) trains the same way: its ``data.yaml`` says
``channels: N`` and Ultralytics builds the first convolution for it.

Everything is written under ``out_dir``: the run in ``out_dir/<name>`` (Ultralytics ``project``/``name``),
its evaluation in ``out_dir/<name>/eval_<split>``, and Ultralytics' config (settings, font) in
``out_dir/.ultralytics`` for the first run of a process (see ``detection.ultralytics_env``).

A run is a resumable folder of the keyed store (``data.store.KeyedStore.folder``): it trains and is evaluated in
``out_dir/<name>.partial`` and is renamed to ``out_dir/<name>`` once finished, with its result as the folder's
record (``detection_result.json``). A finished run of the same key is returned without work; an interrupted
training continues from ``weights/last.pt`` (Ultralytics ``resume``; the partial folder's progress record says
whether training had ended); a partial run of another key is started again from scratch. ``store`` decides
``--force`` (train again from scratch): the pipeline runs each detector in a job of its own, possibly in another
process, and hands it a store forced only where its run has not redone that detector yet (``KeyedStore.redo``),
so a forced run trains each detector once. The key covers the dataset's content key and every argument that
changes the result.
A finished run written by an earlier version (the same ``detection_result.json``) is reused; a run it left
interrupted is trained again from scratch.

Command line (a thin wrapper; the pipeline calls :func:`train_and_evaluate` directly)::

    python -m detection.train --dataset runs/x/yolo_ir --preset quick --out runs/x/detect --name ir
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data.io import clear_dir
from data.provenance import content_key, file_fingerprint
from data.store import KeyedStore, read_progress, save_progress
from detection.coco_eval import CocoScores, coco_map
from detection.export import YoloDataset, link_file
from detection.presets import load_preset, preset_names
from detection.ultralytics_env import default_threads, setup_offline

LOGGER = logging.getLogger(__name__)

RESULT_NAME = "detection_result.json"  # the finished run folder's store record
CONFIG_DIR_NAME = ".ultralytics"
# Arguments this module sets itself (paths, seed, resume logic, evaluation); extra_args may not override them.
OWNED_ARGS = frozenset({
    "data", "model", "project", "name", "exist_ok", "resume", "pretrained", "epochs", "imgsz", "batch", "seed",
    "device", "workers", "save_json", "deterministic", "split", "mode", "task",
})
# Early fusion with exactly 3 channels (three one-channel modalities): Ultralytics' HSV jitter runs on 3-channel
# images only, reading them as BGR colour, so it would mix the modalities; it skips every other channel count,
# so these stacks skip it too and every early-fusion detector is trained alike.
STACK_OF_THREE_ARGS = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
# Ultralytics' metric keys -> the names mirrored to TensorBoard.
_METRIC_TAGS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
}


@dataclass
class DetectionResult:
    """Scores of one trained detector on the evaluation split (JSON-ready through :meth:`to_dict`).

    Attributes:
        map50, map50_95, precision, recall: Ultralytics' box metrics (``box.map50``, ``box.map``, ``box.mp``,
            ``box.mr``) of the best checkpoint.
        ap50: class name -> Ultralytics AP@50 for every class of the dataset, in its order; ``None`` where the
            evaluation split has no box of that class (AP is undefined there, not 0).
        absent_classes: the classes reported as ``None`` in ``ap50``.
        coco_map50, coco_map50_95: pycocotools on ``predictions.json`` (maxDets 300); ``None`` without any box.
        map50_deployed, map50_95_deployed, ap50_deployed: pycocotools on the deployed protocol's predictions
            (one class per box, ``deployed_predictions_path``); the field's numbers above are multi-label.
        n_boxes: class name -> ground-truth boxes in the evaluation split.
        epochs: epochs requested; ``epochs_completed``: epochs trained (fewer under a ``time`` cap or early stop).
        wall_time_s: seconds spent by the call that produced the result (a resumed run counts its last part).
    """

    map50: float
    map50_95: float
    precision: float
    recall: float
    ap50: dict[str, float | None]
    absent_classes: list[str]
    coco_map50: float | None
    coco_map50_95: float | None
    run_dir: str
    predictions_path: str
    wall_time_s: float
    epochs: int
    epochs_completed: int
    imgsz: int
    batch: int
    seed: int
    model: str
    weights: str | None
    eval_split: str
    n_images: int
    n_boxes: dict[str, int]
    resumed: bool = False
    key: str = ""
    notes: list[str] = field(default_factory=list)
    # The deployed protocol (``detection.protocols``: one class per box), scored with pycocotools; None in
    # results written before it was measured.
    map50_deployed: float | None = None
    map50_95_deployed: float | None = None
    ap50_deployed: dict[str, float | None] | None = None
    deployed_predictions_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectionResult:
        return cls(**data)


class TensorBoardMirror:
    """Ultralytics ``on_fit_epoch_end`` callback that copies each epoch's metrics to a SummaryWriter.

    Tags (under ``prefix``): ``train/box_loss``, ``train/cls_loss``, ``train/dfl_loss``, ``val/...`` losses,
    ``precision``, ``recall``, ``mAP50``, ``mAP50-95``, ``lr/pg0..2``, ``epoch_time_s``; step = epoch (1-based).

    Ultralytics fires this event once more after the last epoch, from ``final_eval`` on ``best.pt`` (with
    ``trainer.epoch`` advanced by one and no val losses). That call is recognised because the previous call
    already had ``trainer.stop`` set (the last epoch always sets it, also under a time cap or early stop), and
    is logged as ``best/<metric>`` at the last epoch's step instead of as an extra epoch.
    """

    def __init__(self, writer: Any, prefix: str):
        self.writer = writer
        self.prefix = prefix.rstrip("/")
        self._last_step = 0
        self._training_ended = False

    def _add(self, tag: str, value: Any, step: int) -> None:
        if value is not None:
            self.writer.add_scalar(f"{self.prefix}/{tag}", float(value), step)

    def __call__(self, trainer: Any) -> None:
        metrics = dict(trainer.metrics or {})
        if self._training_ended:  # the post-training final_eval call
            for key, tag in _METRIC_TAGS.items():
                self._add(f"best/{tag}", metrics.get(key), self._last_step)
            self.writer.flush()
            return
        step = int(trainer.epoch) + 1
        if trainer.tloss is not None:
            for key, value in trainer.label_loss_items(trainer.tloss, prefix="train").items():
                self._add(key, value, step)
        for key, value in metrics.items():
            self._add(_METRIC_TAGS.get(key, key), value, step)
        for key, value in (getattr(trainer, "lr", None) or {}).items():
            self._add(key, value, step)
        self._add("epoch_time_s", getattr(trainer, "epoch_time", None), step)
        self.writer.flush()
        self._last_step = step
        self._training_ended = bool(trainer.stop)

    @property
    def received(self) -> bool:
        """Whether Ultralytics called this callback at all (its DDP subprocesses never call in-process callbacks)."""
        return self._last_step > 0

    def replay_results_csv(self, path: Path) -> int:
        """Log every epoch of an Ultralytics ``results.csv`` under the same tags as the live callback (per-epoch
        time from the cumulative ``time`` column); for runs the callback never saw. Returns the epochs logged."""
        with path.open() as f:
            rows = list(csv.DictReader(f))
        previous_time = 0.0
        for row in rows:
            row = {k.strip(): v for k, v in row.items()}
            step = int(float(row.pop("epoch")))
            elapsed = float(row.pop("time", "nan"))
            for key, value in row.items():
                self._add(_METRIC_TAGS.get(key, key), float(value), step)
            self._add("epoch_time_s", elapsed - previous_time, step)
            previous_time = elapsed
            self._last_step = step
        self.writer.flush()
        return len(rows)


def _run_key(dataset: YoloDataset, settings: Mapping[str, Any], weights: Path | None) -> str:
    from importlib.metadata import version

    payload = {"dataset": dataset.key, **settings, "weights": file_fingerprint(weights) if weights else None,
               "ultralytics": version("ultralytics")}
    return content_key(payload)


def check_recipe(model: str, weights: str | Path | None, epochs: int, imgsz: int, batch: int,
                 extra_args: Mapping[str, Any] | None = None) -> list[str]:
    """Problems with a detector recipe, found without importing Ultralytics; the pipeline calls this before any
    heavy work, :func:`train_and_evaluate` again before training."""
    problems = []
    if not model.lower().endswith((".yaml", ".yml")):
        problems.append(f"model '{model}' must be a model yaml (e.g. yolov8n.yaml); a name or .pt would be "
                        "downloaded. Pass a local checkpoint as weights=")
    if weights is not None and (Path(weights).suffix != ".pt" or not Path(weights).is_file()):
        problems.append(f"weights {weights} must be an existing local .pt file")
    owned = sorted(set(extra_args or {}) & OWNED_ARGS)
    if owned:
        problems.append(f"extra_args may not set {', '.join(owned)} (train_and_evaluate sets them)")
    if epochs < 1 or imgsz < 32 or batch < 1:
        problems.append(f"need epochs >= 1, imgsz >= 32 and batch >= 1 (got {epochs}, {imgsz}, {batch})")
    return problems


def _check_arguments(dataset: YoloDataset, model: str, weights: Path | None, epochs: int, imgsz: int, batch: int,
                     extra_args: Mapping[str, Any], eval_split: str) -> None:
    problems = check_recipe(model, weights, epochs, imgsz, batch, extra_args)
    for split in ("train", "val"):
        if split not in dataset.split_counts:
            problems.append(f"the dataset has no '{split}' split (Ultralytics trains on 'train' and validates "
                            f"each epoch on 'val'); it has: {', '.join(dataset.split_counts)}")
    if eval_split not in dataset.split_counts:
        problems.append(f"eval_split '{eval_split}' is not a split of the dataset ({', '.join(dataset.split_counts)})")
    if not dataset.yaml_path.is_file():
        problems.append(f"dataset yaml {dataset.yaml_path} is missing (export it again)")
    if problems:
        raise ValueError("train_and_evaluate: " + "; ".join(problems))


def _per_class_ap50(metrics: Any, n_boxes: Mapping[str, int], class_names: Sequence[str]
                    ) -> tuple[dict[str, float | None], list[str]]:
    by_index = {int(c): float(ap) for c, ap in zip(metrics.box.ap_class_index, metrics.box.ap50)}
    absent = [name for name in class_names if n_boxes.get(name, 0) == 0]
    # A class with boxes that Ultralytics left out of ap_class_index had no statistics at all (no prediction
    # anywhere): its AP is a real 0. Absent classes are None.
    ap50 = {name: (None if name in absent else by_index.get(i, 0.0)) for i, name in enumerate(class_names)}
    return ap50, absent


def train_and_evaluate(
    dataset: YoloDataset,
    *,
    model: str = "yolov8n.yaml",
    weights: str | Path | None = None,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | Path,
    name: str = "detect",
    tb_writer: Any = None,
    tb_prefix: str = "detect/run",
    workers: int = 0,
    extra_args: Mapping[str, Any] | None = None,
    eval_split: str = "val",
    threads: int | None = None,
    store: KeyedStore | None = None,
) -> DetectionResult:
    """Train a YOLO detector on ``dataset`` and evaluate it on ``eval_split``.

    Args:
        dataset: an export from :func:`detection.export.export_yolo_dataset` (needs ``train`` and ``val``).
        model: Ultralytics model yaml, built from scratch (``pretrained=False``).
        weights: optional local ``.pt`` to initialise from (e.g. COCO weights downloaded elsewhere); never a
            bare name, which Ultralytics would download.
        epochs, imgsz, batch: training length, square image size in pixels, batch size.
        seed: Ultralytics seed (``deterministic=True``); on CPU a seed and thread count give identical runs.
        device: ``"cpu"``, ``"0"``, ...
        out_dir: folder for everything this writes; the run goes to ``out_dir/name``.
        tb_writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar``/``flush``) that
            receives per-epoch metrics under ``tb_prefix`` (see :class:`TensorBoardMirror`).
        workers: dataloader workers (0: load in the main process, no worker RNG).
        extra_args: further Ultralytics train() arguments (e.g. a preset's ``optimizer``, ``lr0``, ``time``).
            ``amp`` defaults to False: on a GPU Ultralytics' AMP check would download yolo26n.pt. An early-fusion
            dataset of 3 channels trains without HSV jitter (:data:`STACK_OF_THREE_ARGS`).
        eval_split: the split scored at the end.
        threads: torch CPU threads (default :func:`detection.ultralytics_env.default_threads`).
        store: the keyed store that builds the run folder and decides ``--force``: forced, the run is trained
            from scratch even when a finished or interrupted one of the same key is there (an interrupted one is
            removed whole first, ``data.io.clear_dir``; a finished one stays until the new one replaces it), once
            per store; None: a store of its own, without ``--force``.

    Raises:
        ValueError: bad arguments (listed together) before anything is imported or trained.
    """
    start = time.perf_counter()
    extra_args = dict(extra_args or {})
    weights = Path(weights).resolve() if weights is not None else None
    _check_arguments(dataset, model, weights, epochs, imgsz, batch, extra_args, eval_split)
    if len(dataset.channels) == 3:
        extra_args.update(STACK_OF_THREE_ARGS)
    threads = threads or default_threads()
    out_dir = Path(out_dir).resolve()
    run_dir = out_dir / name
    settings = {"model": model, "epochs": epochs, "imgsz": imgsz, "batch": batch, "seed": seed, "device": device,
                "workers": workers, "extra_args": extra_args, "eval_split": eval_split, "threads": threads}
    key = _run_key(dataset, settings, weights)

    def build(tmp: Path) -> dict[str, Any]:
        return _train_and_score(tmp, run_dir, key, dataset, model=model, weights=weights, settings=settings,
                                tb_writer=tb_writer, tb_prefix=tb_prefix, start=start).to_dict()

    # A result from before the deployed protocol was measured is not used: the run is trained again.
    record, reused = (store or KeyedStore(out_dir)).folder(
        run_dir, key, build, resumable=True, record=RESULT_NAME,
        accept=lambda result: bool(result.get("deployed_predictions_path")))
    if reused:
        LOGGER.info("detection run %s is complete; reusing its result", run_dir)
    return DetectionResult.from_dict(record)


def _train_and_score(tmp: Path, run_dir: Path, key: str, dataset: YoloDataset, *, model: str, weights: Path | None,
                     settings: Mapping[str, Any], tb_writer: Any, tb_prefix: str, start: float) -> DetectionResult:
    """Train (or resume) in ``tmp``, the run's partial folder, then evaluate; paths in the result are those the run
    will have at ``run_dir`` once the store renames ``tmp`` there."""
    epochs, imgsz, batch, seed = settings["epochs"], settings["imgsz"], settings["batch"], settings["seed"]
    device, workers, eval_split = settings["device"], settings["workers"], settings["eval_split"]
    setup_offline(run_dir.parent / CONFIG_DIR_NAME, threads=settings["threads"])
    state = read_progress(tmp, key) or {}
    last, best = tmp / "weights" / "last.pt", tmp / "weights" / "best.pt"
    resumed = state.get("trained") is False and _resumable(last)
    mirror = TensorBoardMirror(tb_writer, tb_prefix) if tb_writer is not None else None
    if not (state.get("trained") and best.is_file()):
        if resumed:
            LOGGER.info("resuming interrupted detection run %s from %s", run_dir, last)
            _fit(last, {"resume": True}, mirror)
        else:
            clear_dir(tmp)  # what a run killed before its first checkpoint left, removed whole
            tmp.mkdir(parents=True)
            save_progress(tmp, key, {"trained": False, "settings": dict(settings)})
            pretrained: str | bool = False
            if weights is not None:
                # A neutral name: Ultralytics renames e.g. yolov5s.pt to yolov5su.pt and would then download it.
                pretrained = str(tmp / "initial_weights.pt")
                link_file(weights, Path(pretrained))
            train_args = {"amp": False, "plots": False, "val": True, **settings["extra_args"],
                          "data": str(dataset.yaml_path), "epochs": epochs, "imgsz": imgsz, "batch": batch,
                          "seed": seed, "deterministic": True, "device": device, "workers": workers,
                          "project": str(tmp.parent), "name": tmp.name, "exist_ok": True, "pretrained": pretrained,
                          "save_json": False}
            _fit(model, train_args, mirror)
        if mirror is not None and not mirror.received and (tmp / "results.csv").is_file():
            mirror.replay_results_csv(tmp / "results.csv")  # e.g. --device 0,1: Ultralytics trained in DDP
        save_progress(tmp, key, {"trained": True, "settings": dict(settings)})

    def final(path: Path) -> str:
        return str(run_dir / Path(path).relative_to(tmp))

    kept = best if best.is_file() else last
    metrics, coco, predictions = _evaluate(kept, dataset, tmp, eval_split=eval_split, imgsz=imgsz, batch=batch,
                                           device=device, workers=workers)
    _, deployed, deployed_predictions = _evaluate(kept, dataset, tmp, eval_split=eval_split, imgsz=imgsz,
                                                  batch=batch, device=device, workers=workers, protocol="deployed")
    n_boxes = dict(dataset.box_counts[eval_split])
    ap50, absent = _per_class_ap50(metrics, n_boxes, dataset.class_names)
    notes = []
    counted = getattr(metrics, "nt_per_class", None)  # None when the validator gathered no statistics
    if counted is not None and [int(n) for n in counted] != [n_boxes[c] for c in dataset.class_names]:
        notes.append(f"Ultralytics counted boxes per class {[int(n) for n in counted]}, the export "
                     f"{list(n_boxes.values())}")
        LOGGER.warning("detection run %s: %s", run_dir, notes[-1])
    return DetectionResult(
        map50=float(metrics.box.map50), map50_95=float(metrics.box.map), precision=float(metrics.box.mp),
        recall=float(metrics.box.mr), ap50=ap50, absent_classes=absent, coco_map50=coco.map50,
        coco_map50_95=coco.map50_95, run_dir=str(run_dir), predictions_path=final(predictions),
        wall_time_s=round(time.perf_counter() - start, 3), epochs=epochs, epochs_completed=_epochs_completed(tmp),
        imgsz=imgsz, batch=batch, seed=seed, model=model, weights=str(weights) if weights else None,
        eval_split=eval_split, n_images=dataset.split_counts[eval_split], n_boxes=n_boxes, resumed=resumed,
        key=key, notes=notes, map50_deployed=deployed.map50, map50_95_deployed=deployed.map50_95,
        ap50_deployed=_named_ap50(deployed, dataset.class_names, absent),
        deployed_predictions_path=final(deployed_predictions),
    )


def _fit(model: str | Path, train_args: Mapping[str, Any], mirror: TensorBoardMirror | None) -> None:
    """Ultralytics training from a model yaml, or resumed from a checkpoint (``train_args={"resume": True}``)."""
    from ultralytics import YOLO

    detector = YOLO(str(model))
    if mirror is not None:
        detector.add_callback("on_fit_epoch_end", mirror)
    detector.train(**train_args)


def _named_ap50(scores: CocoScores, class_names: Sequence[str], absent: Sequence[str]) -> dict[str, float | None]:
    """pycocotools' per-category AP@50 by class name (category id = class index + 1, as the export writes)."""
    per_category = scores.ap50 or {}
    return {name: (None if name in absent else per_category.get(i + 1) or 0.0) for i, name in enumerate(class_names)}


def _evaluate(weights: Path, dataset: YoloDataset, run_dir: Path, *, eval_split: str, imgsz: int, batch: int,
              device: str, workers: int, protocol: str = "field") -> tuple[Any, CocoScores, Path]:
    """Validate ``weights`` on ``eval_split`` under ``protocol`` (``detection.protocols``) with ``save_json=True``
    and rescore its predictions with pycocotools.

    Returns (Ultralytics DetMetrics, pycocotools scores, the predictions.json path).
    """
    from ultralytics import YOLO

    from .protocols import PROTOCOLS, validator_class

    # The field protocol keeps its folder name (eval_<split>), so earlier runs' paths stay valid.
    eval_dir = run_dir / (f"eval_{eval_split}" if protocol == "field" else f"eval_{eval_split}_{protocol}")
    shutil.rmtree(eval_dir, ignore_errors=True)  # never score a stale predictions.json
    metrics = YOLO(str(weights)).val(
        validator=validator_class(PROTOCOLS.get(protocol)),
        data=str(dataset.yaml_path), split=eval_split, imgsz=imgsz, batch=batch, device=device, workers=workers,
        save_json=True, plots=False, project=str(run_dir), name=eval_dir.name, exist_ok=True,
    )
    predictions = eval_dir / "predictions.json"  # not written when the detector predicted nothing
    coco = coco_map(dataset.coco_gt(eval_split), predictions if predictions.is_file() else [])
    return metrics, coco, predictions


def score_detector(weights: str | Path, dataset: YoloDataset, out_dir: str | Path, *, eval_split: str, imgsz: int,
                   batch: int, device: str = "cpu", workers: int = 0, threads: int | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Score a trained detector on ``dataset``'s ``eval_split`` under every protocol, without training.

    Returns ``{protocol: {"map50", "map50_95", "ap50", "predictions_path"}}`` (pycocotools; ``ap50`` by class name).
    The robustness check scores each candidate's already-trained detector on corrupted inputs this way.
    """
    from .protocols import PROTOCOLS

    out_dir = Path(out_dir).resolve()
    setup_offline(out_dir / CONFIG_DIR_NAME, threads=threads or default_threads())
    absent = [name for name in dataset.class_names if dataset.box_counts[eval_split].get(name, 0) == 0]
    scores = {}
    for protocol in PROTOCOLS.names():
        _, coco, predictions = _evaluate(Path(weights), dataset, out_dir, eval_split=eval_split, imgsz=imgsz,
                                         batch=batch, device=device, workers=workers, protocol=protocol)
        scores[protocol] = {"map50": coco.map50, "map50_95": coco.map50_95,
                            "ap50": _named_ap50(coco, dataset.class_names, absent),
                            "predictions_path": str(predictions)}
    return scores


def _resumable(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` holds a training state Ultralytics can resume (epoch and optimizer saved).

    Ultralytics strips the optimizer from ``last.pt`` when training ends; resuming such a file would make it
    start a new training on its default dataset (coco8.yaml, a download), so it is never passed to ``resume``.
    """
    if not checkpoint.is_file():
        return False
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # a checkpoint cut short by the interruption itself
        LOGGER.warning("cannot read %s (%s); training again from scratch", checkpoint, exc)
        return False
    return isinstance(state, dict) and state.get("epoch", -1) >= 0 and state.get("optimizer") is not None


def _epochs_completed(run_dir: Path) -> int:
    # results.csv has a row per trained epoch; a run killed after an epoch's row but before its checkpoint trains
    # that epoch again on resume and appends a second row for it, so count distinct epochs.
    try:
        with (run_dir / "results.csv").open() as f:
            return len({row["epoch"].strip() for row in csv.DictReader(f) if row.get("epoch")})
    except (OSError, KeyError):
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train and evaluate on an exported dataset with a preset; prints the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, type=Path, help="folder written by export_yolo_dataset")
    parser.add_argument("--preset", default="quick", choices=preset_names())
    parser.add_argument("--out", required=True, type=Path, help="output folder (the run goes to OUT/NAME)")
    parser.add_argument("--name", default="detect")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", type=Path, default=None, help="local .pt to start from (default: scratch)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--eval-split", default=None, help="default: the split the export was made for")
    parser.add_argument("--tensorboard", type=Path, default=None, help="write TensorBoard scalars to this folder")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset = YoloDataset.load(args.dataset)
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")
    kwargs = load_preset(args.preset).train_kwargs()
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    eval_split = args.eval_split or dataset.eval_split
    problems = check_recipe(kwargs["model"], args.weights, kwargs["epochs"], kwargs["imgsz"], kwargs["batch"],
                            kwargs["extra_args"])
    if eval_split not in dataset.split_counts:
        problems.append(f"--eval-split '{eval_split}' is not a split of {args.dataset} "
                        f"({', '.join(dataset.split_counts)})")
    if problems:  # before TensorBoard or any run folder is created
        parser.exit(2, "error: " + "; ".join(problems) + "\n")
    writer = None
    if args.tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(args.tensorboard))
    try:
        result = train_and_evaluate(dataset, **kwargs, weights=args.weights, seed=args.seed, device=args.device,
                                    out_dir=args.out, name=args.name, tb_writer=writer,
                                    tb_prefix=f"detect/{args.name}", eval_split=eval_split)
    finally:
        if writer is not None:
            writer.close()
    json.dump(result.to_dict(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
