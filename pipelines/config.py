"""What a pipeline run depends on: its options (``PipelineConfig``, each spelled once: the dataclass field carries
its command-line help, and ``pipelines/run_m3fd.py`` builds its parser from the fields), its preset
(``pipelines/presets.yaml`` read through ``data.config``, the one configuration mechanism) and the checks that
refuse a run before any work.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.config import ConfigError, from_dict, read_yaml
from detection.protocols import DEFAULT_PROTOCOL

from .executors import EXECUTORS, default_executor

PRESETS_FILE = Path(__file__).with_name("presets.yaml")


def option(help: str, flag: str | None = None, **argparse_kwargs: Any) -> dict[str, Any]:
    """A field's command-line spelling: its help, its flag when not ``--field-name``, and any further
    ``argparse.add_argument`` keywords (``nargs``, ``type``, ``action``, ``metavar``...). Fields without one are
    not on the command line."""
    return {"cli": {"help": help, "flag": flag, **argparse_kwargs}}


def _corruption_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


@dataclass
class PipelineConfig:
    """Everything a run depends on; saved in results.json."""

    data: Path | None = field(default=None, metadata=option(
        "dataset root; default $M3FD_ROOT, else built-in synthetic scenes", type=Path))
    dataset: str | None = field(default=None, metadata=option(
        "dataset reader (data.datasets): m3fd (default), llvip, folder, synthetic, or package.module:function "
        "(see README 'Your own dataset')"))
    dataset_options: list[str] = field(default_factory=list, metadata=option(
        "an option of the dataset reader (e.g. modalities=ir,vis,nir colour=vis for a folder dataset); repeatable",
        flag="--dataset-option", action="append", metavar="KEY=VALUE"))
    checkpoints: list[Path] = field(default_factory=list, metadata=option(
        "DAE-Fuse checkpoints to compare", type=Path, nargs="*"))
    train_dae_fuse: bool | None = field(default=None, metadata=option(
        "also train a DAE-Fuse on the training split here, with the preset's short schedule", action="store_true"))
    released_dae_fuse: bool | None = field(default=None, metadata=option(
        "leave out the released DAE-Fuse (fusion/weights), which every preset but tiny includes",
        flag="--no-released-dae-fuse", action="store_false"))
    baselines: list[str] | None = field(default=None, metadata=option(
        "simple fusers to include (default: the preset's; quick: ir vis max). The single-modality rows are always "
        "included: gains are measured against the better of them", nargs="*"))
    fused: list[str] = field(default_factory=list, metadata=option(
        "another method's fused images as a candidate: a folder with one image per dataset id (any format, grey or "
        "colour) covering the train, selection and evaluation splits; repeatable", action="append",
        metavar="NAME=DIR"))
    plugins: list[list[str]] = field(default_factory=list, metadata=option(
        "a plug-in fuser as a candidate: a factory returning a fusion.fusers.base.Fuser (or the name of an installed "
        "'fusebench.fusers' entry point), called with the key=value arguments; repeatable", flag="--fuser",
        action="append", nargs="+", metavar=("NAME=package.module:factory", "key=value")))
    early_fusion: bool | None = field(default=None, metadata=option(
        "a row for early fusion ('stack'): the detector reads the modalities as one N-channel image (default: the "
        "preset's)", action=argparse.BooleanOptionalAction))
    late_fusion: bool | None = field(default=None, metadata=option(
        "a row for late fusion ('late'): the single-modality detectors' boxes merged per image, no new training "
        "(default: the preset's)", action=argparse.BooleanOptionalAction))
    late_method: str = field(default="wbf", metadata=option(
        "how late fusion merges boxes: wbf (weighted boxes fusion) or nms", choices=["wbf", "nms"]))
    preset: str = field(default="quick", metadata=option("pipeline preset (pipelines/presets.yaml)"))
    seeds: list[int] | None = field(default=None, metadata=option(
        "detector seeds (default: the preset's)", type=int, nargs="+"))
    epochs: int | None = field(default=None, metadata=option("override the detector preset's epochs", type=int))
    imgsz: int | None = field(default=None, metadata=option("override the detector preset's image size", type=int))
    batch: int | None = field(default=None, metadata=option("override the detector preset's batch size", type=int))
    model: str | None = field(default=None, metadata=option(
        "detector model yaml (default yolov8n.yaml, built from scratch)"))
    weights: Path | None = field(default=None, metadata=option(
        "local detector weights .pt to start from (nothing is downloaded)", type=Path))
    device: str = field(default="cpu", metadata=option("cpu, 0, or 0,1,... (Ultralytics DDP for several GPUs)"))
    jobs: int | None = field(default=None, metadata=option(
        "detector runs at once (default: the preset's); with --executor dask and no --scheduler, the local "
        "cluster's worker processes", type=int))
    executor: str | None = field(default=None, metadata=option(
        "where the detector runs go: local (in this process, one at a time), pool (--jobs local processes) or dask "
        "(a Dask cluster); default local for --jobs 1, else pool. Fusing, scoring and robustness run in this "
        "process whichever is chosen", choices=EXECUTORS.names()))
    scheduler: str | None = field(default=None, metadata=option(
        "--executor dask: join this running scheduler (dask-jobqueue, dask-kubernetes, 'dask scheduler'); its "
        "workers need this repository installed and --out on a shared filesystem. Default: a local cluster of "
        "--jobs worker processes on 127.0.0.1, closed at the end", metavar="tcp://HOST:PORT"))
    gpus_per_job: float | None = field(default=None, metadata=option(
        "--executor dask: each detector run holds N of a worker's 'GPU' resource (start workers with --resources "
        "GPU=1), so a worker trains one at a time on its GPU", type=float, metavar="N"))
    train_split: str = field(default="train", metadata=option("split the detectors learn from (default train)"))
    select_split: str = field(default="val", metadata=option(
        "split validated every epoch to keep the best detector checkpoint (default val)"))
    eval_split: str = field(default="test", metadata=option(
        "split the kept detector and the fusion metrics are scored on (default test; naming the --select-split "
        "here scores on the selection images, which the report flags as optimistic)"))
    split_seed: int = field(default=0, metadata=option(
        "seed of the scene-aware split when the dataset gives no lists", type=int))
    protocol: str = field(default=DEFAULT_PROTOCOL, metadata=option(
        "how the ranking and the verdict score detectors: 'deployed' (default; one class per box, as a deployed "
        "detector outputs) or 'field' (Ultralytics' multi-label validator, as papers report); both are always in "
        "the tables"))
    bootstrap_resamples: int = field(default=1000, metadata=option(
        "paired bootstrap resamples of the evaluation images for the 95%% intervals (>= 1000; 0: none)",
        flag="--bootstrap", type=int))
    bootstrap_seed: int = field(default=0, metadata=option("seed of the bootstrap's resampling", type=int))
    corruptions: list[str] = field(default_factory=list, metadata=option(
        "robustness check: corrupt the evaluation split's sources (fog, low_light, glare, noise, blur), fuse them "
        "with every candidate and score its trained detector again (no retraining)", type=_corruption_list,
        metavar="NAME[,NAME...]"))
    severities: list[int] = field(default_factory=lambda: [1, 2, 3], metadata=option(
        "corruption severities (1-3)", type=int, nargs="+"))
    corruption_seed: int = field(default=0, metadata=option("seed of the corruptions' randomness", type=int))
    sudden_change: str | None = field(default=None, metadata=option(
        "sudden change of visibility on the evaluation split's consecutive frames: a corruption switching on, ramping "
        "up or flashing (NAME:PROFILE:START[:DURATION[:SEVERITY]], e.g. fog:ramp:1:2:3, glare:flash:1:1); each fuser's "
        "per-frame quality and temporal error around it -> plots/sudden_change.{png,md,json}", metavar="SPEC"))
    out: Path = field(default=Path("runs/m3fd"), metadata=option("the run's folder (one run at a time)", type=Path))
    force: bool = field(default=False, metadata=option(
        "redo everything: fusing, the DAE-Fuse trained here, exports, detector runs, robustness",
        action="store_true"))
    progress: bool = field(default=True, metadata=option(
        "no progress lines", flag="--no-progress", action="store_false"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (paths as strings) for results.json."""
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class SyntheticScenes:
    """Size of the built-in synthetic scenes used when no dataset is given."""

    num_scenes: int
    frames_per_scene: int
    size: tuple[int, int]  # width, height


