"""The product's main job: rank fusion checkpoints and simple baselines by the mAP@50 they give a detector.

``run_pipeline(PipelineConfig(...))`` is what ``python pipelines/run_m3fd.py`` calls. It only orchestrates:
the data layer reads and validates M3FD (``data.m3fd``), fusers fuse (``fusion.fusers`` / ``fusion.fuse``),
``fusion.metrics`` scores, ``detection`` exports, trains and evaluates, and ``pipelines.report`` writes tables.

Every finished stage is recorded (``pipelines.stages``): a repeated run with the same inputs does no fusing and
no detector training that already finished, and a killed run picks up where it stopped. One failing candidate
is reported with its error; the others still run. A bad dataset fails before any heavy work.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detection.protocols import DEFAULT_PROTOCOL
from fusion.baselines import BASELINE_NAMES  # no torch: the simple rules only

from data.errors import DatasetError
from data.io import (
    atomic_write_json,
    atomic_write_text,
    read_image,
    read_ir,
    clear_dir,
    read_record,
    read_visible,
    remove_stale_temps_tree,
    replace_dir,
    write_record,
)
from data.lock import hold_folder_lock, raise_if_locked
from data.provenance import content_key, file_sha256, files_fingerprint, package_versions

from . import report
from .executors import EXECUTORS, ExecutorConfig, Job, default_executor
from .candidates import (
    CandidateError,
    CandidateSpec,
    build_source,
    check_unique,
    checkpoint_specs,
    parse_fused,
    parse_fuser,
    released_spec,
)
from .stages import StageStore

LOGGER = logging.getLogger("pipelines.m3fd")
PRESETS_FILE = Path(__file__).with_name("presets.yaml")
SINGLE_MODALITY: tuple[str, ...] = ("ir", "vis")
GRID_SCENES = 4  # scenes shown in the side-by-side grid of fused images


@dataclass
class PipelineConfig:
    """Everything a run depends on; saved in results.json."""

    out: Path = Path("runs/m3fd")
    data: Path | None = None          # M3FD root; None -> $M3FD_ROOT, else built-in synthetic scenes
    checkpoints: list[Path] = field(default_factory=list)  # DAE-Fuse checkpoints; none -> train one here
    baselines: list[str] | None = None  # simple rules to rank; None -> the preset's (else every rule)
    fused: list[str] = field(default_factory=list)          # NAME=DIR: folders of another method's fused images
    plugins: list[list[str]] = field(default_factory=list)  # [NAME=package.module:factory, key=value, ...]
    preset: str = "quick"
    seeds: list[int] | None = None    # None -> the preset's seeds
    epochs: int | None = None         # overrides of the detector preset
    imgsz: int | None = None
    batch: int | None = None
    model: str | None = None          # detector model yaml (default: the preset's)
    weights: Path | None = None       # user-supplied detector weights (.pt), e.g. COCO-pretrained
    device: str = "cpu"
    jobs: int | None = None           # concurrent detector runs; None -> the preset's
    executor: str | None = None       # pipelines.executors name; None -> local for one job at a time, else pool
    scheduler: str | None = None      # dask: a running scheduler (tcp://HOST:PORT); None -> a LocalCluster here
    gpus_per_job: float | None = None  # dask: worker resource 'GPU' each detector run holds; None -> none asked
    force: bool = False
    train_split: str = "train"        # M3FD split the detectors (and a DAE-Fuse trained here) learn from
    select_split: str = "val"         # split Ultralytics validates on each epoch to keep best.pt
    eval_split: str = "test"          # split the kept detector and the fusion metrics are scored on
    split_seed: int = 0
    protocol: str = DEFAULT_PROTOCOL  # ranking and verdict: "deployed" (one class per box) or "field" (multi-label)
    bootstrap_resamples: int = 1000   # paired bootstrap over evaluation images for every interval (0: none)
    bootstrap_seed: int = 0
    corruptions: list[str] = field(default_factory=list)   # data.corruptions names; empty: no robustness check
    severities: list[int] = field(default_factory=lambda: [1, 2, 3])
    corruption_seed: int = 0
    released_dae_fuse: bool | None = None  # a row for the released DAE-Fuse; None -> the preset's choice
    train_dae_fuse: bool | None = None     # train a DAE-Fuse on the spot; None -> the preset's (tiny: if no checkpoints)
    progress: bool = True


@dataclass
class FuseOutput:
    """The fuse stage's result: the folder of ``<id>.png`` images a candidate gives the metrics and the detector."""

    dir: str
    n_images: int
    seconds_per_image: float | None   # None: not fused here (a folder of another method's images)
    key: str = ""
    cached: bool = False

    def stored(self) -> dict[str, Any]:
        """What the stage record keeps (the key is the record's own, ``cached`` is this run's)."""
        return {"dir": self.dir, "n_images": self.n_images, "seconds_per_image": self.seconds_per_image}


@dataclass
class CandidateRecord:
    """What the stages produced for one candidate, passed to ``assemble_results``."""

    fuse: FuseOutput | None = None
    metrics: dict[str, float] | None = None          # mean fusion metrics over the evaluation split
    temporal: dict[str, Any] | None = None           # temporal metrics over its consecutive-frame runs
    detection_runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> DetectionResult dict


@dataclass
class Candidate:
    """One row of the table: its spec (``pipelines.candidates``) and what this run made of it."""

    spec: CandidateSpec
    error: str | None = None
    record: CandidateRecord = field(default_factory=CandidateRecord)
    fuser: Any = None                  # the built fuser (or pre-fused folder), kept from validation: built once

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def baseline(self) -> str | None:
        return self.spec.fuser if self.spec.kind == "baseline" else None

    @property
    def checkpoint(self) -> Path | None:
        path = self.spec.args.get("checkpoint")
        return Path(path) if path else None


def torch_device(device: str) -> str:
    """The torch device for fusing and fusion training from the pipeline's Ultralytics-style ``--device``.

    Ultralytics names GPUs by index ("0", "0,1"); torch wants "cuda:0". With several GPUs the detectors use all
    of them (Ultralytics' DDP) and fusion runs on the first (multi-GPU fusion training goes through torchrun).
    """
    first = device.split(",")[0].strip()
    return f"cuda:{first}" if first.isdigit() else first


