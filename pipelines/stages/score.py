"""Stage ``score``: the fusion metrics (reference-evaluator conventions) and the temporal metrics of a candidate's
fused evaluation images, one record.

Temporal consistency is measured over runs of consecutive frames: the evaluation ids are grouped by scene (ids of
no known scene form one group) and cut into runs of consecutive ids; runs of one frame are not scored.

Each image is read once. The fuse stage scores the images it fuses while they are in memory (``EvalScorer``, fed
by ``pipelines.stages.fuse.fuse_and_score``) and hands what it scored on (``FuseOutput.scored``); this stage reads
only what is left: everything when the fused folder was reused, nothing when it was fused in this run. Either way
an image's numbers are those of reading its files (``fusion.metrics.image.evaluate_files``, ``fusion.video.temporal.
evaluate_sequences``), bit for bit: the same arrays go into the same functions in the same order.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data.io import gray_reference_of, read_gray_reference
from data.provenance import content_key
from data.store import KeyedStore
from fusion.fusers.base import output_path

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.config import PipelineConfig

    from .fuse import FuseOutput

LOGGER = logging.getLogger(__name__)


@dataclass
class Scores:
    """The score stage's record."""

    metrics: dict[str, float]                        # mean fusion metric over the evaluation split
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    temporal: dict[str, Any] = field(default_factory=dict)  # {"mean": {...}, "n_runs", "n_frames"}


@dataclass(frozen=True)
class ScorePlan:
    """What the score stage scores: the evaluation ids (sorted), each one's sources by modality (the dataset's
    order, the order of the per-source terms), the runs of 2 or more consecutive frames the temporal metrics score
    (in the order they are averaged) and the two sources the fused video is compared with, (other, colour)."""

    ids: tuple[str, ...]
    sources: Mapping[str, Mapping[str, Path]]
    runs: tuple[tuple[str, ...], ...]
    temporal_sources: tuple[str, str]

    def only(self, stems: Iterable[str]) -> ScorePlan:
        """The part of the plan that ``stems`` alone can score: their ids and the runs wholly among them."""
        stems = set(stems)
        return ScorePlan(tuple(i for i in self.ids if i in stems),
                         {i: files for i, files in self.sources.items() if i in stems},
                         tuple(run for run in self.runs if stems.issuperset(run)), self.temporal_sources)

    def left_by(self, done: PartialScores) -> ScorePlan:
        """The part ``done`` lacks: its images without metrics and its runs without temporal metrics."""
        return ScorePlan(tuple(i for i in self.ids if i not in done.per_image), self.sources,
                         tuple(run for run in self.runs if run[0] not in done.runs), self.temporal_sources)

    def reading_order(self) -> list[str]:
        """Every frame of the runs, run by run and in time order (the order the temporal statistics need), then
        the other images."""
        in_runs = [i for run in self.runs for i in run]
        return in_runs + [i for i in self.ids if i not in set(in_runs)]

    def scores(self, done: PartialScores) -> Scores:
        """The record, from every image's and every run's numbers in ``done``; the means are taken in the order
        ``fusion.metrics.image.evaluate_triples`` and ``fusion.video.temporal.evaluate_sequences`` take them."""
        from fusion.metrics.image import mean_metrics

        per_image = {i: done.per_image[i] for i in self.ids}
        per_run = [done.runs[run[0]] for run in self.runs]
        mean = {name: float(np.mean([values[name] for values in per_run])) for name in per_run[0]} if per_run else {}
        return Scores(metrics=mean_metrics(per_image), per_image=per_image,
                      temporal={"mean": mean, "n_runs": len(self.runs), "n_frames": sum(map(len, self.runs))})

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for a fusing task on another machine."""
        return {"ids": list(self.ids),
                "sources": {i: {m: str(p) for m, p in s.items()} for i, s in self.sources.items()},
                "runs": [list(run) for run in self.runs], "temporal_sources": list(self.temporal_sources)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScorePlan:
        return cls(tuple(data["ids"]), {i: {m: Path(p) for m, p in s.items()} for i, s in data["sources"].items()},
                   tuple(tuple(run) for run in data["runs"]), tuple(data["temporal_sources"]))


def score_plan(cfg: PipelineConfig, dataset) -> ScorePlan:
    """The plan of the run's evaluation split."""
    from fusion.video.temporal import consecutive_runs

    ids = sorted(dataset.splits[cfg.eval_split])
    by_scene: dict[str | None, list[str]] = {}
    for i in ids:
        by_scene.setdefault(dataset.scene_of(i), []).append(i)
    # The temporal metrics compare the fused video with two sources: the colour camera and the first other one.
    colour = dataset.colour or dataset.modalities[-1]
    other = next(m for m in dataset.modalities if m != colour)
    runs = tuple(tuple(run) for scene_ids in by_scene.values() for run in consecutive_runs(scene_ids) if len(run) >= 2)
    return ScorePlan(tuple(ids), {i: dict(dataset.sources(i)) for i in ids}, runs, (other, colour))


def score_key(fuse_key: str, plan: ScorePlan) -> str:
    """The score record's key: the fused images' key and the evaluation ids."""
    return content_key("score", fuse_key, list(plan.ids))


@dataclass
class PartialScores:
    """What has been scored so far: metrics by image id, temporal metrics by run (its first id)."""

    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    runs: dict[str, dict[str, float]] = field(default_factory=dict)

    def update(self, other: PartialScores) -> PartialScores:
        self.per_image.update(other.per_image)
        self.runs.update(other.runs)
        return self