@dataclass(frozen=True)
class PipelinePreset:
    """One entry of ``pipelines/presets.yaml`` (each key's meaning and source are documented there)."""

    detection: str
    fusion_train: str
    released_dae_fuse: bool
    train_dae_fuse: bool
    seeds: list[int]
    jobs: int
    synthetic: SyntheticScenes
    baselines: list[str] | None = None  # None: every simple rule
    early_fusion: bool = False          # a 'stack' row (the detector reads the modalities as channels)
    late_fusion: bool = False           # a 'late' row (the single-modality detectors' boxes merged)


def load_pipeline_preset(name: str, path: Path = PRESETS_FILE) -> PipelinePreset:
    """The preset ``name`` as a typed, checked ``PipelinePreset`` (``ConfigError`` names the bad key)."""
    presets = read_yaml(path)
    if name not in presets:
        raise ConfigError(f"unknown pipeline preset '{name}'; known: {', '.join(presets)}")
    return from_dict(PipelinePreset, presets[name], f"{path.name}:{name}")


def pipeline_preset_names(path: Path = PRESETS_FILE) -> list[str]:
    return list(read_yaml(path))


def torch_device(device: str) -> str:
    """The torch device for fusing and fusion training from the pipeline's Ultralytics-style ``--device``.

    Ultralytics names GPUs by index ("0", "0,1"); torch wants "cuda:0". With several GPUs the detectors use all
    of them (Ultralytics' DDP) and fusion runs on the first (multi-GPU fusion training goes through torchrun).
    """
    first = device.split(",")[0].strip()
    return f"cuda:{first}" if first.isdigit() else first