def load_pipeline_preset(name: str) -> dict[str, Any]:
    presets = yaml.safe_load(PRESETS_FILE.read_text())
    if name not in presets:
        raise KeyError(f"unknown pipeline preset '{name}'; known: {', '.join(presets)}")
    return presets[name]


class Progress:
    """The overall line of one phase: item k of n, what is happening, elapsed time and ETA for the phase.

    The ETA is the mean time of the finished items times the items left (two phases: preparing candidates, which
    is fusing and scoring, then detector runs, which dominate on CPU).
    """

    def __init__(self, unit: str, total: int):
        self.unit, self.total, self.done, self.start = unit, total, 0, time.time()

    def stage(self, k: int, name: str, stage: str) -> None:
        elapsed = time.time() - self.start
        eta = "?" if self.done == 0 else f"{elapsed / self.done * (self.total - self.done):.0f}s"
        print(f"[{self.unit} {k}/{self.total}] {name}: {stage}  (elapsed {elapsed:.0f}s, ETA {eta})", flush=True)

    def finished(self) -> None:
        self.done += 1


def dataset_root(cfg: PipelineConfig) -> Path | None:
    """The dataset's folder: ``--data``, else ``$M3FD_ROOT``; None: the built-in synthetic scenes, generated into
    ``--out``."""
    root = cfg.data or (Path(os.environ["M3FD_ROOT"]) if os.environ.get("M3FD_ROOT") else None)
    return Path(root) if root is not None else None


def generate_scenes(cfg: PipelineConfig, synthetic_params: dict[str, Any]) -> Path:
    """Write the built-in synthetic scenes into ``--out`` (reused when already there), loudly labelled."""
    from data.synthetic import generate_synthetic_m3fd

    root = cfg.out / "synthetic_m3fd"
    banner = "=" * 78
    print(f"{banner}\nNo --data given and M3FD_ROOT is not set: using the BUILT-IN SYNTHETIC M3FD-layout scenes\n"
          f"at {root}. These numbers say nothing about real M3FD. For real rankings run:\n"
          f"    python pipelines/run_m3fd.py --data /path/to/M3FD   (Ir/, Vis/, Annotation/, meta/)\n{banner}",
          flush=True)
    return generate_synthetic_m3fd(root, num_scenes=synthetic_params["num_scenes"],
                                   frames_per_scene=synthetic_params["frames_per_scene"],
                                   size=tuple(synthetic_params["size"]), seed=0)


def resolve_dataset(cfg: PipelineConfig, synthetic_params: dict[str, Any]):
    """Load and validate the dataset (raises DatasetError before any heavy work). Returns (dataset, info).

    Writes nothing into ``--out`` but the synthetic scenes when no data is given (``generate_scenes``);
    ``prepare_out`` writes the split once every check has passed.
    """
    from data.m3fd import load_m3fd
    from data.synthetic import PARAMS_FILE as SYNTHETIC_MARKER

    root = dataset_root(cfg)
    generate = root is None
    # Data the synthetic generator wrote stays labelled synthetic when it is passed with --data too.
    synthetic = generate or (root / SYNTHETIC_MARKER).is_file()
    if generate:
        root = generate_scenes(cfg, synthetic_params)
    dataset = load_m3fd(Path(root), seed=cfg.split_seed)
    problems = check_splits(cfg, {name: len(ids) for name, ids in dataset.splits.items()})
    if not problems and not any(ann.boxes for ann in dataset.annotations(cfg.eval_split).values()):
        problems.append(f"split '{cfg.eval_split}' (--eval-split) has no boxes: there is nothing to detect")
    if problems:
        raise DatasetError(str(root), problems)
    info = {"root": str(Path(root).resolve()), "synthetic": synthetic, "n_images": len(dataset.ids),
            "class_names": list(dataset.class_names),
            "split": {"method": dataset.split_info.get("method"), "file": str(cfg.out / "split.json"),
                      "seed": dataset.split_info.get("seed"),
                      "counts": {k: len(v) for k, v in dataset.splits.items()}}}
    return dataset, info


def prepare_out(cfg: PipelineConfig, dataset) -> None:
    """The run's first writes into ``--out`` (under its lock, after every check): sweep what a killed earlier run
    left half-written, wherever it was, and write the split."""
    swept = remove_stale_temps_tree(cfg.out)
    if swept:
        LOGGER.info("removed %d temporary file(s) a killed run left in %s", len(swept), cfg.out)
    dataset.write_split(cfg.out / "split.json")


class OptionsError(ValueError):
    """The run's options cannot work (detector recipe, seeds, jobs, device, --out); raised before any work."""


def check_options(cfg: PipelineConfig, seeds: list[int], jobs: int) -> list[str]:
    """Problems with the options that are not the detector recipe's (``detection_settings`` checks that)."""
    problems = []
    if not seeds or min(seeds) < 0:
        problems.append(f"seeds must be non-negative integers, got {seeds}")
    if jobs < 1:
        problems.append(f"--jobs must be at least 1, got {jobs}")
    problems += check_executor(cfg, jobs)
    from detection.protocols import PROTOCOLS

    if cfg.protocol not in PROTOCOLS:
        problems.append(f"--protocol {cfg.protocol!r}: known protocols are {', '.join(PROTOCOLS.names())}")
    if cfg.bootstrap_resamples != 0 and cfg.bootstrap_resamples < 1000:
        problems.append(f"--bootstrap {cfg.bootstrap_resamples}: use at least 1000 resamples (or 0 for none); "
                        "fewer make the 95% interval's ends noisy")
    from data.corruptions import check_corruptions

    problems += check_corruptions(list(cfg.corruptions), list(cfg.severities) if cfg.corruptions else [])
    if cfg.bootstrap_seed < 0:
        problems.append(f"--bootstrap-seed must be non-negative, got {cfg.bootstrap_seed}")
    if cfg.out.exists() and not cfg.out.is_dir():
        problems.append(f"--out {cfg.out} exists and is not a folder")
    if cfg.device != "cpu" and not cfg.device.startswith("mps"):
        import torch

        spec = cfg.device.removeprefix("cuda").lstrip(":")  # "0", "0,1", "cuda:1" or "cuda"
        wanted = [int(d) for d in spec.split(",") if d.strip().isdigit()] if spec else [0]
        available = torch.cuda.device_count()
        if not wanted or max(wanted) >= available:
            problems.append(f"--device {cfg.device}: {available} CUDA device(s) here (use cpu, 0, 0,1, ...)")
    return problems


