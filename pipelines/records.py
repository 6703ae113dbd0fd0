"""The pipeline's records: what one stage hands the next, stored once and read back through the same classes.

One detector seed of a candidate is a :class:`DetectorRun` (``detection.train.DetectionResult`` plus what the
pipeline adds: the ground truth its predictions are matched against and mAP@50 per scenario) or, for late fusion, a
:class:`LateRun` (the single-modality detectors' boxes merged; nothing trained). A candidate's row in results.json is
a :class:`CandidateResult`, its mean ± std over seeds a :class:`DetectionSummary`; the bootstrap section is a
:class:`Bootstrap`, the robustness section a :class:`Robustness`. The whole document is a :class:`RunResults`: what
ran (:class:`RunConfig`, the package versions, :class:`DatasetInfo`), the rows and the sections.

``to_dict`` writes the JSON that the keyed store and results.json hold, keys in the order of the results files the
tests and earlier runs have; ``from_dict`` reads it back. A field that older records lack reads back as its default,
so a run resumes from an existing store and the report reads an older results.json. An optional part (``reference``,
``top_two``, ``errors``, ...) is left out of the JSON when it is absent, and an absent top-level section (bootstrap,
robustness, sudden change) is ``{}``, as the results files always had them.
"""
from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from data import config as config_data
from detection.bootstrap import Interval
from detection.train import DetectionResult

from .candidates import CandidateSpec
from .config import PipelineConfig, PipelinePreset

T = TypeVar("T")


def _optional(read: Callable[[Any], T], data: Any) -> T | None:
    """``read(data)``, or None where the record holds null."""
    return None if data is None else read(data)


def _each(read: Callable[[Any], T], data: Mapping[str, Any] | None) -> dict[str, T | None]:
    """A name-keyed mapping of records read one by one (null entries stay None: e.g. a class the split lacks)."""
    return {name: _optional(read, value) for name, value in (data or {}).items()}


def _section(read: Callable[[Any], T], data: Mapping[str, Any] | None) -> T | None:
    """A top-level section of results.json read back, or None where the run left it out (``{}``, or absent)."""
    return read(data) if data else None


def _section_dict(section: Bootstrap | Robustness | SuddenChange | None) -> dict[str, Any]:
    """A top-level section's JSON: ``{}`` for one the run did not compute."""
    return {} if section is None else section.to_dict()


def _without_none(data: dict[str, Any], *optional: str) -> dict[str, Any]:
    """``data`` without the optional keys whose value is None (they are absent from the JSON, not null)."""
    return {k: v for k, v in data.items() if not (k in optional and v is None)}


def interval_from_dict(data: Mapping[str, Any]) -> Interval:
    """An interval as ``Interval.to_dict`` wrote it; ``provisional`` is derived from ``n_seeds`` and other keys
    beside it (the names of ``top_two``) belong to the record that holds it."""
    return Interval(**{f.name: data[f.name] for f in fields(Interval) if f.name in data})


# ---- one detector seed -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeanStd:
    """Mean and population std of one number over detector seeds; ``n`` seeds counted."""

    mean: float
    std: float
    n: int = 1  # records written before seeds were counted held one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeanStd:
        return cls(**data)


