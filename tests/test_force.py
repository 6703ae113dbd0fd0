"""``--force`` redoes every stage (issue 14): fusing, the DAE-Fuse trained here, the export, the detectors; and
afterwards a plain run reuses what the forced run made."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from data.io import clear_dir
from pipelines.engine import PipelineConfig, run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _written(out: Path, results: dict) -> dict[str, int]:
    """Modification times of what each stage of ``results``' candidates wrote: a fused image, the export manifest,
    the detector's training log and TensorBoard curves, the robustness check's corrupted input, fused image and
    score, and the checkpoint and curves of the DAE-Fuse trained here."""
    files = []
    for r in results["candidates"]:
        fused = Path(r["fused_dir"])
        files += [min(fused.glob("*.png")), out / "cache" / "yolo" / fused.name / "manifest.json",
                  out / "runs" / r["name"] / "seed0" / "results.csv",
                  *(out / "tb" / r["name"]).glob("events.out.tfevents.*"),
                  *(out / "robustness" / r["name"] / "noise_s1" / "seed0").glob("eval_test*/predictions.json")]
    files += list((out / "cache" / "corrupted").glob("*/vis/*.png"))[:1]
    files += list((out / "fusion_training").glob("*/last.pt")) + list((out / "tb" / "fusion_training").glob("events*"))
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def _count(monkeypatch, calls: dict[str, int], name: str, target: str) -> None:
    module, attr = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[attr]), attr)

    def counting(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)

    calls[name] = 0
    monkeypatch.setattr(target, counting)


def _dead_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()  # its pid is a dead writer's: SIGKILL skips every cleanup, as a finished process does
    return child.pid


def test_force_redoes_every_stage_and_a_plain_rerun_reuses_it(tmp_path, synthetic_root, monkeypatch):
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False, baselines=[],
                         bootstrap_resamples=0, corruptions=["noise"], severities=[1])
    first = run_pipeline(cfg)
    names = [r["name"] for r in first["candidates"]]
    assert sorted(names) == ["dae_fuse_tiny", "ir", "vis"]
    assert set(first["robustness"]["cells"]["noise/1"]["candidates"]) == set(names)
    before = _written(cfg.out, first)
    # per candidate: fused image, manifest, results.csv, >= 1 curve file, 2 predictions; + corrupted, last.pt, curves
    assert len(before) >= 3 * 6 + 3

    calls: dict[str, int] = {}
    for name, target in (("fuse", "fusion.fusers.fuse.fuse_folder"), ("train", "fusion.training.train.train"),
                         ("detect", "detection.train.train_and_evaluate"), ("score", "detection.train.score_detector"),
                         ("corrupt", "data.corruptions.corrupt_pair")):
        _count(monkeypatch, calls, name, target)
    started = time.time_ns()
    forced = run_pipeline(PipelineConfig(**{**cfg.__dict__, "force": True}))
    after = _written(cfg.out, forced)
    n_test = forced["candidates"][0]["detection_runs"][0]["n_images"]
    # fused twice per candidate (clean, noise/1), one DAE-Fuse, a detector and a robustness score per candidate,
    # the noise applied to each evaluation pair again
    assert calls == {"fuse": 6, "train": 1, "detect": 3, "score": 3, "corrupt": n_test}
    stale = [k for k, stamp in after.items() if stamp < started]
    assert not stale, f"--force left these as they were: {stale}"
    assert len(after) == len(before), "forced runs' TensorBoard curves pile up beside the old ones"  # new names
    runs = {r["name"]: r["detection_runs"][0] for r in forced["candidates"]}
    assert all(not run["resumed"] and run["epochs_completed"] == run["epochs"] for run in runs.values())
    assert sorted(r["name"] for r in forced["candidates"]) == sorted(names)

    def must_not_run(*args, **kwargs):
        raise AssertionError("finished work was redone without --force")

    for target in ("fusion.fusers.fuse.fuse_folder", "fusion.training.train.train",
                   "detection.train.train_and_evaluate", "detection.train.score_detector",
                   "data.corruptions.corrupt_pair"):
        monkeypatch.setattr(target, must_not_run)
    # What writers killed at each moment of a run leave (SIGKILL: no cleanup ran): the report files, every plot,
    # every candidate's stage records, the TensorBoard summaries, the caches, the training folders. Each must be
    # gone after the next run; a live writer's temporary (this process's pid) is left alone.
    dead = _dead_pid()
    out = cfg.out
    places = [out, out / "plots", out / "state" / "_fusion_training", out / "cache" / "fused", out / "cache" / "yolo",
              out / "cache" / "corrupted", out / "fusion_training"]
    places += [out / "state" / n for n in names] + [out / "tb" / n / "summary" for n in names]
    places += [out / "runs" / n for n in names] + [out / "robustness" / n / "noise_s1" for n in names]
    litter = [out / f".results.json.{dead}.a1b2c3d4.tmp", out / f".results.csv.{dead}.a1b2c3d4.tmp.csv",
              out / f".results.md.{dead}.a1b2c3d4.tmp.md"]
    litter += [out / "plots" / f".{p.name}.{dead}.e5f6g7h8.tmp.png" for p in (out / "plots").glob("*.png")]
    litter += [place / f".record.json.{dead}.x9y8z7.tmp" for place in places]
    assert all(place.is_dir() for place in places)
    for path in litter:
        path.write_bytes(b"half-written by a killed run")
    half_built = out / "cache" / "yolo" / f".{Path(forced['candidates'][0]['fused_dir']).name}.{dead}.q1w2e3.tmp"
    half_built.mkdir()
    (half_built / "images").mkdir()
    live = [out / "plots" / f".gains.png.{os.getpid()}.live0001.tmp.png",
            out / "state" / names[0] / f".fuse.json.{os.getpid()}.live0002.tmp"]
    for path in live:
        path.write_bytes(b"being written right now")
    again = run_pipeline(cfg)
    assert [p for p in litter + [half_built] if p.exists()] == []
    assert all(p.exists() for p in live)
    assert [r["detection"] for r in again["candidates"]] == [r["detection"] for r in forced["candidates"]]
    assert again["robustness"]["cells"] == forced["robustness"]["cells"]
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


_KILLED_RUN = """
import contextlib, os, signal, sys
from pathlib import Path