def check_executor(cfg: PipelineConfig, jobs: int) -> list[str]:
    """Problems with --executor, --scheduler and --gpus-per-job (the scheduler itself is reached only when the
    detector runs start: before that there may be hours of fusing, and a cluster may still be coming up)."""
    executor = cfg.executor or default_executor(jobs)
    if executor not in EXECUTORS:
        return [f"--executor {executor!r}: known executors are {', '.join(EXECUTORS.names())}"]
    problems = []
    if executor != "dask":
        problems += [f"{option} needs --executor dask" for option, value in
                     (("--scheduler", cfg.scheduler), ("--gpus-per-job", cfg.gpus_per_job)) if value is not None]
    elif importlib.util.find_spec("distributed") is None:
        problems.append("--executor dask needs the 'distributed' package (pip install distributed)")
    if cfg.gpus_per_job is not None and cfg.gpus_per_job <= 0:
        problems.append(f"--gpus-per-job must be positive, got {cfg.gpus_per_job}")
    return problems


def check_splits(cfg: PipelineConfig, counts: dict[str, int]) -> list[str]:
    """Problems with the configured splits, given each split's image count: a used split that is empty, or a
    detector selected or scored on the images it was trained on."""
    have = ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"
    problems = [f"split '{name}' ({role}) is empty or missing; the dataset has: {have}"
                for role, name in (("--train-split", cfg.train_split), ("--select-split", cfg.select_split),
                                   ("--eval-split", cfg.eval_split)) if not counts.get(name)]
    problems += [f"{option} '{name}' is the training split: a detector must be {verb} on images it did not learn"
                 for option, name, verb in (("--select-split", cfg.select_split, "selected"),
                                            ("--eval-split", cfg.eval_split, "scored"))
                 if name == cfg.train_split]
    return problems


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


def candidate_specs(cfg: PipelineConfig, preset: dict[str, Any] | None = None) -> list[CandidateSpec]:
    """Every row's spec: the baselines (IR-only and visible-only always: every gain is measured against them),
    the pre-fused folders and plug-ins named on the command line, then the checkpoints (named around the others).

    Raises:
        OptionsError: an unknown baseline, a malformed ``--fused``/``--fuser``, or two candidates with one name.
    """
    baselines = cfg.baselines if cfg.baselines is not None else (preset or {}).get("baselines", BASELINE_NAMES)
    names = list(dict.fromkeys(list(SINGLE_MODALITY) + list(baselines)))
    unknown = [n for n in names if n not in BASELINE_NAMES]
    if unknown:
        raise OptionsError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINE_NAMES)}")
    specs = [CandidateSpec(name=n, kind="baseline", fuser=n) for n in names]
    try:
        specs += [parse_fused(text) for text in cfg.fused] + [parse_fuser(tokens) for tokens in cfg.plugins]
    except CandidateError as err:
        raise OptionsError(str(err)) from None
    released = cfg.released_dae_fuse if cfg.released_dae_fuse is not None else (preset or {}).get("released_dae_fuse")
    if released:
        specs.append(released_spec())
    problems = check_unique(specs)
    if problems:
        raise OptionsError("; ".join(problems))
    return specs + checkpoint_specs(cfg.checkpoints, {s.name for s in specs})


def build_candidates(cfg: PipelineConfig, dataset=None, preset: dict[str, Any] | None = None) -> list[Candidate]:
    """The candidates, each built (fusers, plug-ins) or checked (folders, checkpoints) here, before heavy work.

    A plug-in that does not build or a folder that does not hold the splits' images refuses the run, every such
    problem in one ``OptionsError``: both are the command line's mistakes. A checkpoint that does not load stays in
    the table as a failed row while the others run.
    """
    from fusion.checkpoint import CheckpointError
    from fusion.fusers import FuserSpecError

    candidates = [Candidate(spec) for spec in candidate_specs(cfg, preset)]
    pairs, sizes = [], {}
    if dataset is not None:
        wanted = set().union(*(dataset.splits[s] for s in (cfg.train_split, cfg.select_split, cfg.eval_split)))
        pairs = [p for p in dataset.pairs() if p.stem in wanted]
        sizes = {p.stem: (dataset.annotation(p.stem).width, dataset.annotation(p.stem).height) for p in pairs}
    refused = []
    for cand in candidates:
        try:
            cand.fuser = build_source(cand.spec, device=torch_device(cfg.device), pairs=pairs, sizes=sizes)
        except CheckpointError as err:
            cand.error = f"checkpoint rejected: {err}"
            print(f"WARNING: {cand.checkpoint}: {cand.error}", flush=True)
        except Exception as err:  # noqa: BLE001 - a plug-in's own failure, whatever its type, refuses the run
            prefix = "" if isinstance(err, (FuserSpecError, DatasetError)) else f"{type(err).__name__}: "
            refused.append(f"candidate '{cand.name}' ({cand.spec.origin}): {prefix}{err}")
    if refused:
        raise OptionsError("\n".join(refused))
    return candidates