@dataclass(frozen=True)
class ScenarioScore:
    """One detector seed's mAP@50 on the evaluation images of one scenario (night, daytime, ...)."""

    map50: float | None
    map50_deployed: float | None = None  # None in records written before the deployed protocol
    n_images: int = field(kw_only=True)
    n_boxes: int = field(kw_only=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioScore:
        return cls(**data)


@dataclass
class DetectorRun(DetectionResult):
    """One trained detector seed: its :class:`DetectionResult` (fields and JSON reused as they are) plus the COCO
    ground truth its saved predictions are matched against (the bootstrap re-matches them) and mAP@50 per
    scenario. The JSON is ``DetectionResult.to_dict()`` with ``coco_gt`` and ``scenarios`` after it."""

    coco_gt: str | None = None
    scenarios: dict[str, ScenarioScore] = field(default_factory=dict)

    @classmethod
    def of(cls, result: DetectionResult, *, coco_gt: str, scenarios: dict[str, ScenarioScore]) -> DetectorRun:
        """``result`` with what the pipeline adds to it."""
        return cls(**{f.name: getattr(result, f.name) for f in fields(DetectionResult)}, coco_gt=coco_gt,
                   scenarios=scenarios)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorRun:
        scenarios = {s: ScenarioScore.from_dict(v) for s, v in (data.get("scenarios") or {}).items()}
        return super().from_dict({**data, "scenarios": scenarios})


@dataclass
class LateRun:
    """One seed of late fusion: the single-modality detectors of that seed, their saved predictions merged per
    image and class and scored under both protocols. Nothing is trained, so there is no precision/recall operating
    point and no COCO score of Ultralytics' own: those read as None, as for a missing number."""

    seed: int
    map50: float | None
    map50_95: float | None
    ap50: dict[str, float | None]
    map50_deployed: float | None
    map50_95_deployed: float | None
    ap50_deployed: dict[str, float | None] | None
    predictions_path: str
    deployed_predictions_path: str
    coco_gt: str
    eval_split: str
    n_images: int | None
    n_boxes: dict[str, int] | None
    run_dir: str
    key: str
    merged: dict[str, str]          # modality -> the run_dir of the detector merged in
    method: str                     # detection.late_fusion's merge ("wbf", "nms")
    scenarios: dict[str, ScenarioScore] = field(default_factory=dict)

    precision: ClassVar[float | None] = None
    recall: ClassVar[float | None] = None
    coco_map50: ClassVar[float | None] = None
    coco_map50_95: ClassVar[float | None] = None
    resumed: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LateRun:
        scenarios = {s: ScenarioScore.from_dict(v) for s, v in (data.get("scenarios") or {}).items()}
        return cls(**{**data, "scenarios": scenarios})


SeedRun = Union[DetectorRun, LateRun]


def seed_run_from_dict(data: Mapping[str, Any], kind: str) -> SeedRun:
    """A stored seed of a candidate of ``kind``: late fusion's merged scores, else a trained detector's."""
    return LateRun.from_dict(data) if kind == "late" else DetectorRun.from_dict(data)


# ---- a candidate's row -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScenarioSummary:
    """mAP@50 on one scenario's images, mean ± std over seeds."""

    map50: MeanStd | None
    map50_deployed: MeanStd | None
    n_images: int
    n_boxes: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioSummary:
        return cls(map50=_optional(MeanStd.from_dict, data["map50"]),
                   map50_deployed=_optional(MeanStd.from_dict, data.get("map50_deployed")),
                   n_images=data["n_images"], n_boxes=data["n_boxes"])


@dataclass(frozen=True)
class DetectionSummary:
    """A candidate's detector numbers, mean ± std over its seeds (None: no seed has the number). ``ap50`` maps every
    class of the dataset, in its order, to its AP@50 (None for a class the evaluation split lacks)."""

    seeds: list[int] = field(default_factory=list)
    map50: MeanStd | None = None
    map50_95: MeanStd | None = None
    precision: MeanStd | None = None
    recall: MeanStd | None = None
    coco_map50: MeanStd | None = None
    coco_map50_95: MeanStd | None = None
    map50_deployed: MeanStd | None = None
    map50_95_deployed: MeanStd | None = None
    ap50: dict[str, MeanStd | None] = field(default_factory=dict)
    ap50_deployed: dict[str, MeanStd | None] = field(default_factory=dict)
    scenarios: dict[str, ScenarioSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectionSummary:
        stats = {f.name: _optional(MeanStd.from_dict, data.get(f.name)) for f in fields(cls)
                 if f.name not in ("seeds", "ap50", "ap50_deployed", "scenarios")}
        return cls(seeds=list(data.get("seeds") or []), ap50=_each(MeanStd.from_dict, data.get("ap50")),
                   ap50_deployed=_each(MeanStd.from_dict, data.get("ap50_deployed")),
                   scenarios={s: ScenarioSummary.from_dict(v) for s, v in (data.get("scenarios") or {}).items()},
                   **stats)


@dataclass
class CandidateResult:
    """One row of the results: what the candidate is, its fusion and temporal metrics, its detector seeds and their
    summary, and (set by ``pipelines.report.add_gains``) its gain over the better single modality.

    ``fusion`` maps each fusion metric to its mean over the evaluation split, ``temporal`` is the score stage's
    ``{"mean": {metric: value}, "n_runs", "n_frames"}``; both None for a row without fused images or a failed one.
    """

    name: str
    kind: str
    baseline: str | None = None
    single_modality: str | None = None      # the one modality a single-modality row shows
    fused_image: bool = True                # False for early and late fusion
    checkpoint: str | None = None
    error: str | None = None
    origin: str | None = None
    spec: CandidateSpec | None = None
    fusion: dict[str, float | None] | None = None
    temporal: dict[str, Any] | None = None
    fuse_seconds_per_image: float | None = None
    fused_dir: str | None = None
    detection: DetectionSummary | None = None  # None when the candidate failed or has no detector seed
    detection_runs: list[SeedRun] = field(default_factory=list)
    gain_map50: float | None = None

    @property
    def is_single(self) -> bool:
        """Whether the row is one modality alone (the references every gain is measured against)."""
        return self.single_modality is not None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(spec=self.spec.to_dict() if self.spec else None,
                   detection=self.detection.to_dict() if self.detection else None,
                   detection_runs=[run.to_dict() for run in self.detection_runs])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateResult:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if "single_modality" not in data:  # results written before the key: the two built-in passthroughs
            values["single_modality"] = data.get("baseline") if data.get("baseline") in ("ir", "vis") else None
        values.update(spec=_optional(CandidateSpec.from_dict, data.get("spec")),
                      detection=_optional(DetectionSummary.from_dict, data.get("detection")),
                      detection_runs=[seed_run_from_dict(run, data["kind"])
                                      for run in data.get("detection_runs") or []])
        return cls(**values)


# ---- bootstrap intervals -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopTwo:
    """The gain of the best candidate over the runner-up."""

    first: str
    second: str
    gain: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, **self.gain.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopTwo:
        return cls(data["first"], data["second"], interval_from_dict(data))


@dataclass(frozen=True)
class ImageVsDetector:
    """The gain of the best image fusion over the better detector-side fusion (early or late)."""

    image: str
    detector: str
    gain: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "detector": self.detector, **self.gain.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageVsDetector:
        return cls(data["image"], data["detector"], interval_from_dict(data))


@dataclass
class ProtocolIntervals:
    """One protocol's bootstrap (``pipelines.significance``): each candidate's mAP@50 interval and per-seed values,
    the better single modality (``reference``) and every other candidate's gain over it, and two comparisons."""

    map50: dict[str, Interval] = field(default_factory=dict)
    gains: dict[str, Interval] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)              # the order of per_seed's values
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    reference: str | None = None
    image_vs_detector_fusion: ImageVsDetector | None = None
    top_two: TopTwo | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none({
            "map50": {n: iv.to_dict() for n, iv in self.map50.items()},
            "gains": {n: iv.to_dict() for n, iv in self.gains.items()}, "seeds": list(self.seeds),
            "per_seed": dict(self.per_seed), "reference": self.reference,
            "image_vs_detector_fusion": _optional(ImageVsDetector.to_dict, self.image_vs_detector_fusion),
            "top_two": _optional(TopTwo.to_dict, self.top_two)},
            "reference", "image_vs_detector_fusion", "top_two")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProtocolIntervals:
        return cls(map50=_each(interval_from_dict, data.get("map50")), gains=_each(interval_from_dict, data.get("gains")),
                   seeds=list(data.get("seeds") or []), per_seed=dict(data.get("per_seed") or {}),
                   reference=data.get("reference"),
                   image_vs_detector_fusion=_optional(ImageVsDetector.from_dict, data.get("image_vs_detector_fusion")),
                   top_two=_optional(TopTwo.from_dict, data.get("top_two")))


@dataclass
class Bootstrap:
    """The bootstrap section: per protocol its intervals, how they were drawn (``method``: images, resamples, seed)
    and the seconds it took."""

    protocols: dict[str, ProtocolIntervals] = field(default_factory=dict)
    method: dict[str, Any] | None = None   # None when no candidate had detector results
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"protocols": {p: s.to_dict() for p, s in self.protocols.items()},
                              "method": self.method, "seconds": self.seconds}, "method", "seconds")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bootstrap:
        return cls(protocols={p: ProtocolIntervals.from_dict(s) for p, s in (data.get("protocols") or {}).items()},
                   method=data.get("method"), seconds=data.get("seconds"))