import data.io as io
import pipelines.report as report
from pipelines.engine import PipelineConfig, run_pipeline

out, data, moment = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real = io.atomic_path


@contextlib.contextmanager
def killed_while_writing(path):
    with real(path) as tmp:
        parts = Path(path).relative_to(out).parts
        if parts[0] == moment or (moment == "results" and parts[0].startswith("results.")):
            tmp.write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: the temporary stays
        yield tmp


io.atomic_path = report.atomic_path = killed_while_writing
run_pipeline(PipelineConfig(out=out, data=data, preset="tiny", baselines=[], train_dae_fuse=False, progress=False,
                            bootstrap_resamples=0))
"""


def _temporaries(root: Path) -> list[str]:
    from data.io import _TEMP_PATTERN

    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if _TEMP_PATTERN.match(p.name))


@pytest.mark.slow
def test_sigkill_while_writing_records_report_or_plots_leaves_nothing_behind(tmp_path, synthetic_root):
    """Real SIGKILLs, one at each moment: while a stage record is written (state/), then while the report is
    (results.*), then while a plot is (plots/, the reported litter). Each next run sweeps what the killed one left;
    the last completes with no temporary anywhere under --out."""
    import signal
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out"
    left = []
    for moment in ("state", "results", "plots"):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_RUN), str(out), str(synthetic_root),
                               moment], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        now = _temporaries(out)
        assert not set(left) & set(now), "the next run did not sweep what the killed one left"
        assert len(now) == 1 and Path(now[0]).parts[0].lstrip(".").startswith(moment), now
        left = now
    results = run_pipeline(PipelineConfig(out=out, data=synthetic_root, preset="tiny", baselines=[],
                                          train_dae_fuse=False, progress=False, bootstrap_resamples=0))
    assert _temporaries(out) == []
    assert all(r["detection"] for r in results["candidates"])
    assert (out / "plots" / "map50_vs_fusion_metrics.png").is_file() and (out / "results.md").is_file()
