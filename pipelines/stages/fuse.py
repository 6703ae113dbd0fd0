"""Stage ``fuse``: a candidate's fused images, one ``<id>.png`` per sample, in a content-keyed cache folder.

The key follows the fuser (``cache_key``), the dataset, the ids and every source file's size and mtime, so an
edited source or a changed fuser is fused again. Fusing thousands of images resumes image by image after a kill
(``KeyedStore.folder(..., resumable=True)``); a folder candidate's images are copied in as PNG so metrics and
detectors read every candidate the same way.

Each sample is read once: while its sources and its fused image are in memory, an evaluation image is scored for
the score stage (``fuse_and_score``, ``pipelines.stages.score.EvalScorer``), which then reads nothing again.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data.io import clear_dir
from data.provenance import content_key, files_fingerprint
from data.store import KeyedStore

from ..executors import Job, RunExecutor
from .score import EvalScorer, PartialScores, ScorePlan, metric_workers, score_key, score_plan

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.config import PipelineConfig

LOGGER = logging.getLogger(__name__)
# Images per fusing task on a cluster: a task then costs seconds to minutes (DAE-Fuse 0.3 s a 1024x768 image on
# 2 CPU cores, ~10 ms on a GPU), so the scheduler's ~1 ms per task and the fuser's load on the worker are small.
SHARD_IMAGES = 64


@dataclass
class FuseOutput:
    """The fuse stage's record: the folder of ``<id>.png`` images a candidate gives the metrics and the detector."""

    dir: str
    n_images: int
    seconds_per_image: float | None   # None: not fused here (a folder of another method's images)
    key: str = ""
    cached: bool = False              # this run's: reused from the cache
    scored: PartialScores | None = None  # this run's: the evaluation images scored while fusing them

    def stored(self) -> dict[str, Any]:
        """What the record keeps (the key is the record's own, ``cached`` and ``scored`` are this run's)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("key", "cached", "scored")}


def source_fingerprint(dataset, ids: list[str]) -> str:
    """Key of every source file of ``ids`` (path, size, mtime): an edited or replaced source image invalidates
    what was fused or trained from it."""
    return files_fingerprint(path for i in ids for path in dataset.sources(i).values())


def used_ids(cfg: PipelineConfig, dataset) -> list[str]:
    """The ids of the train, selection and evaluation splits: everything a candidate must fuse."""
    return sorted(set().union(*(dataset.splits[s] for s in (cfg.train_split, cfg.select_split, cfg.eval_split))))


def stage_fuse(cfg: PipelineConfig, candidate: Candidate, dataset, store: KeyedStore,
               executor: RunExecutor | None = None) -> FuseOutput:
    """Fuse every sample of the splits in use with the candidate's fuser (or reuse the finished folder), scoring
    the evaluation images as they are fused unless the score stage's record is there already."""
    fuser = candidate.source(cfg)
    ids = used_ids(cfg, dataset)
    key = content_key("fuse", fuser.cache_key(), str(dataset.root), ids, source_fingerprint(dataset, ids))
    wanted = set(ids)
    plan = score_plan(cfg, dataset)
    scoring = None if store.get(candidate.name, "score", score_key(key, plan)) is not None else plan
    return fuse_into_cache(cfg, candidate, [p for p in dataset.pairs() if p.stem in wanted], key, store, executor,
                           scoring=scoring)


def fuse_into_cache(cfg: PipelineConfig, candidate: Candidate, pairs, key: str, store: KeyedStore,
                    executor: RunExecutor | None = None, *, scoring: ScorePlan | None = None) -> FuseOutput:
    """Fuse ``pairs`` with the candidate's fuser into ``cache/fused/<key>``, or reuse that folder when finished.

    On a distributed executor the pairs not yet fused go out as tasks of ``SHARD_IMAGES`` each (``fuse_shard``),
    each building the fuser from its spec on its worker and writing into its own shard folder, whose images this
    process then moves into place; elsewhere they are fused here, where the fuser is loaded once. With
    ``scoring``, the plan's images fused now are scored while in memory (``FuseOutput.scored``).
    """
    fuser = candidate.source(cfg)
    sharded = executor is not None and executor.distributed and candidate.kind != "folder"
    scored = PartialScores()

    def build(folder: Path) -> dict[str, Any]:
        if sharded:
            per_image = fuse_in_shards(cfg, candidate, pairs, folder, executor, scoring, scored)
        else:
            scorer = EvalScorer(scoring, workers=metric_workers(), strict=False) if scoring is not None else None
            with scorer or contextlib.nullcontext():
                per_image = fuse_and_score(fuser, pairs, folder, scorer, progress=cfg.progress)
            if scorer is not None:
                scored.update(scorer.done)
        seconds = list(per_image.values())  # images fused now (a resumed folder kept the others)
        measured = bool(seconds) and candidate.kind != "folder"  # reading another method's images is no fusing time
        return FuseOutput(dir=str(fused_dir), n_images=len(pairs),
                          seconds_per_image=float(np.mean(seconds)) if measured else None).stored()

    fused_dir = cfg.out / "cache" / "fused" / key[:16]
    stored, cached = store.folder(fused_dir, key, build, resumable=True)
    if cached:
        LOGGER.info("%s: fused images reused from %s", candidate.name, fused_dir)
    return FuseOutput(**stored, key=key, cached=cached, scored=None if cached or scoring is None else scored)