# ---- robustness --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProtocolScore:
    """A kept detector scored under one protocol without training (``detection.train.score_detector``)."""

    map50: float
    map50_95: float
    ap50: dict[str, float | None]
    predictions_path: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProtocolScore:
        return cls(**data)


@dataclass(frozen=True)
class CorruptedRun:
    """One detector seed's kept checkpoint scored on one corruption and severity, under every protocol; the JSON
    is ``score_detector``'s ``{protocol: scores}`` with ``coco_gt`` beside the protocols."""

    scores: dict[str, ProtocolScore]
    coco_gt: str

    def to_dict(self) -> dict[str, Any]:
        return {**{p: asdict(s) for p, s in self.scores.items()}, "coco_gt": self.coco_gt}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorruptedRun:
        return cls({p: ProtocolScore.from_dict(s) for p, s in data.items() if p != "coco_gt"}, data["coco_gt"])


@dataclass(frozen=True)
class CellScore:
    """A candidate on one corruption and severity: mAP@50 mean ± std over its seeds."""

    map50_deployed: MeanStd | None
    map50: MeanStd | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellScore:
        return cls(_optional(MeanStd.from_dict, data["map50_deployed"]), _optional(MeanStd.from_dict, data["map50"]))


@dataclass(frozen=True)
class RobustIntervals:
    """One cell's paired bootstrap: each candidate's deployed mAP@50, its drop from clean, and (with a single
    modality among the candidates) its gain over the better single modality under the corruption."""

    map50: dict[str, Interval] = field(default_factory=dict)
    drop: dict[str, Interval] = field(default_factory=dict)
    reference: str | None = None
    gains: dict[str, Interval] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"map50": {n: iv.to_dict() for n, iv in self.map50.items()},
                              "drop": {n: iv.to_dict() for n, iv in self.drop.items()}, "reference": self.reference,
                              "gains": None if self.gains is None else {n: iv.to_dict() for n, iv in self.gains.items()}},
                             "reference", "gains")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RobustIntervals:
        return cls(_each(interval_from_dict, data.get("map50")), _each(interval_from_dict, data.get("drop")),
                   data.get("reference"), _optional(lambda g: _each(interval_from_dict, g), data.get("gains")))


