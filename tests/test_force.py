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
    for name, target in (("fuse", "pipelines.stages.fuse.fuse_and_score"), ("train", "fusion.training.train.train"),
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

    for target in ("pipelines.stages.fuse.fuse_and_score", "fusion.training.train.train", "detection.train.train_and_evaluate",
                   "detection.train.score_detector", "data.corruptions.corrupt_pair"):
        monkeypatch.setattr(target, must_not_run)
    # What writers killed at each moment of a run leave (SIGKILL: no cleanup ran): the report files, every plot,
    # every candidate's stage records, the TensorBoard summaries, the caches, the training folders. Each must be
    # gone after the next run; a live writer's temporary (this process's pid) is left alone.
    dead = _dead_pid()
    out = cfg.out
    places = [out, out / "plots", out / "cache" / "fused", out / "cache" / "yolo", out / "cache" / "corrupted",
              out / "fusion_training", *(out / "fusion_training").iterdir()]
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


def _trained_here(cfg: PipelineConfig):
    """The synthetic dataset, and a stand-in for ``fusion.training.train.train`` (milliseconds) that records each call as
    (folder, resumed), writes ``last.pt`` and, unless ``interrupt`` is set, ``best.pt``."""
    from types import SimpleNamespace

    from pipelines.datasets import load_run_dataset

    calls: list[tuple[str, bool]] = []
    state = {"interrupt": False}

    def train(fusion_cfg, root, out_dir, *, resume, **kwargs):
        calls.append((Path(out_dir).name, resume))
        (Path(out_dir) / "last.pt").write_bytes(b"epoch 1")
        if state["interrupt"]:
            raise KeyboardInterrupt("simulated interruption after epoch 1")
        (Path(out_dir) / "best.pt").write_bytes(b"best")
        return SimpleNamespace(best_checkpoint=Path(out_dir) / "best.pt", wall_time_s=0.5)

    return load_run_dataset(cfg, cfg.data), train, calls, state


def test_the_dae_fuse_trained_here_is_a_store_folder_resumed_reused_and_forced_once(tmp_path, synthetic_root,
                                                                                    monkeypatch):
    """It trains in ``fusion_training/<key>.partial``, renamed once finished with its checkpoint as the record: an
    interrupted training resumes, a finished one is reused, a forced run trains it again once. A run finished by the
    previous version (its record in ``state/_fusion_training``) is reused; one it left unfinished is trained again
    and replaces its folder whole."""
    from data.io import record_key, write_record
    from data.store import RECORD_NAME, KeyedStore
    from pipelines.engine import train_fusion_here

    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False)
    dataset, train, calls, state = _trained_here(cfg)
    monkeypatch.setattr("fusion.training.train.train", train)

    def trained(store: KeyedStore | None = None) -> Path:
        return train_fusion_here(cfg, "tiny", dataset, store or KeyedStore(cfg.out / "state"))

    state["interrupt"] = True
    with pytest.raises(KeyboardInterrupt):
        trained()
    (partial,) = (cfg.out / "fusion_training").iterdir()
    assert partial.suffix == ".partial" and (partial / "last.pt").is_file()
    state["interrupt"] = False
    checkpoint = trained()
    run = partial.with_suffix("")
    assert calls == [(partial.name, False), (partial.name, True)]  # resumed from its last.pt
    assert checkpoint == run / "best.pt" and checkpoint.is_file() and not partial.exists()

    calls.clear()
    assert trained() == checkpoint and calls == []  # finished: reused
    forced = KeyedStore(cfg.out / "state", force=True)
    assert trained(forced) == checkpoint and trained(forced) == checkpoint
    assert calls == [(partial.name, False)]  # from scratch, once per run

    key = record_key(run / RECORD_NAME)
    (run / RECORD_NAME).unlink()  # as the previous version left a finished run: its record in the run's state
    write_record(cfg.out / "state" / "_fusion_training" / "train.json", key,
                 {"checkpoint": str(checkpoint), "run_dir": str(run), "wall_time_s": 1.0})
    calls.clear()
    assert trained() == checkpoint and calls == [] and (run / RECORD_NAME).is_file()
    assert not (cfg.out / "state" / "_fusion_training" / "train.json").exists()

    (run / RECORD_NAME).unlink()  # ... and an unfinished one: trained again, the folder replaced whole
    (run / "stale.txt").write_text("left by the killed run")
    assert trained() == checkpoint and calls == [(partial.name, False)]
    assert not (run / "stale.txt").exists() and sorted(p.name for p in run.parent.iterdir()) == [run.name]


def test_a_forced_run_builds_an_export_and_a_detector_once_when_two_stages_ask(tmp_path, synthetic_root,
                                                                              monkeypatch):
    """``--force`` is the run's store's: two stages asking for the same export, or the same detector seed, get it
    built once (the exports counted as written, the detector as trained), not once per ask."""
    from types import SimpleNamespace

    from data.store import KeyedStore
    from pipelines.stages import detect
    from tests.test_detection import _FakeUltralytics

    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False, force=True)
    dataset, *_ = _trained_here(cfg)
    fused = SimpleNamespace(dir=str(dataset.ir_path(dataset.ids[0]).parent), key="f" * 64)
    cand = SimpleNamespace(name="ir", record=SimpleNamespace(fuse=fused, detection_runs={}, yolo=None))
    calls: dict[str, int] = {}
    _count(monkeypatch, calls, "written", "detection.export._write_export")
    fake = _FakeUltralytics(monkeypatch)
    settings = {"model": "yolov8n.yaml", "epochs": 2, "imgsz": 64, "batch": 2, "weights": None, "extra_args": {},
                "weights_sha256": None}

    def a_stage(store: KeyedStore) -> list[dict]:
        """What a stage asks for: the candidate's export and its early-fusion sibling, and its detector's job."""
        yolo = detect.export_fused(cfg, cand, dataset, store)
        detect.export_stack(cfg, dataset, store)
        return detect.queue_detector_jobs(cfg, cand, yolo, fused.key, dataset, settings=settings, seeds=[0],
                                          scenarios={}, store=store)

    for job in a_stage(KeyedStore(cfg.out / "state")):  # a plain run first: there is something to force
        detect.detect_job(job)
    assert calls["written"] == 2 and [c.split()[0] for c in fake.calls] == ["train", "evaluate", "evaluate"]

    calls["written"], fake.calls = 0, []
    store = KeyedStore(cfg.out / "state", force=True)
    jobs = a_stage(store) + a_stage(store)  # two stages ask before either's detector has run
    assert [job["redo"] for job in jobs] == [True, False]
    for job in jobs:
        detect.detect_job(job)
    assert calls["written"] == 2  # each export rebuilt once
    assert [c.split()[0] for c in fake.calls] == ["train", "evaluate", "evaluate"]  # trained once, then reused