class EvalScorer:
    """Scores evaluation images as they come, reading each file once.

    ``add(stem, fused)`` takes the fused image in memory (scored as ``data.io.read_gray_reference`` reads it back:
    ``data.io.gray_reference_of``) or its file; its sources are read through ``data.io``, so inside
    ``data.io.decoding_once`` the fuser's own decodes are reused. The metrics of an image run on ``workers``
    threads (at most two per thread waiting); a run's temporal statistics are gathered here, frame by frame, when
    its frames come in time order (a run whose frames do not is left unscored). ``strict=False`` (while fusing,
    where scoring only saves decodes): whatever fails is left unscored, for the score stage to read from the files
    and fail on there, as it would have without this; ``strict=True``: it raises.
    """

    def __init__(self, plan: ScorePlan, *, workers: int = 1, strict: bool = True):
        self.plan, self.strict = plan, strict
        self._metric_ids = set(plan.ids)
        self._run_of = {stem: (run, k) for run in plan.runs for k, stem in enumerate(run)}
        self._stats: dict[str, Any] = {}       # open runs' TemporalStats, by first id
        self._fed: dict[str, int] = {}         # frames of each open or broken run added so far (-1: broken)
        self._waiting: deque[tuple[str, Future]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        self._workers = workers
        self.done = PartialScores()

    def __enter__(self) -> EvalScorer:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        elif self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def wants(self, stem: str) -> bool:
        return stem in self._metric_ids or stem in self._run_of

    def add(self, stem: str, fused: np.ndarray | str | Path) -> None:
        if not self.wants(stem):
            return
        try:
            fused_grey = (read_gray_reference(fused) if isinstance(fused, (str, Path)) else gray_reference_of(fused))
            sources = {m: read_gray_reference(p) for m, p in self.plan.sources[stem].items()}
        except Exception:  # noqa: BLE001 - lenient: the score stage reads it again and reports it
            if self.strict:
                raise
            self._break_run(stem)
            return
        if stem in self._metric_ids:
            self._score_image(stem, fused_grey, sources)
        if stem in self._run_of:
            self._add_frame(stem, fused_grey, sources)

    def _score_image(self, stem: str, fused: np.ndarray, sources: dict[str, np.ndarray]) -> None:
        if self._pool is None:
            self._keep(stem, lambda: _metrics(fused, sources))
            return
        while len(self._waiting) >= 2 * self._workers:
            self._collect_oldest()
        self._waiting.append((stem, self._pool.submit(_metrics, fused, sources)))

    def _collect_oldest(self) -> None:
        stem, future = self._waiting.popleft()
        self._keep(stem, future.result)

    def _keep(self, stem: str, metrics: Callable[[], dict[str, float]]) -> None:
        try:
            self.done.per_image[stem] = metrics()
        except Exception:  # noqa: BLE001 - lenient: the score stage scores it again and reports it
            if self.strict:
                raise

    def _add_frame(self, stem: str, fused: np.ndarray, sources: dict[str, np.ndarray]) -> None:
        from fusion.video.temporal import TemporalStats

        run, k = self._run_of[stem]
        first, (other, colour) = run[0], self.plan.temporal_sources
        if self._fed.get(first, 0) != k:  # out of order (or broken): the score stage reads this run
            if self.strict:
                raise ValueError(f"frame {stem} of the run from {first} came out of time order")
            self._break_run(stem)
            return
        try:
            self._stats.setdefault(first, TemporalStats()).add(fused, sources[other], sources[colour])
        except Exception:  # noqa: BLE001 - lenient: the score stage reads this run and reports it
            if self.strict:
                raise
            self._break_run(stem)
            return
        self._fed[first] = k + 1
        if k + 1 == len(run):
            self.done.runs[first] = self._stats.pop(first).values()

    def _break_run(self, stem: str) -> None:
        if stem in self._run_of:
            first = self._run_of[stem][0][0]
            self._stats.pop(first, None)
            self._fed[first] = -1

    def close(self) -> PartialScores:
        """Wait for the metrics still running; returns everything scored."""
        try:
            while self._waiting:
                self._collect_oldest()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._stats.clear()
        return self.done


def _metrics(fused: np.ndarray, sources: dict[str, np.ndarray]) -> dict[str, float]:
    """``fusion.metrics.image.evaluate_files`` on images already read as it reads them."""
    from fusion.metrics.image import FusionSet, score

    return score(FusionSet.of(fused, sources))


def metric_workers() -> int:
    return min(2, os.cpu_count() or 1)


def stage_score(cfg: PipelineConfig, candidate: Candidate, dataset, fused: FuseOutput, store: KeyedStore) -> Scores:
    """The candidate's fusion and temporal metrics; what the fuse stage scored in this run (``fused.scored``) is
    taken as it is, the rest read from the fused folder."""
    plan = score_plan(cfg, dataset)
    stored = store.cached(candidate.name, "score", score_key(fused.key, plan),
                          lambda: asdict(score_fused(plan, Path(fused.dir), fused.scored)))
    return Scores(**stored)


def score_fused(plan: ScorePlan, fused_dir: Path, done: PartialScores | None = None) -> Scores:
    """Score the plan's images in ``fused_dir``: those ``done`` lacks are read (each file once) and scored."""
    done = PartialScores().update(done) if done is not None else PartialScores()
    left = plan.left_by(done)
    if left.ids or left.runs:
        LOGGER.info("scoring %d image(s) and %d run(s) from %s", len(left.ids), len(left.runs), fused_dir)
        with EvalScorer(left, workers=metric_workers()) as scorer:
            for stem in left.reading_order():
                scorer.add(stem, output_path(fused_dir, stem))
        done.update(scorer.done)
    return plan.scores(done)