@dataclass(frozen=True)
class RobustnessCell:
    """Every scored candidate on one corruption and severity, with the cell's intervals (None: ``--bootstrap 0``)."""

    candidates: dict[str, CellScore]
    intervals: RobustIntervals | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"candidates": {n: asdict(c) for n, c in self.candidates.items()},
                              "intervals": _optional(RobustIntervals.to_dict, self.intervals)}, "intervals")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RobustnessCell:
        return cls({n: CellScore.from_dict(c) for n, c in data["candidates"].items()},
                   _optional(RobustIntervals.from_dict, data.get("intervals")))


@dataclass
class Robustness:
    """The robustness section: cells keyed ``corruption/severity``, the candidates left out and why, the
    single-modality rows, and the failures by ``corruption/severity/candidate`` (absent when none)."""

    corruptions: list[str]
    severities: list[int]
    seed: int
    cells: dict[str, RobustnessCell] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    singles: list[str] = field(default_factory=lambda: ["ir", "vis"])  # records before the key: the two passthroughs
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"corruptions": list(self.corruptions), "severities": list(self.severities), "seed": self.seed,
               "cells": {c: cell.to_dict() for c, cell in self.cells.items()}, "skipped": dict(self.skipped),
               "singles": list(self.singles)}
        if self.errors:
            out["errors"] = dict(self.errors)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Robustness:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["cells"] = {c: RobustnessCell.from_dict(cell) for c, cell in (data.get("cells") or {}).items()}
        return cls(**values)


