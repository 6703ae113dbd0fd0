"""``--force`` redoes every stage (issue 14): fusing, the DAE-Fuse trained here, the export, the detectors; and
afterwards a plain run reuses what the forced run made."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import fusion.fuse
import fusion.train
from data.io import clear_dir
from pipelines.m3fd import PipelineConfig, run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _written(out: Path, results: dict) -> dict[str, int]:
    """Modification times of what each stage of ``results``' candidates wrote: a fused image, the export manifest,
    the detector's training log, and the checkpoint of the DAE-Fuse trained here."""
    files = []
    for r in results["candidates"]:
        fused = Path(r["fused_dir"])
        files += [sorted(fused.glob("*.png"))[0], out / "cache" / "yolo" / fused.name / "manifest.json",
                  out / "runs" / r["name"] / "seed0" / "results.csv"]
    files += list((out / "fusion_training").glob("*/last.pt"))
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def test_force_redoes_every_stage_and_a_plain_rerun_reuses_it(tmp_path, synthetic_root, monkeypatch):
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False, baselines=[],
                         bootstrap_resamples=0)
    first = run_pipeline(cfg)
    assert len(_written(cfg.out, first)) == 3 * 3 + 1

    calls = {"fuse": 0, "train": 0}
    real_fuse, real_train = fusion.fuse.fuse_folder, fusion.train.train

    def counting_fuse(*args, **kwargs):
        calls["fuse"] += 1
        return real_fuse(*args, **kwargs)

    def counting_train(*args, **kwargs):
        calls["train"] += 1
        return real_train(*args, **kwargs)

    monkeypatch.setattr("fusion.fuse.fuse_folder", counting_fuse)
    monkeypatch.setattr("fusion.train.train", counting_train)
    started = time.time_ns()
    forced = run_pipeline(PipelineConfig(**{**cfg.__dict__, "force": True}))
    after = _written(cfg.out, forced)
    assert calls == {"fuse": 3, "train": 1}
    stale = [k for k, stamp in after.items() if stamp < started]
    assert not stale, f"--force left these as they were: {stale}"
    runs = {r["name"]: r["detection_runs"][0] for r in forced["candidates"]}
    assert all(not run["resumed"] and run["epochs_completed"] == run["epochs"] for run in runs.values())
    assert [r["name"] for r in forced["candidates"]] == [r["name"] for r in first["candidates"]]

    def must_not_run(*args, **kwargs):
        raise AssertionError("finished work was redone without --force")

    monkeypatch.setattr("fusion.fuse.fuse_folder", must_not_run)
    monkeypatch.setattr("fusion.train.train", must_not_run)
    monkeypatch.setattr("detection.train.train_and_evaluate", must_not_run)
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()  # its pid is a dead writer's
    litter = [cfg.out / "plots" / f".gains.png.{child.pid}.ab12.tmp.png", cfg.out / "state" / "ir" /
              f".fuse.json.{child.pid}.cd34.tmp", cfg.out / f".results.md.{child.pid}.ef56.tmp"]
    for path in litter:
        path.write_bytes(b"half-written by a killed run")
    again = run_pipeline(cfg)
    assert not any(p.exists() for p in litter)
    assert [r["detection"] for r in again["candidates"]] == [r["detection"] for r in forced["candidates"]]
    assert _written(cfg.out, again) == after


def test_a_cleared_folder_is_whole_or_gone(tmp_path):
    folder = tmp_path / "run"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "best.pt").write_bytes(b"x")
    clear_dir(folder)
    assert not folder.exists() and list(tmp_path.iterdir()) == []
    clear_dir(folder)  # nothing there: nothing to do


def test_a_killed_writers_temporaries_are_swept_wherever_the_run_writes(tmp_path, synthetic_root):
    """SIGKILL skips every cleanup: temporaries of a dead pid in plots/, state/, tb/ and the run folder are removed
    by the next run; a live writer's are left alone."""
    import os
    import subprocess

    from data.io import remove_stale_temps_tree

    child = subprocess.Popen(["true"])
    child.wait()
    dead = child.pid
    out = tmp_path / "out"
    litter = [out / "plots" / f".map50_vs_fusion_metrics.png.{dead}.ab12cd34.tmp.png",
              out / f".results.json.{dead}.ab12cd34.tmp", out / "state" / "ir" / f".fuse.json.{dead}.x1.tmp",
              out / "tb" / "ir" / "summary" / f".events.{dead}.x2.tmp"]
    live = out / "plots" / f".gains.png.{os.getpid()}.x3.tmp.png"
    for path in litter + [live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (out / "cache" / f".fused.{dead}.x4.tmp").mkdir(parents=True)
    removed = remove_stale_temps_tree(out)
    assert sorted(map(str, removed)) == sorted(map(str, litter + [out / "cache" / f".fused.{dead}.x4.tmp"]))
    assert live.exists() and not any(p.exists() for p in litter)
