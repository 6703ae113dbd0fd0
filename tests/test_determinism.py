"""Same seed, same machine, same software: the same detector, bit for bit (README, "What is reproducible").

- ``fresh_processes``: a tiny detector (the ``tiny`` preset, with every batch an optimiser step so the weights
  really move) trained three times, each in a fresh Python process: twice with seed 0, once with seed 1. Every
  epoch's losses and validation metrics (``results.csv`` minus its wall-time column), the final scores of both
  protocols, the saved predictions and the trained weights must be identical for the two seed-0 runs, and differ
  for seed 1 (so the comparison can fail).
- ``jobs_runs``: the pipeline with ``--jobs 2`` (detectors trained in spawned worker processes) against
  ``--jobs 1`` (in this process): the same per-candidate, per-seed results and prediction files.

Both compare with ``==``, never ``approx``: the claim is exact equality.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from data.m3fd import load_m3fd
from detection.export import export_yolo_dataset
from pipelines import engine, executors
from pipelines.engine import PipelineConfig, run_pipeline
from tests.conftest import every_batch_a_step
from tests.test_pipeline_ranking import _md_table

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_m3fd_root")]

# Every number a detector run reports (DetectionResult fields), compared exactly.
SCORES = ("map50", "map50_95", "precision", "recall", "ap50", "coco_map50", "coco_map50_95", "map50_deployed",
          "map50_95_deployed", "ap50_deployed", "epochs_completed")

# One training in a fresh process; argv: dataset folder, output folder, seed, JSON file to write.
_TRAIN_SCRIPT = """
import csv, hashlib, json, sys
from pathlib import Path
from detection.export import YoloDataset
from detection.presets import load_preset
from detection.train import train_and_evaluate

dataset, out, seed, report = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
kwargs = load_preset("tiny").train_kwargs()
kwargs.update(epochs=3, imgsz=96)
kwargs["extra_args"] = {**kwargs["extra_args"], "nbs": kwargs["batch"]}  # every batch an optimiser step
result = train_and_evaluate(YoloDataset.load(dataset), **kwargs, seed=seed, out_dir=out, name="run",
                            eval_split="test")

import torch  # after train_and_evaluate: unpickling a checkpoint imports ultralytics (set up offline by now)

weights = torch.load(Path(result.run_dir) / "weights" / "best.pt", map_location="cpu", weights_only=False)
digest = hashlib.sha256()
for name, tensor in sorted(weights["model"].state_dict().items()):
    digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
with (Path(result.run_dir) / "results.csv").open() as f:
    epochs = [{k.strip(): v.strip() for k, v in row.items() if k.strip() != "time"} for row in csv.DictReader(f)]
predictions = {p: json.loads(Path(path).read_text()) if Path(path).is_file() else None
               for p, path in (("field", result.predictions_path), ("deployed", result.deployed_predictions_path))}
report.write_text(json.dumps({"result": result.to_dict(), "epochs": epochs, "predictions": predictions,
                              "weights_sha256": digest.hexdigest()}))
"""


@pytest.fixture(scope="module")
def fresh_processes(tmp_path_factory, learnable_root):
    """Three trainings, each in its own fresh Python process, on one exported dataset: seeds 0, 0 and 1."""
    base = tmp_path_factory.mktemp("determinism")
    dataset = load_m3fd(learnable_root)
    ids = sorted(i for split in dataset.splits.values() for i in split)
    yolo = export_yolo_dataset({i: dataset.ir_path(i) for i in ids}, {i: dataset.annotation(i) for i in ids},
                               {s: sorted(v) for s, v in dataset.splits.items()}, base / "yolo", eval_split="test",
                               class_names=dataset.class_names)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    runs = {"a": 0, "b": 0, "other_seed": 1}
    procs = {name: subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, str(yolo.root), str(base / name),
                                     str(seed), str(base / f"{name}.json")], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for name, seed in runs.items()}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{output[-5000:]}"
    return {name: json.loads((base / f"{name}.json").read_text()) for name in runs}


def test_same_seed_in_two_fresh_processes_gives_the_same_detector_bit_for_bit(fresh_processes):
    a, b = fresh_processes["a"], fresh_processes["b"]
    assert len(a["epochs"]) == 3 and {"train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss",
                                      "metrics/mAP50(B)"} <= set(a["epochs"][0])
    assert a["epochs"] == b["epochs"]  # every epoch's losses, val losses, metrics and learning rates, as written
    for key in SCORES:
        assert a["result"][key] == b["result"][key], key
    assert a["predictions"] == b["predictions"]  # every box and score of both protocols' files
    assert a["predictions"]["field"] and a["predictions"]["deployed"]  # not two empty files compared
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["result"]["run_dir"] != b["result"]["run_dir"]  # two runs, not one reused


def test_another_seed_gives_another_detector(fresh_processes):
    """The comparison above can fail: seed 1 changes the first epoch's losses, the weights and the predictions."""
    a, other = fresh_processes["a"], fresh_processes["other_seed"]
    first = ("train/box_loss", "train/cls_loss", "train/dfl_loss")
    assert [a["epochs"][0][k] for k in first] != [other["epochs"][0][k] for k in first]
    assert a["weights_sha256"] != other["weights_sha256"]
    assert a["predictions"]["deployed"] != other["predictions"]["deployed"]


