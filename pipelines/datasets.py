"""The run's dataset: which one (``--dataset``/``--data``, ``$M3FD_ROOT``, else the built-in synthetic scenes),
loaded and checked before any heavy work, and the run's first writes into ``--out`` once every check passed."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from data.errors import DatasetError
from data.io import remove_stale_temps_tree

from .config import OptionsError, PipelineConfig, SyntheticScenes, check_splits
from .records import DatasetInfo, SplitInfo

LOGGER = logging.getLogger(__name__)


def dataset_root(cfg: PipelineConfig) -> Path | None:
    """The dataset's folder: ``--data``, else ``$M3FD_ROOT``; None: the built-in synthetic scenes, generated into
    ``--out``."""
    root = cfg.data or (Path(os.environ["M3FD_ROOT"]) if os.environ.get("M3FD_ROOT") else None)
    return Path(root) if root is not None else None


def generate_scenes(cfg: PipelineConfig, synthetic: SyntheticScenes) -> Path:
    """Write the built-in synthetic scenes into ``--out`` (reused when already there), loudly labelled."""
    from data.synthetic import generate_synthetic_m3fd

    root = cfg.out / "synthetic_m3fd"
    banner = "=" * 78
    print(f"{banner}\nNo --data given and M3FD_ROOT is not set: using the BUILT-IN SYNTHETIC M3FD-layout scenes\n"
          f"at {root}. These numbers say nothing about real M3FD. For real rankings run:\n"
          f"    python pipelines/run_m3fd.py --data /path/to/M3FD   (Ir/, Vis/, Annotation/, meta/)\n{banner}",
          flush=True)
    return generate_synthetic_m3fd(root, num_scenes=synthetic.num_scenes,
                                   frames_per_scene=synthetic.frames_per_scene, size=tuple(synthetic.size), seed=0)


def load_run_dataset(cfg: PipelineConfig, root: Path, name: str | None = None):
    """The dataset at ``root`` through its reader (``--dataset``, default M3FD's) and ``--dataset-option``s."""
    from data.datasets import DatasetSpecError, load_dataset, parse_options

    try:
        options = {"seed": cfg.split_seed, **parse_options(cfg.dataset_options)}
        return load_dataset(name or cfg.dataset or "m3fd", Path(root), **options)
    except DatasetSpecError as err:
        raise OptionsError(f"--dataset: {err}") from None


def resolve_dataset(cfg: PipelineConfig, synthetic: SyntheticScenes | None) -> tuple[Any, DatasetInfo]:
    """Load and validate the dataset (raises DatasetError before any heavy work). Returns (dataset, info).

    Writes nothing into ``--out`` but the synthetic scenes when no data is given (``generate_scenes``);
    ``prepare_out`` writes the split once every check has passed.
    """
    from data.synthetic import PARAMS_FILE as SYNTHETIC_MARKER

    root = dataset_root(cfg)
    generate = root is None
    # Data the synthetic generator wrote stays labelled synthetic when it is passed with --data too.
    is_synthetic = generate or (root / SYNTHETIC_MARKER).is_file()
    if generate:
        root = generate_scenes(cfg, synthetic)
    dataset = load_run_dataset(cfg, Path(root), "synthetic" if generate else None)
    problems = check_splits(cfg, {name: len(ids) for name, ids in dataset.splits.items()})
    for option, used in (("--corruptions", cfg.corruptions), ("--sudden-change", cfg.sudden_change)):
        if used and set(dataset.modalities) != {"ir", "vis"}:  # data.corruptions models those two cameras
            problems.append(f"{option} corrupts an infrared and a visible camera; this dataset's modalities are "
                            f"{', '.join(dataset.modalities)}")
    if not problems and not any(ann.boxes for ann in dataset.annotations(cfg.eval_split).values()):
        problems.append(f"split '{cfg.eval_split}' (--eval-split) has no boxes: there is nothing to detect")
    if problems:
        raise DatasetError(str(root), problems)
    info = DatasetInfo(
        root=str(Path(root).resolve()), reader=dataset.name, modalities=list(dataset.modalities),
        colour=dataset.colour, synthetic=is_synthetic, n_images=len(dataset.ids), class_names=list(dataset.class_names),
        split=SplitInfo(method=dataset.split_info.get("method"), file=str(cfg.out / "split.json"),
                        seed=dataset.split_info.get("seed"), counts={k: len(v) for k, v in dataset.splits.items()}))
    return dataset, info


def prepare_out(cfg: PipelineConfig, dataset) -> None:
    """The run's first writes into ``--out`` (under its lock, after every check): sweep what a killed earlier run
    left half-written, wherever it was, and write the split."""
    swept = remove_stale_temps_tree(cfg.out)
    if swept:
        LOGGER.info("removed %d temporary file(s) a killed run left in %s", len(swept), cfg.out)
    dataset.write_split(cfg.out / "split.json")
