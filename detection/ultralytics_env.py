"""The one place that prepares Ultralytics to run offline, with every file it writes inside a project folder.

Ultralytics reaches the network and writes to the user's home at import time and during training (see
``../shared/ULTRALYTICS_OFFLINE.md``, sections 2 and 8). Each leak is closed here, *before* the first
``import ultralytics`` of the process:

=====================================  =====================================================================
leak                                   fix applied by :func:`setup_offline`
=====================================  =====================================================================
online check (DNS) at import           ``YOLO_OFFLINE=1`` (also turns off the pip-update check and telemetry)
pip AutoUpdate of missing extras       ``YOLO_AUTOINSTALL=0`` (the package registry may be reachable)
``~/.config/Ultralytics/settings``     ``YOLO_CONFIG_DIR=<config_dir>`` (Ultralytics adds ``Ultralytics/``)
font download from GitHub              ``DejaVuSans.ttf`` from matplotlib copied to ``Ultralytics/Arial.ttf``
``~/.cache/matplotlib``                ``MPLCONFIGDIR=<config_dir>/matplotlib`` unless the caller set one
third-party loggers, Platform sync     ``settings.update(sync=False, clearml=False, ...)``
runs/datasets/weights in the cwd       settings dirs pointed into ``config_dir``; callers always pass ``project=``
1 torch thread on a 2-core machine     ``ultralytics.utils.torch_utils.NUM_THREADS`` patched (see ``threads``)
OpenMP spin-waiting on shared cores    ``OMP_WAIT_POLICY=PASSIVE`` when torch is not loaded yet
"faster-coco-eval not found" warnings  filtered from Ultralytics' logger while that package is absent
=====================================  =====================================================================

The process-wide part (environment variables, the settings file) is fixed by the first call; later calls
check it is still in force and re-assert the per-call parts (font present, thread count). Nothing else in the
project imports ``ultralytics`` or unpickles a ``.pt`` checkpoint (which imports it) before this ran.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from data.io import atomic_path

# Ultralytics puts its files in <YOLO_CONFIG_DIR>/Ultralytics (utils.get_user_config_dir).
_ULTRALYTICS_SUBDIR = "Ultralytics"
# check_font() looks for these names in the config dir before trying to download them.
_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
# Settings that would start network traffic or third-party logging. There is no 'neptune' key in 8.4.
_OFFLINE_SETTINGS = {
    "sync": False,
    "api_key": "",
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,  # the project mirrors metrics itself (detection.train.TensorBoardMirror)
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


# Ultralytics' logger (ultralytics.utils.LOGGING_NAME).
_ULTRALYTICS_LOGGER = "ultralytics"


class QuietMissingFasterCocoEval(logging.Filter):
    """Drops Ultralytics' log lines about the absent ``faster-coco-eval`` package.

    ``val(save_json=True)`` on a custom dataset tries an extra COCO evaluation with faster-coco-eval and, without
    it, logs three lines (the heading, "requirement not found, AutoUpdate disabled", "unable to run"): twice per
    detector here (field and deployed protocols). The project scores ``predictions.json`` with pycocotools
    instead (``detection.coco_eval``), so nothing is lost; with the package installed nothing is filtered.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "faster-coco-eval" not in message and "faster_coco_eval" not in message


def _quiet_missing_faster_coco_eval() -> None:
    logger = logging.getLogger(_ULTRALYTICS_LOGGER)
    if importlib.util.find_spec("faster_coco_eval") is None and not any(
            isinstance(f, QuietMissingFasterCocoEval) for f in logger.filters):
        logger.addFilter(QuietMissingFasterCocoEval())


def default_threads() -> int:
    """Torch CPU threads used for training: all cores up to 8 (Ultralytics' own cap), pinned for determinism."""
    return max(1, min(8, os.cpu_count() or 1))


def _matplotlib_font() -> Path:
    # Located without importing matplotlib: importing it would fix its config dir before MPLCONFIGDIR is set.
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is not installed; it provides the local font Ultralytics needs offline")
    font = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.is_file():
        raise RuntimeError(f"matplotlib's DejaVuSans.ttf not found at {font}")
    return font


def _install_fonts(ultralytics_dir: Path) -> None:
    ultralytics_dir.mkdir(parents=True, exist_ok=True)
    source = None
    for name in _FONT_NAMES:
        target = ultralytics_dir / name
        if not target.is_file():
            source = source or _matplotlib_font()
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)


def setup_offline(config_dir: str | Path, *, threads: int | None = None) -> ModuleType:
    """Prepare Ultralytics for offline use and return the imported ``ultralytics`` module.

    Args:
        config_dir: a folder the project owns (typically inside the run folder). Ultralytics' settings file, the
            local font and matplotlib's cache go there. Only the first call of a process chooses it; later calls
            with another folder keep the first one (the environment variables Ultralytics reads at import
            cannot change afterwards) and only make sure its font is still there.
        threads: torch CPU threads for training and validation (default :func:`default_threads`). Ultralytics'
            ``select_device('cpu')`` would otherwise set ``min(8, cores - 1)``, i.e. 1 thread on 2 cores.

    Raises:
        RuntimeError: ``ultralytics`` was imported elsewhere before this function ran, so its online check and
            settings file may already have happened.
    """
    requested = Path(config_dir).resolve()
    if "ultralytics" in sys.modules:
        if os.environ.get("YOLO_OFFLINE") != "1" or not os.environ.get("YOLO_CONFIG_DIR"):
            raise RuntimeError(
                "ultralytics was imported before detection.ultralytics_env.setup_offline() ran; import the "
                "project's detection modules instead of ultralytics directly so nothing is fetched or written to $HOME"
            )
        active = Path(os.environ["YOLO_CONFIG_DIR"])
    else:
        active = requested
        active.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for updates on import
        os.environ["YOLO_CONFIG_DIR"] = str(active)
        if "matplotlib" not in sys.modules:
            os.environ.setdefault("MPLCONFIGDIR", str(active / "matplotlib"))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads or default_threads()))
    if "torch" not in sys.modules:
        # libgomp reads this when torch loads. Spinning OpenMP threads stall when the cores are shared: on the
        # 2-core dev box with other jobs running, a yolov8n step (batch 8, 96 px) took 18 s with 2 spinning
        # threads, 0.4 s with PASSIVE (and 0.4 s with 1 thread). Entry points that load torch earlier should set it.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    _install_fonts(active / _ULTRALYTICS_SUBDIR)

    import ultralytics
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import settings

    wanted = {
        **_OFFLINE_SETTINGS,
        "runs_dir": str(active / "runs"),
        "weights_dir": str(active / "weights"),
        "datasets_dir": str(active / "datasets"),
    }
    if any(settings.get(key) != value for key, value in wanted.items()):
        settings.update(wanted)
    torch_utils.NUM_THREADS = threads or default_threads()
    _quiet_missing_faster_coco_eval()
    return ultralytics