# ---- the results document ----------------------------------------------------------------------------------------

@functools.cache
def _option_types() -> dict[str, Any]:
    """Every ``PipelineConfig`` option's type, by name (its annotations evaluated once)."""
    return typing.get_type_hints(PipelineConfig)


def _option_read_back(value: Any, hint: Any) -> Any:
    """One option as ``PipelineConfig.to_dict`` wrote it, back as its field's type: paths were written as strings."""
    if value is None:
        return None
    if typing.get_origin(hint) is list and typing.get_args(hint) == (Path,):
        return [Path(v) for v in value]
    return Path(value) if Path in (hint, *typing.get_args(hint)) else value


@dataclass
class RunConfig(PipelineConfig):
    """results.json's ``config``: the run's :class:`PipelineConfig` (every option; the JSON holds its paths as
    strings) with its seeds resolved (the preset's when none were given, a repeat dropped), then the detector recipe every candidate trained
    with (``stages.detect.detection_settings``: Ultralytics' model, epochs, imgsz, batch, extra_args, ...) and the
    preset's values."""

    detection: dict[str, Any] = field(default_factory=dict)
    preset_values: PipelinePreset | None = None

    @classmethod
    def of(cls, cfg: PipelineConfig, *, seeds: list[int], detection: dict[str, Any],
           preset: PipelinePreset) -> RunConfig:
        options = {f.name: getattr(cfg, f.name) for f in fields(PipelineConfig)}
        return cls(**{**options, "seeds": list(seeds)}, detection=detection, preset_values=preset)

    @property
    def keeps_best_epoch(self) -> bool:
        """Whether the detectors kept their best epoch on ``select_split``: not when the recipe validates only at
        the end (Ultralytics' ``val: false``), where the last epoch is kept."""
        return (self.detection.get("extra_args") or {}).get("val", True) is not False

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "preset_values": _optional(config_data.to_dict, self.preset_values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """An option written before it existed reads as its default, except two whose old behaviour was not the
        default's: the epoch was selected on the scored split before ``select_split`` and the ranking followed the
        field protocol before ``protocol``. An option no longer known is left out."""
        types = _option_types()
        options = {name: _option_read_back(data[name], hint) for name, hint in types.items() if name in data}
        if "select_split" not in data and "eval_split" in data:
            options["select_split"] = data["eval_split"]
        options.setdefault("protocol", "field")
        preset = data.get("preset_values")
        if preset is not None:
            known = {f.name for f in fields(PipelinePreset)}
            preset = config_data.from_dict(PipelinePreset, {k: v for k, v in preset.items() if k in known},
                                           "results.json config.preset_values")
        return cls(**options, detection=dict(data.get("detection") or {}), preset_values=preset)


@dataclass(frozen=True)
class SplitInfo:
    """How the dataset was split (the reader's lists or the scene-aware split, its seed), where the split was
    written, and the images in each split."""

    method: str | None = None
    file: str | None = None
    seed: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def size(self, split: str) -> int:
        """The images in ``split`` (0 for a split the dataset does not have)."""
        return self.counts.get(split, 0)


@dataclass(frozen=True)
class DatasetInfo:
    """results.json's ``data``: the dataset the run read (its root, reader, modalities and the colour one, whether
    it is the built-in synthetic scenes), its images and classes, and its split."""

    root: str
    reader: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["ir", "vis"])  # records before the key: the two cameras
    colour: str | None = "vis"
    synthetic: bool = False
    n_images: int = field(kw_only=True)
    class_names: list[str] = field(default_factory=list)
    split: SplitInfo = field(kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**{**values, "split": SplitInfo(**data["split"])})


