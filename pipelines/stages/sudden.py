"""Stage ``sudden``: how each candidate's fused video behaves when visibility changes mid-sequence (``--sudden-change
fog:ramp:1:2:3``): the evaluation split's runs of consecutive frames with a corruption that switches on, ramps up or
flashes (``fusion.video.sudden_change``), per-frame quality and temporal error around the change, as a table and
``plots/sudden_change.png``. Fusers only: a pre-fused folder cannot fuse corrupted frames, and early and late fusion
have no fused image."""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from pipelines.records import SuddenChange

if TYPE_CHECKING:
    from pipelines.candidates import Candidate
    from pipelines.config import PipelineConfig


def stage_sudden_change(cfg: PipelineConfig, candidates: list[Candidate], dataset) -> SuddenChange | None:
    """The sudden-change section; None without ``--sudden-change``."""
    if not cfg.sudden_change:
        return None
    from fusion.video.sudden_change import ChangeSequence, parse_corruption, sudden_change_report
    from fusion.video.temporal import consecutive_runs

    pairs = {p.stem: p for p in dataset.pairs(cfg.eval_split)}
    by_scene: dict[str | None, list[str]] = {}
    for i in sorted(pairs):
        by_scene.setdefault(dataset.scene_of(i), []).append(i)
    sequences = [ChangeSequence(name=f"{scene or 'frames'}:{run[0]}", ir=pairs[run[0]].ir.parent,
                                vis=pairs[run[0]].vis.parent, stems=tuple(run),
                                corruption=parse_corruption(cfg.sudden_change, key=run[0]))
                 for scene, ids in by_scene.items() for run in consecutive_runs(ids) if len(run) >= 2]
    fusers = {c.name: c.source(cfg) for c in candidates
              if not c.error and c.spec.fuses_images and c.kind != "folder"}
    if not sequences or not fusers:
        why = "no run of 2 or more consecutive evaluation frames" if not sequences else "no fuser"
        return SuddenChange(skipped=why)
    result = sudden_change_report(sequences, fusers, cfg.out / "plots")
    return SuddenChange(corruption=cfg.sudden_change, plot=str(result.plot), table=str(result.table),
                        json=str(result.json), summaries=[asdict(s) for s in result.summaries])