def train_fusion_here(cfg: PipelineConfig, preset_name: str, dataset, store: StageStore) -> Path:
    """Train a DAE-Fuse with a short schedule on the training split (cached and resumable). Returns its checkpoint."""
    from fusion.config import load_train_config
    from fusion.train import train

    fusion_cfg = load_train_config(preset=preset_name)
    ids = sorted(dataset.splits[cfg.train_split])
    key = content_key("dae_fuse_train", asdict(fusion_cfg), str(dataset.root), ids, source_fingerprint(dataset, ids),
                      torch_device(cfg.device))
    stored = store.get("_fusion_training", "train", key)
    if stored and Path(stored["checkpoint"]).is_file():
        LOGGER.info("DAE-Fuse trained here reused: %s", stored["checkpoint"])
        return Path(stored["checkpoint"])
    run_dir = cfg.out / "fusion_training" / key[:12]
    if cfg.force:  # train again from scratch; the old run is removed whole (a killed forced run then resumes this one)
        clear_dir(run_dir)
        clear_tb_events(cfg.out / "tb" / "fusion_training")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(cfg.out / "tb" / "fusion_training"))
    try:
        result = train(fusion_cfg, dataset.root, run_dir, device=torch_device(cfg.device),
                       resume=(run_dir / "last.pt").is_file(), tb_writer=writer, progress=cfg.progress,
                       split=cfg.train_split)
    finally:
        writer.close()
    checkpoint = Path(result.best_checkpoint)
    store.put("_fusion_training", "train", key, {"checkpoint": str(checkpoint), "run_dir": str(run_dir),
                                                 "wall_time_s": result.wall_time_s})
    return checkpoint


def clear_tb_events(folder: Path) -> None:
    """Remove the TensorBoard event files directly in ``folder`` (``--force``: a retrained model's curves would
    otherwise be drawn over the old ones at the same steps). Sub-runs (``summary/``) are left alone."""
    for events in Path(folder).glob("events.out.tfevents.*"):
        events.unlink(missing_ok=True)


def source_fingerprint(dataset, ids: list[str]) -> str:
    """Key of the infrared and visible files of ``ids`` (path, size, mtime): an edited or replaced source image
    invalidates what was fused or trained from it."""
    return files_fingerprint(p for i in ids for p in (dataset.ir_path(i), dataset.vis_path(i)))


def make_fuser(candidate: Candidate, device: str):
    """The candidate's fuser, built on first use and kept (validation has usually built it already)."""
    if candidate.fuser is None:
        candidate.fuser = build_source(candidate.spec, device=device)
    return candidate.fuser


# What a finished detector stage holds; a record of another scoring is scored again (its detector is not retrained).
DETECT_SCORING = "field+deployed/1"
FUSE_RECORD = ".fuse_record.json"  # inside a finished fused folder: what its stage record says


def stage_fuse(cfg: PipelineConfig, candidate: Candidate, dataset, store: StageStore) -> FuseOutput:
    """Fuse every pair of the train, selection and evaluation splits into a content-keyed cache folder (a folder
    candidate's images are copied in as PNG: metrics and detectors then read every candidate the same way)."""
    fuser = make_fuser(candidate, torch_device(cfg.device))
    ids = sorted(set().union(*(dataset.splits[s] for s in (cfg.train_split, cfg.select_split, cfg.eval_split))))
    key = content_key("fuse", fuser.cache_key(), str(dataset.root), ids, source_fingerprint(dataset, ids))
    wanted = set(ids)
    return fuse_into_cache(cfg, candidate, [p for p in dataset.pairs() if p.stem in wanted], key, store, "fuse")


def fuse_into_cache(cfg: PipelineConfig, candidate: Candidate, pairs, key: str, store: StageStore,
                    stage: str) -> FuseOutput:
    """Fuse ``pairs`` with the candidate's fuser into ``cache/fused/<key>``, or reuse that folder when finished.

    The key-named folder only ever appears by the rename of a finished one, with its record inside, so a run
    killed between that rename and the stage record loses nothing; a killed fusing resumes image by image.
    """
    from fusion.fuse import fuse_folder

    fuser = make_fuser(candidate, torch_device(cfg.device))
    stored = store.get(candidate.name, stage, key)
    fused_dir = cfg.out / "cache" / "fused" / key[:16]
    record = fused_dir / FUSE_RECORD
    partial = fused_dir.with_name(fused_dir.name + ".partial")  # each image is written atomically: safe to resume
    if store.redo(f"fused:{key}"):  # --force: fused again from nothing, once per run; the old folder stays in
        clear_dir(partial)          # place until the new one replaces it (replace_dir)
    elif fused_dir.is_dir() and (stored or read_record(record, key)):
        if not stored:
            stored = read_record(record, key)
            store.put(candidate.name, stage, key, stored)
        LOGGER.info("%s: fused images reused from %s", candidate.name, fused_dir)
        return FuseOutput(**stored, key=key, cached=True)
    timing = fuse_folder(fuser, pairs, partial, progress=cfg.progress, skip_existing=True)
    seconds = list(timing["per_image"].values())  # images fused now (a resumed folder kept the others)
    # Reading another method's images is no measure of its fusing time.
    measured = bool(seconds) and candidate.kind != "folder"
    output = FuseOutput(dir=str(fused_dir), n_images=len(pairs),
                        seconds_per_image=float(np.mean(seconds)) if measured else None, key=key)
    write_record(partial / FUSE_RECORD, key, output.stored())
    replace_dir(partial, fused_dir)
    store.put(candidate.name, stage, key, output.stored())
    return output


def stage_metrics(cfg: PipelineConfig, candidate: Candidate, dataset, fused: FuseOutput, store: StageStore) -> dict:
    """Mean fusion metrics over the evaluation split (reference-evaluator conventions)."""
    from fusion.metrics import FileTriple, evaluate_triples

    ids = sorted(dataset.splits[cfg.eval_split])
    key = content_key("metrics", fused.key, ids)
    stored = store.get(candidate.name, "metrics", key)
    if stored:
        return stored
    fused_dir = Path(fused.dir)
    triples = [FileTriple(i, fused_dir / f"{i}.png", dataset.ir_path(i), dataset.vis_path(i)) for i in ids]
    per_image, mean = evaluate_triples(triples, workers=min(2, os.cpu_count() or 1))
    output = {"mean": mean, "per_image": per_image}
    store.put(candidate.name, "metrics", key, output)
    return output