def fuse_and_score(fuser, pairs: Sequence, out_dir: str | Path, scorer: EvalScorer | None = None, *,
                   progress: bool = True) -> dict[str, float]:
    """Fuse the ``pairs`` not yet in ``out_dir`` (``fusion.fusers.fuse.fuse_folder(..., skip_existing=True)``: its
    refusals, its claim on the folder for the fuser, its images and timings) and hand each image ``scorer`` wants
    to it while the image and its decoded sources are in memory (``fuse_folder``'s ``on_fused``): a sample is read
    once.

    Returns seconds per image fused now (scoring is not counted). Raises what ``fuse_folder`` raises.
    """
    from fusion.fusers.fuse import fuse_folder

    on_fused = None if scorer is None else (lambda pair, image: scorer.add(pair.stem, image))
    return fuse_folder(fuser, pairs, out_dir, progress=progress, skip_existing=True, on_fused=on_fused)["per_image"]


def fuse_in_shards(cfg: PipelineConfig, candidate: Candidate, pairs, folder: Path, executor: RunExecutor,
                   scoring: ScorePlan | None = None, scored: PartialScores | None = None) -> dict[str, float]:
    """Fuse the ``pairs`` not yet in ``folder`` as executor tasks; returns seconds per image fused now, and adds
    to ``scored`` what the tasks scored of ``scoring`` (each the images and whole runs of its shard). A task
    that fails fails the candidate (its finished shards stay in ``folder``, so the next run resumes them)."""
    from fusion.fusers.base import output_path

    todo = [p for p in pairs if not output_path(folder, p.stem).is_file()]
    shards = [todo[k:k + SHARD_IMAGES] for k in range(0, len(todo), SHARD_IMAGES)]
    jobs = [Job(fuse_shard, {"spec": candidate.spec.to_dict(), "device": cfg.device,
                             "out": str(folder / f"shard-{k:05d}"),
                             "pairs": [{"stem": p.stem, "sources": {m: str(f) for m, f in p.sources.items()},
                                        "colour": p.colour} for p in shard],
                             "score": (scoring.only(p.stem for p in shard).to_dict() if scoring is not None
                                       else None)})
            for k, shard in enumerate(shards)]
    per_image: dict[str, float] = {}
    errors = []
    for outcome in executor.run(jobs):
        if outcome.error is not None:
            errors.append(outcome.error)
            continue
        shard_dir = Path(jobs[outcome.index].arg["out"])
        seconds = outcome.result["seconds"]
        for stem in seconds:
            target = output_path(folder, stem)
            os.replace(output_path(shard_dir, stem), target)
        per_image.update(seconds)
        if scored is not None and outcome.result["scored"] is not None:
            scored.update(PartialScores(**outcome.result["scored"]))
        clear_dir(shard_dir)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(jobs)} fusing task(s) failed; first: "
                           f"{type(errors[0]).__name__}: {errors[0]}")
    return per_image


def fuse_shard(arg: dict[str, Any]) -> dict[str, Any]:
    """One fusing task (any process, any machine): build the spec's fuser and fuse the shard's pairs into its
    folder, scoring its part of the score plan (``arg["score"]``, or None) on the way. Returns ``{"seconds":
    {stem: seconds per image fused}, "scored": PartialScores as a dict, or None}``."""
    from dataclasses import asdict

    from data.types import Pair
    from pipelines.candidates import CandidateSpec, build_source
    from pipelines.config import torch_device

    spec = CandidateSpec.from_dict(arg["spec"])
    fuser = build_source(spec, device=torch_device(arg["device"]))
    pairs = [Pair(p["stem"], p["sources"], colour=p["colour"]) for p in arg["pairs"]]
    plan = ScorePlan.from_dict(arg["score"]) if arg.get("score") is not None else None
    scorer = EvalScorer(plan, strict=False) if plan is not None else None
    with scorer or contextlib.nullcontext():
        seconds = fuse_and_score(fuser, pairs, arg["out"], scorer, progress=False)
    return {"seconds": seconds, "scored": asdict(scorer.done) if scorer is not None else None}
