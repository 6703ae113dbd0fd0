"""Stage ``score``: the fusion metrics (reference-evaluator conventions) and the temporal metrics of a candidate's
fused evaluation images, one record.

Temporal consistency is measured over runs of consecutive frames: the evaluation ids are grouped by scene (ids of
no known scene form one group) and cut into runs of consecutive ids; runs of one frame are not scored.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.provenance import content_key
from data.store import KeyedStore

from .fuse import FuseOutput

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.config import PipelineConfig


@dataclass
class Scores:
    """The score stage's record."""

    metrics: dict[str, float]                        # mean fusion metric over the evaluation split
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    temporal: dict[str, Any] = field(default_factory=dict)  # {"mean": {...}, "n_runs", "n_frames"}


def stage_score(cfg: PipelineConfig, candidate: Candidate, dataset, fused: FuseOutput, store: KeyedStore) -> Scores:
    ids = sorted(dataset.splits[cfg.eval_split])
    key = content_key("score", fused.key, ids)
    stored = store.cached(candidate.name, "score", key, lambda: asdict(_score(dataset, Path(fused.dir), ids)))
    return Scores(**stored)


def _score(dataset, fused_dir: Path, ids: list[str]) -> Scores:
    from fusion.metrics.image import FileSet, evaluate_triples
    from fusion.video.temporal import consecutive_runs, evaluate_sequences

    sources = {i: dataset.sources(i) for i in ids}
    triples = [FileSet(i, fused_dir / f"{i}.png", sources[i]) for i in ids]
    per_image, mean = evaluate_triples(triples, workers=min(2, os.cpu_count() or 1))
    by_scene: dict[str | None, list[str]] = {}
    for i in ids:
        by_scene.setdefault(dataset.scene_of(i), []).append(i)
    # The temporal metrics compare the fused video with two sources: the colour camera and the first other one.
    colour = dataset.colour or dataset.modalities[-1]
    other = next(m for m in dataset.modalities if m != colour)
    runs = [[(fused_dir / f"{i}.png", sources[i][other], sources[i][colour]) for i in run]
            for scene_ids in by_scene.values() for run in consecutive_runs(scene_ids)]
    scored = [run for run in runs if len(run) >= 2]
    temporal = {"mean": evaluate_sequences(runs), "n_runs": len(scored), "n_frames": sum(map(len, scored))}
    return Scores(metrics=mean, per_image=per_image, temporal=temporal)