def stage_temporal(cfg: PipelineConfig, candidate: Candidate, dataset, fused: FuseOutput, store: StageStore) -> dict:
    """Temporal consistency (``fusion.temporal``) over the evaluation split's runs of consecutive frames.

    M3FD's scenes are consecutive frames: the evaluation ids are grouped by scene (``meta/scenario.json``; ids of
    no known scene form one group) and cut into runs of consecutive ids; runs of one frame are not scored.
    """
    from fusion.temporal import consecutive_runs, evaluate_sequences

    ids = sorted(dataset.splits[cfg.eval_split])
    key = content_key("temporal", fused.key, ids)
    stored = store.get(candidate.name, "temporal", key)
    if stored:
        return stored
    by_scene: dict[str | None, list[str]] = {}
    for i in ids:
        by_scene.setdefault(dataset.scene_of(i), []).append(i)
    fused_dir = Path(fused.dir)
    runs = [[(fused_dir / f"{i}.png", dataset.ir_path(i), dataset.vis_path(i)) for i in run]
            for scene_ids in by_scene.values() for run in consecutive_runs(scene_ids)]
    scored = [run for run in runs if len(run) >= 2]
    output = {"mean": evaluate_sequences(runs), "n_runs": len(scored), "n_frames": sum(map(len, scored))}
    store.put(candidate.name, "temporal", key, output)
    return output


