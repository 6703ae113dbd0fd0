"""Detector training presets (``detection/presets.yaml``) as frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.config import from_dict, read_yaml

PRESETS_PATH = Path(__file__).with_name("presets.yaml")


@dataclass(frozen=True)
class DetectionPreset:
    """One preset: what :func:`detection.train.train_and_evaluate` needs besides the dataset and the run folder.

    Attributes:
        name: the preset's key in ``presets.yaml``.
        description: what it is for.
        model: Ultralytics model yaml, trained from scratch (e.g. ``yolov8n.yaml``).
        epochs: training epochs (Ultralytics' ``time`` in ``train_args``, when set, overrides it).
        imgsz: square training and evaluation size in pixels.
        batch: batch size.
        train_args: further Ultralytics ``train()`` arguments (optimizer, lr0, time, patience, plots, ...).
        threads: torch CPU threads per detector run, or None for all cores (up to 8). Part of the recipe, not of
            the scheduling: on CPU the thread count changes the floating point and so the trained detector, so
            ``--jobs 2`` and ``--jobs 1`` run the same recipe with the same threads and give identical detectors.
    """

    name: str
    description: str
    model: str
    epochs: int
    imgsz: int
    batch: int
    train_args: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``train_and_evaluate`` (a fresh copy; the preset is never mutated)."""
        return {"model": self.model, "epochs": self.epochs, "imgsz": self.imgsz, "batch": self.batch,
                "threads": self.threads,
                "extra_args": {k: v for k, v in self.train_args.items() if v is not None}}


def preset_names(path: Path = PRESETS_PATH) -> list[str]:
    return list(read_yaml(path))


def load_preset(name: str, path: Path = PRESETS_PATH) -> DetectionPreset:
    """The preset ``name`` (``paper``, ``standard``, ``quick`` or ``tiny``) from ``presets.yaml``, type-checked by
    ``data.config`` (the one configuration mechanism).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        data.config.ConfigError: a key of the wrong type, or an unknown key (the known ones listed).
    """
    presets = read_yaml(path)
    if name not in presets:
        raise KeyError(f"unknown detection preset '{name}'; known: {', '.join(presets)}")
    return from_dict(DetectionPreset, {"name": name, **presets[name]}, f"{path.name}:{name}")