@dataclass(frozen=True)
class ScenarioSize:
    """The evaluation split's images and boxes in one scenario."""

    n_images: int
    n_boxes: int


@dataclass(frozen=True)
class SpearmanRow:
    """Spearman's rank correlation of one fusion metric with mAP@50 across ``n`` candidates (``rho`` and ``p``
    None when a column is constant: it has no rank order)."""

    metric: str
    rho: float | None
    p: float | None
    n: int


@dataclass(frozen=True)
class SuddenChange:
    """The sudden-change section (``--sudden-change``, ``fusion.video.sudden_change``): the corruption, where its plot,
    table and JSON were written and each fuser's summary; or only why nothing was measured (``skipped``)."""

    corruption: str | None = None
    plot: str | None = None
    table: str | None = None
    json: str | None = None
    summaries: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return {"corruption": self.corruption, "plot": self.plot, "table": self.table, "json": self.json,
                "summaries": list(self.summaries)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuddenChange:
        return cls(**data)


@dataclass
class RunResults:
    """The results document, results.json: what ran (the config, package versions, the dataset and its split), the
    candidates' rows ranked, the better single modality's mAP@50, the bootstrap, Spearman, the scenarios' sizes, the
    wall time and command line, then the robustness and sudden-change sections. A section the run did not compute
    is None here and ``{}`` in the JSON."""

    config: RunConfig
    data: DatasetInfo
    candidates: list[CandidateResult]
    versions: dict[str, str] = field(default_factory=dict)
    best_single_map50: float | None = None
    bootstrap: Bootstrap | None = None
    spearman: list[SpearmanRow] = field(default_factory=list)
    scenarios: dict[str, ScenarioSize] = field(default_factory=dict)
    wall_time_s: float | None = None
    command: str = ""
    robustness: Robustness | None = None
    sudden_change: SuddenChange | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "versions": dict(self.versions), "data": self.data.to_dict(),
                "candidates": [r.to_dict() for r in self.candidates], "best_single_map50": self.best_single_map50,
                "bootstrap": _section_dict(self.bootstrap),
                "spearman": [asdict(row) for row in self.spearman],
                "scenarios": {s: asdict(size) for s, size in self.scenarios.items()},
                "wall_time_s": self.wall_time_s, "command": self.command,
                "robustness": _section_dict(self.robustness), "sudden_change": _section_dict(self.sudden_change)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResults:
        return cls(config=RunConfig.from_dict(data["config"]), data=DatasetInfo.from_dict(data["data"]),
                   candidates=[CandidateResult.from_dict(r) for r in data["candidates"]],
                   versions=dict(data.get("versions") or {}), best_single_map50=data.get("best_single_map50"),
                   bootstrap=_section(Bootstrap.from_dict, data.get("bootstrap")),
                   spearman=[SpearmanRow(**row) for row in data.get("spearman") or []],
                   scenarios={s: ScenarioSize(**size) for s, size in (data.get("scenarios") or {}).items()},
                   wall_time_s=data.get("wall_time_s"), command=data.get("command", ""),
                   robustness=_section(Robustness.from_dict, data.get("robustness")),
                   sudden_change=_section(SuddenChange.from_dict, data.get("sudden_change")))
