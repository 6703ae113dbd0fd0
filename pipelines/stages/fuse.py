"""Stage ``fuse``: a candidate's fused images, one ``<id>.png`` per sample, in a content-keyed cache folder.

The key follows the fuser (``cache_key``), the dataset, the ids and every source file's size and mtime, so an
edited source or a changed fuser is fused again. Fusing thousands of images resumes image by image after a kill
(``KeyedStore.folder(..., resumable=True)``); a folder candidate's images are copied in as PNG so metrics and
detectors read every candidate the same way.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data.provenance import content_key, files_fingerprint
from data.store import KeyedStore

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.config import PipelineConfig

LOGGER = logging.getLogger(__name__)


@dataclass
class FuseOutput:
    """The fuse stage's record: the folder of ``<id>.png`` images a candidate gives the metrics and the detector."""

    dir: str
    n_images: int
    seconds_per_image: float | None   # None: not fused here (a folder of another method's images)
    key: str = ""
    cached: bool = False              # this run's: reused from the cache

    def stored(self) -> dict[str, Any]:
        """What the record keeps (the key is the record's own, ``cached`` is this run's)."""
        return {k: v for k, v in asdict(self).items() if k not in ("key", "cached")}


def source_fingerprint(dataset, ids: list[str]) -> str:
    """Key of every source file of ``ids`` (path, size, mtime): an edited or replaced source image invalidates
    what was fused or trained from it."""
    wanted = set(ids)
    return files_fingerprint(path for pair in sorted(dataset.pairs(), key=lambda p: p.stem) if pair.stem in wanted
                             for path in pair.sources.values())


def used_ids(cfg: PipelineConfig, dataset) -> list[str]:
    """The ids of the train, selection and evaluation splits: everything a candidate must fuse."""
    return sorted(set().union(*(dataset.splits[s] for s in (cfg.train_split, cfg.select_split, cfg.eval_split))))


def stage_fuse(cfg: PipelineConfig, candidate: Candidate, dataset, store: KeyedStore) -> FuseOutput:
    """Fuse every sample of the splits in use with the candidate's fuser (or reuse the finished folder)."""
    fuser = candidate.source(cfg)
    ids = used_ids(cfg, dataset)
    key = content_key("fuse", fuser.cache_key(), str(dataset.root), ids, source_fingerprint(dataset, ids))
    wanted = set(ids)
    return fuse_into_cache(cfg, candidate, [p for p in dataset.pairs() if p.stem in wanted], key, store)


def fuse_into_cache(cfg: PipelineConfig, candidate: Candidate, pairs, key: str, store: KeyedStore) -> FuseOutput:
    """Fuse ``pairs`` with the candidate's fuser into ``cache/fused/<key>``, or reuse that folder when finished."""
    from fusion.fuse import fuse_folder

    fuser = candidate.source(cfg)

    def build(folder: Path) -> dict[str, Any]:
        timing = fuse_folder(fuser, pairs, folder, progress=cfg.progress, skip_existing=True)
        seconds = list(timing["per_image"].values())  # images fused now (a resumed folder kept the others)
        measured = bool(seconds) and candidate.kind != "folder"  # reading another method's images is no fusing time
        return FuseOutput(dir=str(fused_dir), n_images=len(pairs),
                          seconds_per_image=float(np.mean(seconds)) if measured else None).stored()

    fused_dir = cfg.out / "cache" / "fused" / key[:16]
    stored, cached = store.folder(fused_dir, key, build, resumable=True)
    if cached:
        LOGGER.info("%s: fused images reused from %s", candidate.name, fused_dir)
    return FuseOutput(**stored, key=key, cached=cached)
