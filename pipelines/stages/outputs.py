"""Stage ``outputs``: results.json/csv/md, the plots, the side-by-side grid of fused scenes and TensorBoard.

Every file is written atomically; the tables and plots themselves are ``pipelines.report``'s. results.json is the
document's JSON (``RunResults.to_dict``, written once, here); the tables, plots and TensorBoard read the same
:class:`~pipelines.records.RunResults` through its attributes.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.io import atomic_write_json, atomic_write_text, read_image, read_ir, read_visible
from fusion.fusers.base import output_path

from .. import report
from ..records import CandidateResult, DetectionSummary, MeanStd, RunResults

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

GRID_SCENES = 4  # scenes shown in the side-by-side grid of fused images


def write_outputs(cfg: PipelineConfig, results: RunResults, dataset, eval_ids) -> None:
    records, bootstrap, robust = results.candidates, results.bootstrap, results.robustness
    # matplotlib's font cache goes into the run, not the user's home (Ultralytics' setup does the same when it ran).
    os.environ.setdefault("MPLCONFIGDIR", str(cfg.out / ".matplotlib"))
    atomic_write_json(cfg.out / "results.json", results.to_dict())
    report.write_csv(cfg.out / "results.csv", records, cfg.protocol, bootstrap)
    atomic_write_text(cfg.out / "results.md", report.render_markdown(results))
    report.plot_metric_vs_map(cfg.out / "plots" / "map50_vs_fusion_metrics.png", records, cfg.protocol)
    report.plot_gains(cfg.out / "plots" / "gains.png", bootstrap)
    if robust is not None and robust.cells:
        clean = {r.name: r.detection.map50_deployed.mean for r in records
                 if r.detection is not None and r.detection.map50_deployed is not None}
        report.plot_robustness(cfg.out / "plots" / "robustness.png", robust, clean)
    scenes = pick_grid_scenes(dataset, eval_ids)
    grid = {}
    for r in records:
        if r.fused_dir:
            grid[r.name] = [read_image(output_path(Path(r.fused_dir), i)) for i in scenes]
    if grid:
        sources = {f"{m} (source)": [read_visible_bgr(dataset.path(i, m)) if m == dataset.colour
                                     else read_ir(dataset.path(i, m)) for i in scenes] for m in dataset.modalities}
        report.write_scene_grid(cfg.out / "plots" / "fused_scenes.png", {**sources, **grid})
    write_tensorboard(cfg.out / "tb", records, grid, scenes)


def pick_grid_scenes(dataset, eval_ids: list[str]) -> list[str]:
    """A few evaluation images, one per scenario first (night, daytime, ...), so the grid shows variety."""
    chosen: list[str] = []
    by_scenario: dict[str, list[str]] = {}
    for i in eval_ids:
        by_scenario.setdefault(dataset.scenario_of(i) or "", []).append(i)
    for ids in by_scenario.values():
        chosen.append(ids[len(ids) // 2])
    chosen += [i for i in eval_ids if i not in chosen]
    return chosen[:GRID_SCENES]


def read_visible_bgr(path: Path) -> np.ndarray:
    y, bgr = read_visible(path)
    return bgr if bgr is not None else y.astype(np.uint8)


def _mean(stat: MeanStd | None) -> float:
    """A summary's mean for TensorBoard's hparams view (NaN where there is none)."""
    return math.nan if stat is None else stat.mean


def write_tensorboard(tb_root: Path, records: list[CandidateResult], grid: dict[str, list[np.ndarray]],
                      scenes: list[str]) -> None:
    """Per candidate, a TensorBoard run ``<name>/summary`` with fused sample images and the hparams view (the
    detector curves are in ``<name>``, written by the runs). It is rewritten, not appended to, on every run, so a
    rerun does not show each candidate twice."""
    from torch.utils.tensorboard import SummaryWriter

    for r in records:
        summary_dir = tb_root / r.name / "summary"
        shutil.rmtree(summary_dir, ignore_errors=True)
        writer = SummaryWriter(str(summary_dir))
        try:
            for scene, image in zip(scenes, grid.get(r.name, [])):
                rgb = image[..., ::-1] if image.ndim == 3 else image
                writer.add_image(f"fused/{scene}", np.ascontiguousarray(rgb),
                                 dataformats="HWC" if image.ndim == 3 else "HW")
            det = r.detection or DetectionSummary()
            metrics = {"hparam/mAP50": _mean(det.map50), "hparam/mAP50_deployed": _mean(det.map50_deployed),
                       "hparam/mAP50-95": _mean(det.map50_95),
                       "hparam/gain_vs_best_single": r.gain_map50 if r.gain_map50 is not None else math.nan}
            metrics.update({f"hparam/{m}": v for m, v in (r.fusion or {}).items()})
            writer.add_hparams({"candidate": r.name, "kind": r.kind, "failed": bool(r.error)}, metrics, run_name=".")
        finally:
            writer.close()