def _epochs(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "results.csv").open() as f:
        return [{k.strip(): v.strip() for k, v in row.items() if k.strip() != "time"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def jobs_runs(tmp_path_factory, learnable_root):
    """The pipeline (candidates ir and vis, tiny preset) with --jobs 2, then with --jobs 1, on the learnable set."""
    base = tmp_path_factory.mktemp("jobs")
    submitted: list[str] = []

    class CountingPool(ProcessPoolExecutor):
        def __init__(self, max_workers, **kwargs):
            assert max_workers == 2
            super().__init__(max_workers=max_workers, **kwargs)

        def submit(self, fn, job, *args, **kwargs):
            submitted.append(job["candidate"])
            return super().submit(fn, job, *args, **kwargs)

    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(executors, "ProcessPoolExecutor", CountingPool)
        mp.setattr(engine, "detection_settings", every_batch_a_step(engine.detection_settings))
        mp.setenv("OMP_WAIT_POLICY", "PASSIVE")  # read by the spawned workers' torch
        for jobs in (2, 1):
            cfg = PipelineConfig(out=base / f"jobs{jobs}", data=learnable_root, preset="tiny", baselines=[],
                                 jobs=jobs, train_dae_fuse=False, progress=False, bootstrap_resamples=0)
            results[jobs] = (cfg, run_pipeline(cfg))
    return results, submitted


def test_two_detector_runs_at_once_end_to_end(jobs_runs):
    """--jobs 2: the detectors train in two spawned worker processes (real Ultralytics runs, tiny preset) and
    every result comes back into the report."""
    results, submitted = jobs_runs
    cfg, two = results[2]
    assert sorted(submitted) == ["ir", "vis"]  # only the --jobs 2 run used the pool
    assert two["config"]["jobs"] == 2
    for r in two["candidates"]:
        assert r["error"] is None and r["detection"] is not None
        run = r["detection_runs"][0]
        assert run["epochs_completed"] == run["epochs"] == 2 and not run["resumed"]
        assert Path(run["run_dir"]).is_relative_to(cfg.out / "runs" / r["name"])
        assert (Path(run["run_dir"]) / "weights" / "best.pt").is_file()
        assert list((cfg.out / "tb" / r["name"]).glob("events.out.tfevents.*"))  # curves from the worker
    rows = _md_table((cfg.out / "results.md").read_text())
    assert sorted(row["candidate"] for row in rows) == ["ir", "vis"]


def test_jobs_2_gives_the_same_detectors_as_jobs_1(jobs_runs):
    """Per candidate and seed: every score of both protocols, the per-scenario numbers, every epoch's losses, both
    saved prediction files and every weight of the kept detector are identical whether the detector trained in a
    worker or in this process (results.csv and predictions.json are rounded; the weights are compared exactly)."""
    import torch  # the --jobs 1 run set Ultralytics up offline in this process; unpickling a .pt imports it

    results, _ = jobs_runs
    (_, two), (_, one) = results[2], results[1]
    by_name = {jobs: {r["name"]: r for r in res["candidates"]} for jobs, res in ((2, two), (1, one))}
    assert sorted(by_name[2]) == sorted(by_name[1]) == ["ir", "vis"]
    compared_boxes = 0
    for name, r2 in by_name[2].items():
        r1 = by_name[1][name]
        assert [run["seed"] for run in r2["detection_runs"]] == [run["seed"] for run in r1["detection_runs"]] == [0]
        for run2, run1 in zip(r2["detection_runs"], r1["detection_runs"]):
            for key in SCORES + ("scenarios",):
                assert run2[key] == run1[key], (name, key)
            assert _epochs(Path(run2["run_dir"])) == _epochs(Path(run1["run_dir"]))
            w2, w1 = (torch.load(Path(run["run_dir"]) / "weights" / "best.pt", map_location="cpu",
                                 weights_only=False)["model"].state_dict() for run in (run2, run1))
            assert list(w2) == list(w1)
            assert all(torch.equal(w2[k], w1[k]) for k in w2), name
            for path in ("predictions_path", "deployed_predictions_path"):
                p2, p1 = Path(run2[path]), Path(run1[path])
                assert p2 != p1 and p2.is_file() == p1.is_file(), (name, path)
                if p2.is_file():
                    saved = json.loads(p2.read_text())
                    assert saved == json.loads(p1.read_text()), (name, path)
                    compared_boxes += len(saved)
    assert compared_boxes > 0  # predictions were compared, not two absent files