def detection_settings(cfg: PipelineConfig, preset: dict[str, Any]) -> dict[str, Any]:
    """The detector recipe every candidate gets: the preset's, with the command line's overrides.

    Raises:
        ValueError: the recipe cannot train (model not a yaml, missing weights, epochs < 1, ...), all problems listed.
    """
    from detection.presets import load_preset
    from detection.train import check_recipe

    recipe = load_preset(preset["detection"]).train_kwargs()
    overrides = {"model": cfg.model, "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch}
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    recipe["weights"] = str(Path(cfg.weights).resolve()) if cfg.weights else None
    problems = check_recipe(recipe["model"], recipe["weights"], recipe["epochs"], recipe["imgsz"], recipe["batch"],
                            recipe["extra_args"])
    if problems:  # before the dataset is read or anything is fused: every candidate would fail the same way
        raise ValueError("detector recipe: " + "; ".join(problems))
    recipe["weights_sha256"] = file_sha256(cfg.weights) if cfg.weights else None  # the cache follows the bytes
    return recipe


def detect_job(job: dict[str, Any]) -> dict[str, Any]:
    """One detector run on an exported dataset, plus mAP@50 per scenario from its saved predictions.

    Module-level and fed plain data, so it can run in another process or on another machine (``--executor``).
    """
    from torch.utils.tensorboard import SummaryWriter

    from detection.coco_eval import coco_map
    from detection.export import YoloDataset, coco_image_id
    from detection.train import train_and_evaluate

    recipe = dict(job["recipe"])
    recipe.pop("weights_sha256")
    writer = SummaryWriter(job["tb_dir"])
    try:
        result = train_and_evaluate(
            YoloDataset.load(Path(job["dataset"])), **recipe, seed=job["seed"], device=job["device"],
            out_dir=Path(job["run_dir"]), name=f"seed{job['seed']}", tb_writer=writer,
            tb_prefix=f"detect/{job['candidate']}/seed{job['seed']}", eval_split=job["eval_split"],
            force=job.get("force", False))
    finally:
        writer.close()
    out = result.to_dict()
    out["coco_gt"] = job["coco_gt"]  # the bootstrap re-matches the saved predictions against it
    out["scenarios"] = {}
    predictions = Path(result.predictions_path)
    deployed = Path(result.deployed_predictions_path)
    for scenario, ids in job["scenario_ids"].items():
        # Ultralytics writes no predictions.json for a detector that predicted nothing: score no detections.
        image_ids = [coco_image_id(i) for i in ids]
        field = coco_map(Path(job["coco_gt"]), predictions if predictions.is_file() else [], image_ids=image_ids)
        one_class = coco_map(Path(job["coco_gt"]), deployed if deployed.is_file() else [], image_ids=image_ids)
        out["scenarios"][scenario] = {"map50": field.map50, "map50_deployed": one_class.map50, "n_images": len(ids),
                                      "n_boxes": job["scenario_boxes"][scenario]}
    return out


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole comparison; returns the results dict also written to OUT/results.json.

    Every check (options, dataset, candidates) passes before the first write into ``--out``, and from that write to
    its end the run holds ``--out``'s lock (``data.lock``): a second run on the same ``--out`` (another terminal, a
    requeued cluster job) is refused at once with ``FolderLocked`` instead of tearing the first one's files.
    """
    started = time.time()
    cfg = replace(cfg, out=Path(cfg.out).resolve())
    preset = load_pipeline_preset(cfg.preset)
    seeds = list(dict.fromkeys(cfg.seeds if cfg.seeds is not None else preset["seeds"]))  # a repeat is no new seed
    jobs = cfg.jobs or preset["jobs"]
    problems = check_options(cfg, seeds, jobs)
    try:
        settings = detection_settings(cfg, preset)
    except ValueError as err:
        problems.append(str(err))
    if problems:  # options first: cheap, and every candidate would fail the same way after hours of work
        raise OptionsError("; ".join(problems))
    raise_if_locked(cfg.out)  # a run already busy in --out: refused now, not after checking the data

    # 1. Up-front validation: the dataset and every candidate, before anything is written into --out. The lock lives
    # in --out (not beside it, where the parent folder may be shared or read-only) and is taken at the first write,
    # so a refused run creates nothing; a run refused by the lock finds --out and the lock file already there.
    with contextlib.ExitStack() as held:
        generated = dataset_root(cfg) is None
        if generated:  # the synthetic scenes are written into --out, so under its lock, after the cheap checks
            candidate_specs(cfg, preset)  # the command line's own mistakes refuse the run before --out exists
            held.enter_context(hold_folder_lock(cfg.out))
        dataset, data_info = resolve_dataset(cfg, preset["synthetic"])
        candidates = build_candidates(cfg, dataset, preset)
        if not generated:
            held.enter_context(hold_folder_lock(cfg.out))
        prepare_out(cfg, dataset)
        executor = ExecutorConfig(name=cfg.executor or default_executor(jobs), jobs=jobs, scheduler=cfg.scheduler,
                                  gpus_per_job=cfg.gpus_per_job)
        return compare_candidates(cfg, preset, seeds=seeds, executor=executor, settings=settings, dataset=dataset,
                                  data_info=data_info, candidates=candidates, started=started)


def compare_candidates(cfg: PipelineConfig, preset: dict[str, Any], *, seeds: list[int], executor: ExecutorConfig,
                       settings: dict[str, Any], dataset, data_info: dict[str, Any], candidates: list[Candidate],
                       started: float) -> dict[str, Any]:
    """Steps 2-4 of ``run_pipeline`` on its checked inputs, with ``--out`` locked: fuse, score and export every
    candidate, train and score the detectors, then assemble and write the results."""
    from detection.export import export_yolo_dataset

    store = StageStore(cfg.out / "state", force=cfg.force)
    train_here = cfg.train_dae_fuse if cfg.train_dae_fuse is not None else (
        preset.get("train_dae_fuse", False) and not cfg.checkpoints)
    if train_here:
        candidates.append(Candidate(CandidateSpec(name=f"dae_fuse_{preset['fusion_train']}", kind="trained")))

    roles, eval_role = detector_splits(cfg, dataset)
    scenario_ids = {s: sorted(v) for s, v in dataset.scenario_ids(cfg.eval_split).items() if v}
    eval_annotations = dataset.annotations(cfg.eval_split)
    scenario_boxes = {s: sum(len(eval_annotations[i].boxes) for i in ids) for s, ids in scenario_ids.items()}
    progress = Progress("candidate", len(candidates))
    pending_jobs: list[tuple[Candidate, dict[str, Any]]] = []

    # 2. Per candidate: (train) -> fuse -> metrics -> export; detector runs are queued (they may run concurrently).
    for k, cand in enumerate(candidates, start=1):
        if cand.error:
            progress.finished()
            continue
        try:
            if cand.kind == "trained":
                progress.stage(k, cand.name, "training DAE-Fuse")
                checkpoint = train_fusion_here(cfg, preset["fusion_train"], dataset, store)
                cand.spec = replace(cand.spec, fuser="dae_fuse", args={"checkpoint": checkpoint})
            progress.stage(k, cand.name, "fusing")
            fused = stage_fuse(cfg, cand, dataset, store)
            cand.record.fuse = fused
            progress.stage(k, cand.name, "fusion metrics")
            cand.record.metrics = stage_metrics(cfg, cand, dataset, fused, store)["mean"]
            cand.record.temporal = stage_temporal(cfg, cand, dataset, fused, store)
            progress.stage(k, cand.name, "exporting detection dataset")
            used = [i for ids in roles.values() for i in ids]
            yolo = export_yolo_dataset({i: Path(fused.dir) / f"{i}.png" for i in used},
                                       {i: dataset.annotation(i) for i in used}, roles,
                                       cfg.out / "cache" / "yolo" / fused.key[:16], eval_split=eval_role,
                                       class_names=dataset.class_names, force=cfg.force)
            cand.record.detection_runs = {}
            if cfg.force:  # every seed trains again: its curves replace the old ones instead of doubling them
                clear_tb_events(cfg.out / "tb" / cand.name)
            for seed in seeds:
                key = content_key("detect", fused.key, yolo.key, settings, seed, roles, eval_role, cfg.device,
                                  scenario_ids, DETECT_SCORING)
                stored = store.get(cand.name, f"detect_seed{seed}", key)
                if stored:
                    LOGGER.info("%s: detector seed %d reused (%s)", cand.name, seed, stored.get("run_dir"))
                    cand.record.detection_runs[seed] = stored
                    continue
                job = {"candidate": cand.name, "seed": seed, "recipe": settings, "dataset": str(yolo.root),
                       "coco_gt": str(yolo.coco_gt_path), "device": cfg.device, "eval_split": eval_role,
                       "run_dir": str(cfg.out / "runs" / cand.name), "tb_dir": str(cfg.out / "tb" / cand.name),
                       "scenario_ids": scenario_ids, "scenario_boxes": scenario_boxes, "key": key,
                       "force": cfg.force}
                pending_jobs.append((cand, job))
        except Exception as err:  # noqa: BLE001 - one failing candidate must not stop the others
            LOGGER.exception("candidate %s failed", cand.name)
            cand.error = f"{type(err).__name__}: {err}"
        progress.finished()

    # 3. Detector trainings: one at a time, --jobs N at once where the hardware allows, or on a Dask cluster.
    run_detector_jobs(pending_jobs, executor, store)

    # 3b. Robustness: the trained detectors scored again on corrupted evaluation inputs (no retraining).
    robustness = stage_robustness(cfg, candidates, dataset, settings, seeds, store)

    # 4. Assemble, rank, write.
    scenarios = {s: {"n_images": len(ids), "n_boxes": scenario_boxes[s]} for s, ids in scenario_ids.items()}
    results = assemble_results(cfg, preset, seeds, settings, data_info, candidates, scenarios, time.time() - started)
    results["robustness"] = robustness
    write_outputs(cfg, results, candidates, dataset, sorted(dataset.splits[cfg.eval_split]))
    return results


def stage_robustness(cfg: PipelineConfig, candidates: list[Candidate], dataset, settings: dict, seeds: list[int],
                     store: StageStore) -> dict[str, Any]:
    """Every candidate's kept detectors scored on corrupted evaluation inputs (``pipelines.robustness``)."""
    if not cfg.corruptions:
        return {}
    from detection.bootstrap import image_matches
    from detection.export import export_yolo_dataset
    from detection.train import score_detector

    from .robustness import corrupted_pairs, robustness_intervals

    ids = sorted(dataset.splits[cfg.eval_split])
    sources_key = source_fingerprint(dataset, ids)
    usable = [c for c in candidates if not c.error and c.kind != "folder"
              and all(s in c.record.detection_runs for s in seeds)]
    out: dict[str, Any] = {"corruptions": list(cfg.corruptions), "severities": list(cfg.severities),
                           "seed": cfg.corruption_seed, "cells": {},
                           "skipped": {c.name: "a pre-fused folder cannot fuse corrupted inputs"
                                       for c in candidates if c.kind == "folder"}}
    clean = {}
    for cand in usable:
        runs = [cand.record.detection_runs[s] for s in seeds]
        if all(r.get("coco_gt") and r.get("deployed_predictions_path") for r in runs):
            clean[cand.name] = [image_matches(Path(r["coco_gt"]), _predictions(r["deployed_predictions_path"]))
                                for r in runs]
    progress = Progress("robustness", len(cfg.corruptions) * len(cfg.severities))
    for corruption in cfg.corruptions:
        for severity in cfg.severities:
            cell_name = f"{corruption}/{severity}"
            progress.stage(progress.done + 1, cell_name, f"corrupting, fusing and scoring {len(usable)} candidates")
            pairs, corrupt_key = corrupted_pairs(cfg.out / "cache", dataset, ids, corruption, severity,
                                                 cfg.corruption_seed, sources_key, force=cfg.force)
            scored: dict[str, list[dict[str, Any]]] = {}
            for cand in usable:
                try:
                    fuser = make_fuser(cand, torch_device(cfg.device))
                    fused = fuse_into_cache(cfg, cand, pairs, content_key("fuse", fuser.cache_key(), corrupt_key),
                                            store, f"fuse_{corruption}_{severity}")
                    yolo = export_yolo_dataset({i: Path(fused.dir) / f"{i}.png" for i in ids},
                                               {i: dataset.annotation(i) for i in ids}, {"test": ids},
                                               cfg.out / "cache" / "yolo" / fused.key[:16], eval_split="test",
                                               class_names=dataset.class_names, force=cfg.force)
                    scored[cand.name] = [_score_seed(cfg, cand, yolo, fused, settings, seed, corruption, severity,
                                                     store, score_detector) for seed in seeds]
                except Exception as err:  # noqa: BLE001 - one candidate's failure leaves the others' cells
                    LOGGER.exception("robustness %s %s failed", cell_name, cand.name)
                    out.setdefault("errors", {})[f"{cell_name}/{cand.name}"] = f"{type(err).__name__}: {err}"
            cell: dict[str, Any] = {"candidates": {
                name: {"map50_deployed": report.mean_std([r["deployed"]["map50"] for r in runs]),
                       "map50": report.mean_std([r["field"]["map50"] for r in runs])} for name, runs in scored.items()}}
            if cfg.bootstrap_resamples and scored:
                corrupted = {name: [image_matches(Path(r["coco_gt"]), _predictions(r["deployed"]["predictions_path"]))
                                    for r in runs] for name, runs in scored.items()}
                image_ids = next(iter(corrupted.values()))[0].image_ids
                cell["intervals"] = robustness_intervals(clean, corrupted, image_ids, cfg.bootstrap_resamples,
                                                         cfg.bootstrap_seed)
            out["cells"][cell_name] = cell
            progress.finished()
    return out


