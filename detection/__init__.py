"""Detection stage: export fused images as a YOLO dataset, train an Ultralytics detector offline, score it.

Besides image fusion, the two alternatives a team weighs first: early fusion (``export_stacked``: the detector
reads the modalities as one N-channel image) and late fusion (``merge_predictions``/``score_late_fusion``: the
single-modality detectors' boxes merged per image).

Importing this package does not import Ultralytics; ``detection.ultralytics_env.setup_offline`` does, once it
has made the process safe (no network, nothing written outside the run folder).
"""
from __future__ import annotations

from typing import Any

from detection.coco_eval import CocoScores, coco_map
from detection.export import (YoloDataset, coco_image_id, export_stacked, export_yolo_dataset, voc_to_coco,
                              voc_to_yolo)
from detection.late_fusion import merge_predictions, score_late_fusion
from detection.presets import DetectionPreset, load_preset, preset_names

# Loaded on first use, so that `python -m detection.train` does not find its module already imported.
_FROM_TRAIN = ("DetectionResult", "TensorBoardMirror", "train_and_evaluate")

__all__ = [
    "CocoScores", "DetectionPreset", "DetectionResult", "TensorBoardMirror", "YoloDataset", "coco_image_id",
    "coco_map", "export_stacked", "export_yolo_dataset", "load_preset", "merge_predictions", "preset_names",
    "score_late_fusion", "train_and_evaluate", "voc_to_coco", "voc_to_yolo",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_TRAIN:
        from detection import train

        return getattr(train, name)
    raise AttributeError(f"module 'detection' has no attribute '{name}'")
