"""How a detector's predictions are turned into boxes before scoring: the field's protocol and the deployed one.

* ``field``: Ultralytics' validator as it is (like YOLOv5's ``val.py``, behind the published M3FD tables): NMS with
  ``multi_label=True``, so one box may carry several class labels, each scored. Comparable with papers.
* ``deployed``: one class per box, what ``YOLO.predict`` returns and a car acts on: each box keeps its best class,
  then NMS per class. Everything else (letterboxing, rect batches, confidence threshold 0.001, IoU 0.7, 300 boxes
  per image) is the validator's, so the two protocols differ in that one step only.

Both are scored with pycocotools against the same ground truth (``detection.coco_eval``); the bootstrap
(``detection.bootstrap``) resamples either protocol's saved predictions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.registry import Registry


@dataclass(frozen=True)
class Protocol:
    """One way of scoring: its name, whether NMS keeps several labels per box, and what the report calls it."""

    name: str
    multi_label: bool
    label: str


PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.register("field")(Protocol("field", True, "mAP@50 (field: multi-label NMS, as papers report)"))
PROTOCOLS.register("deployed")(Protocol("deployed", False, "mAP@50 deployed (one class per box)"))
DEFAULT_PROTOCOL = "deployed"


def validator_class(protocol: Protocol) -> Any:
    """The Ultralytics validator class that scores under ``protocol`` (imported here: Ultralytics is heavy)."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import nms

    if protocol.multi_label:
        return DetectionValidator

    class OneClassPerBoxValidator(DetectionValidator):
        """The validator with the deployed NMS: each box's best class only (``multi_label=False``)."""

        def postprocess(self, preds: Any) -> list[dict[str, Any]]:
            outputs = nms.non_max_suppression(
                preds, self.args.conf, self.args.iou, nc=0 if self.args.task == "detect" else self.nc,
                multi_label=False, agnostic=self.args.single_cls or self.args.agnostic_nms,
                max_det=self.args.max_det, end2end=self.end2end, rotated=self.args.task == "obb",
            )
            return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in outputs]

    return OneClassPerBoxValidator