def _predictions(path: str | None):
    """A saved predictions file, or no detections when Ultralytics wrote none (it does not for zero boxes)."""
    return Path(path) if path and Path(path).is_file() else []


def _score_seed(cfg: PipelineConfig, cand: Candidate, yolo, fused: FuseOutput, settings: dict, seed: int,
                corruption: str, severity: int, store: StageStore, score_detector) -> dict[str, Any]:
    run = cand.record.detection_runs[seed]
    stage = f"robust_{corruption}_{severity}_seed{seed}"
    key = content_key("robust", fused.key, yolo.key, run.get("key"), DETECT_SCORING)
    stored = store.get(cand.name, stage, key)
    if stored:
        return stored
    weights = Path(run["run_dir"]) / "weights" / "best.pt"
    if not weights.is_file():
        weights = weights.with_name("last.pt")
    scores = score_detector(weights, yolo, cfg.out / "robustness" / cand.name / f"{corruption}_s{severity}" /
                            f"seed{seed}", eval_split="test", imgsz=settings["imgsz"], batch=settings["batch"],
                            device=cfg.device)
    scores["coco_gt"] = str(yolo.coco_gt_path)
    store.put(cand.name, stage, key, scores)
    return scores


def run_detector_jobs(pending: list[tuple[Candidate, dict[str, Any]]], executor: ExecutorConfig,
                      store: StageStore) -> None:
    """Run the queued detector jobs on ``executor``; each result is stored as it arrives (a killed run resumes
    from the finished ones), and a failed job fails its candidate while the others go on."""
    if not pending:
        return
    if executor.name == "pool" and len(pending) == 1:  # a spawned process would cost an interpreter and torch
        executor = replace(executor, name="local")
    progress = Progress("detector", len(pending))
    with EXECUTORS.get(executor.name)(executor) as runner:
        progress.stage(0, f"{len(pending)} run(s)", f"training and evaluating on {runner.describe()}")
        for outcome in runner.run([Job(detect_job, job) for _, job in pending]):
            cand, job = pending[outcome.index]
            progress.finished()
            if outcome.error is not None:
                err = outcome.error
                LOGGER.error("detector run %s seed %s failed: %s", cand.name, job["seed"], err)
                cand.error = f"detector (seed {job['seed']}): {type(err).__name__}: {err}"
                progress.stage(progress.done, cand.name, f"seed {job['seed']} failed")
                continue
            store.put(cand.name, f"detect_seed{job['seed']}", job["key"], outcome.result)
            cand.record.detection_runs[job["seed"]] = outcome.result
            progress.stage(progress.done, cand.name, f"seed {job['seed']} done")