class OptionsError(ValueError):
    """The run's options cannot work (detector recipe, seeds, jobs, device, --out); raised before any work."""


def check_options(cfg: PipelineConfig, seeds: list[int], jobs: int) -> list[str]:
    """Problems with the options that are not the detector recipe's (``stages.detect.detection_settings``)."""
    from data.corruptions import check_corruptions
    from detection.protocols import PROTOCOLS

    problems = []
    if not seeds or min(seeds) < 0:
        problems.append(f"seeds must be non-negative integers, got {seeds}")
    if jobs < 1:
        problems.append(f"--jobs must be at least 1, got {jobs}")
    problems += check_executor(cfg, jobs)
    if cfg.protocol not in PROTOCOLS:
        problems.append(f"--protocol {cfg.protocol!r}: known protocols are {', '.join(PROTOCOLS.names())}")
    if cfg.bootstrap_resamples != 0 and cfg.bootstrap_resamples < 1000:
        problems.append(f"--bootstrap {cfg.bootstrap_resamples}: use at least 1000 resamples (or 0 for none); "
                        "fewer make the 95% interval's ends noisy")
    problems += check_corruptions(list(cfg.corruptions), list(cfg.severities) if cfg.corruptions else [])
    if cfg.sudden_change:
        from fusion.video.sudden_change import parse_corruption

        try:
            problems += [f"--sudden-change: {p}" for p in parse_corruption(cfg.sudden_change, key="check").problems()]
        except ValueError as err:
            problems.append(f"--sudden-change: {err}")
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