def assemble_results(cfg: PipelineConfig, preset: dict, seeds: list[int], settings: dict, data_info: dict,
                     candidates: list[Candidate], scenarios: dict, wall: float) -> dict[str, Any]:
    """The results.json document: config, versions, data and split, ranked candidates, Spearman, scenarios."""
    records = []
    for cand in candidates:
        runs = [cand.record.detection_runs[s] for s in seeds if s in cand.record.detection_runs]
        fuse = cand.record.fuse
        records.append({
            "name": cand.name, "kind": cand.kind, "baseline": cand.baseline,
            "checkpoint": str(cand.checkpoint) if cand.checkpoint else None, "error": cand.error,
            "origin": cand.spec.origin, "spec": cand.spec.to_dict(),
            "fusion": cand.record.metrics, "temporal": cand.record.temporal,
            "fuse_seconds_per_image": fuse.seconds_per_image if fuse else None,
            "fused_dir": fuse.dir if fuse else None,
            # A candidate with any failed seed is not ranked: a mean over fewer seeds than the others' is no match.
            "detection": report.summarise_detection(runs) if runs and not cand.error else None,
            "detection_runs": runs,
        })
    best_single = report.add_gains(records, cfg.protocol)
    bootstrap = {}
    if cfg.bootstrap_resamples:
        from .significance import bootstrap_verdicts

        started = time.perf_counter()
        bootstrap = bootstrap_verdicts(records, seeds, cfg.bootstrap_resamples, cfg.bootstrap_seed)
        bootstrap["seconds"] = round(time.perf_counter() - started, 3)
    cfg_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    cfg_dict["checkpoints"] = [str(p) for p in cfg.checkpoints]
    cfg_dict["fused"], cfg_dict["plugins"] = list(cfg.fused), [list(tokens) for tokens in cfg.plugins]
    cfg_dict.update({"seeds": seeds, "detection": settings, "preset_values": preset})
    return {"config": cfg_dict, "versions": package_versions(), "data": data_info,
            "candidates": report.ranked(records, cfg.protocol), "best_single_map50": best_single,
            "bootstrap": bootstrap,
            "spearman": report.spearman_table(records, cfg.protocol) if len(records) >= 3 else [],
            "scenarios": scenarios, "wall_time_s": wall, "command": " ".join(sys.argv)}


def write_outputs(cfg: PipelineConfig, results: dict, candidates: list[Candidate], dataset, eval_ids) -> None:
    records = results["candidates"]
    # matplotlib's font cache goes into the run, not the user's home (Ultralytics' setup does the same when it ran).
    os.environ.setdefault("MPLCONFIGDIR", str(cfg.out / ".matplotlib"))
    atomic_write_json(cfg.out / "results.json", results)
    report.write_csv(cfg.out / "results.csv", records, cfg.protocol, results.get("bootstrap"))
    atomic_write_text(cfg.out / "results.md", report.render_markdown(results))
    report.plot_metric_vs_map(cfg.out / "plots" / "map50_vs_fusion_metrics.png", records, cfg.protocol)
    report.plot_gains(cfg.out / "plots" / "gains.png", results.get("bootstrap"))
    if (results.get("robustness") or {}).get("cells"):
        clean = {r["name"]: (r.get("detection") or {}).get("map50_deployed", {}).get("mean") for r in records
                 if (r.get("detection") or {}).get("map50_deployed")}
        report.plot_robustness(cfg.out / "plots" / "robustness.png", results["robustness"], clean)
    scenes = pick_grid_scenes(dataset, eval_ids)
    grid = {}
    for r in records:
        if r.get("fused_dir"):
            grid[r["name"]] = [read_image(Path(r["fused_dir"]) / f"{i}.png") for i in scenes]
    if grid:
        sources = {"IR (source)": [read_ir(dataset.ir_path(i)) for i in scenes],
                   "visible (source)": [read_visible_bgr(dataset.vis_path(i)) for i in scenes]}
        report.write_scene_grid(cfg.out / "plots" / "fused_scenes.png", {**sources, **grid})
    write_tensorboard(cfg.out / "tb", results, grid, scenes)


def pick_grid_scenes(dataset, eval_ids: list[str]) -> list[str]:
    """A few evaluation images, one per scenario first (night, daytime, ...), so the grid shows variety."""
    chosen: list[str] = []
    by_scenario: dict[str, list[str]] = {}
    for i in eval_ids:
        by_scenario.setdefault(dataset.scenario_of(i) or "", []).append(i)
    for ids in by_scenario.values():
        chosen.append(ids[len(ids) // 2])
    chosen += [i for i in eval_ids if i not in chosen]
    return chosen[:GRID_SCENES]


def read_visible_bgr(path: Path) -> np.ndarray:
    y, bgr = read_visible(path)
    return bgr if bgr is not None else y.astype(np.uint8)


def write_tensorboard(tb_root: Path, results: dict, grid: dict[str, list[np.ndarray]], scenes: list[str]) -> None:
    """Per candidate, a TensorBoard run ``<name>/summary`` with fused sample images and the hparams view (the
    detector curves are in ``<name>``, written by the runs). It is rewritten, not appended to, on every run, so a
    rerun does not show each candidate twice."""
    from torch.utils.tensorboard import SummaryWriter

    for r in results["candidates"]:
        summary_dir = tb_root / r["name"] / "summary"
        shutil.rmtree(summary_dir, ignore_errors=True)
        writer = SummaryWriter(str(summary_dir))
        try:
            for scene, image in zip(scenes, grid.get(r["name"], [])):
                rgb = image[..., ::-1] if image.ndim == 3 else image
                writer.add_image(f"fused/{scene}", np.ascontiguousarray(rgb),
                                 dataformats="HWC" if image.ndim == 3 else "HW")
            det = r.get("detection") or {}
            metrics = {"hparam/mAP50": (det.get("map50") or {}).get("mean", math.nan),
                       "hparam/mAP50_deployed": (det.get("map50_deployed") or {}).get("mean", math.nan),
                       "hparam/mAP50-95": (det.get("map50_95") or {}).get("mean", math.nan),
                       "hparam/gain_vs_best_single": r["gain_map50"] if r.get("gain_map50") is not None else math.nan}
            metrics.update({f"hparam/{m}": v for m, v in (r.get("fusion") or {}).items()})
            writer.add_hparams({"candidate": r["name"], "kind": r["kind"], "failed": bool(r.get("error"))},
                               metrics, run_name=".")
        finally:
            writer.close()
