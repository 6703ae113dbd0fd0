"""The whole pipeline on tiny synthetic data: table, JSON, CSV, plots, TensorBoard, cache hits, resume, failures."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import pipelines.engine as engine
from data.types import CLASS_NAMES
from fusion.training.train import train
from pipelines.config import check_splits
from pipelines.datasets import resolve_dataset
from pipelines.engine import PipelineConfig, run_pipeline, torch_device
from pipelines.stages import detect as detect_stage
from pipelines.candidates import CandidateSpec
from tests.conftest import tiny_config


pytestmark = pytest.mark.usefixtures("no_m3fd_root")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, synthetic_root) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    return train(tiny_config("phases=[{name: fuse, epochs: 1}]"), synthetic_root, out, progress=False).last_checkpoint


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("pipeline")
    broken = root / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    cfg = PipelineConfig(out=root / "out", checkpoints=[tiny_checkpoint, broken], baselines=["ir", "vis"],
                         preset="tiny", progress=False)
    return cfg, run_pipeline(cfg)


def test_rows_columns_and_failed_candidate(first_run):
    cfg, results = first_run
    rows = {r["name"]: r for r in results["candidates"]}
    assert set(rows) == {"ir", "vis", "last", "broken"}
    assert "checkpoint rejected" in rows["broken"]["error"] and rows["broken"]["detection"] is None
    for name in ("ir", "vis", "last"):
        det = rows[name]["detection"]
        assert rows[name]["error"] is None, rows[name]["error"]
        assert 0.0 <= det["map50"]["mean"] <= 1.0 and det["seeds"] == [0]
        assert set(det["ap50"]) == set(CLASS_NAMES)
        assert set(rows[name]["fusion"]) == {"EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"}
        assert rows[name]["gain_map50"] is not None and rows[name]["fuse_seconds_per_image"] > 0
    assert results["candidates"][-1]["name"] == "broken"  # failed rows sort last

    md = (cfg.out / "results.md").read_text()
    assert "SYNTHETIC DATA" in md
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    for column in ("candidate", "mAP@50", "gain vs best single", "mAP@50:95", "AP50 People", "AP50 Truck",
                   "EN", "VIF", "Qabf", "SSIM", "fuse ms/img"):
        assert f"| {column} |" in header
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and line.split("|")[2].strip() in rows]
    assert len(table_rows) == 4
    assert "## Failed candidates" in md and "broken" in md.split("## Failed candidates")[1]

    with (cfg.out / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["candidate"] for r in csv_rows][-1] == "broken" and len(csv_rows) == 4


def test_results_json_records_config_versions_split_and_timings(first_run):
    cfg, results = first_run
    stored = json.loads((cfg.out / "results.json").read_text())
    assert stored["config"]["preset"] == "tiny" and stored["config"]["seeds"] == [0]
    assert stored["config"]["detection"]["epochs"] > 0
    assert {"torch", "ultralytics", "numpy"} <= set(stored["versions"])
    assert stored["data"]["synthetic"] is True and stored["data"]["split"]["method"]
    assert Path(stored["data"]["split"]["file"]).is_file()
    assert stored["wall_time_s"] > 0
    assert {s["metric"] for s in stored["spearman"]} <= {"EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "AG"}
    assert stored["spearman"], "three successful candidates give a Spearman table"


def test_detectors_keep_their_best_epoch_on_val_and_are_scored_on_test(first_run):
    from data.m3fd import load_m3fd
    from detection.export import YoloDataset

    cfg, results = first_run
    stored = json.loads((cfg.out / "results.json").read_text())
    splits = load_m3fd(Path(stored["data"]["root"])).splits
    assert (stored["config"]["select_split"], stored["config"]["eval_split"]) == ("val", "test")
    ir = next(r for r in results["candidates"] if r["name"] == "ir")
    run = ir["detection_runs"][0]
    assert run["eval_split"] == "test" and run["n_images"] == len(splits["test"])
    exported = YoloDataset.load(cfg.out / "cache" / "yolo" / Path(ir["fused_dir"]).name)  # named by the fused key
    assert {role: sorted(p.stem for p in (exported.root / "images" / role).iterdir()) for role in exported.splits} \
        == {role: sorted(splits[role]) for role in ("train", "val", "test")}
    per_image = json.loads((cfg.out / "state" / "ir" / "score.json").read_text())["output"]["per_image"]
    assert sorted(per_image) == sorted(splits["test"])  # fusion metrics on the scored images too
    md = (cfg.out / "results.md").read_text()
    assert "keep their best epoch on `val`" in md and "scored on `test`" in md and "optimistic" not in md


def test_splits_are_checked_before_any_work():
    counts = {"train": 5, "val": 2, "test": 0}
    assert check_splits(PipelineConfig(), {"train": 5, "val": 2, "test": 1}) == []
    problems = check_splits(PipelineConfig(), counts)
    assert len(problems) == 1 and "'test' (--eval-split) is empty" in problems[0] and "val 2" in problems[0]
    problems = check_splits(PipelineConfig(select_split="train", eval_split="train"), counts)
    assert len(problems) == 2 and all("is the training split" in p for p in problems)


def test_plots_and_tensorboard(first_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, results = first_run
    for name in ("map50_vs_fusion_metrics.png", "fused_scenes.png"):
        image = cv2.imread(str(cfg.out / "plots" / name))
        assert image is not None and image.shape[0] > 50
    for name in ("ir", "vis", "last"):
        scalars = EventAccumulator(str(cfg.out / "tb" / name)).Reload().Tags()["scalars"]
        assert any(t.startswith(f"detect/{name}/seed0/") for t in scalars), scalars
        summary = EventAccumulator(str(cfg.out / "tb" / name / "summary")).Reload()
        assert any(t.startswith("fused/") for t in summary.Tags()["images"])
    hparams = list((cfg.out / "tb" / "ir").rglob("events.out.tfevents.*"))
    assert hparams


def test_second_run_is_all_cache_hits(first_run, monkeypatch):
    cfg, results = first_run

    def must_not_run(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr("pipelines.stages.fuse.fuse_and_score", must_not_run)
    monkeypatch.setattr("detection.train.train_and_evaluate", must_not_run)
    again = run_pipeline(cfg)
    before = {r["name"]: r["detection"] for r in results["candidates"]}
    after = {r["name"]: r["detection"] for r in again["candidates"]}
    assert before == after
    assert [r["error"] for r in again["candidates"] if r["name"] != "broken"] == [None, None, None]
    summaries = list((cfg.out / "tb" / "ir" / "summary").rglob("events.out.tfevents.*"))
    assert len(summaries) == 2  # images + hparams, rewritten rather than piled up by the rerun


def test_interrupted_run_resumes_without_redoing_finished_work(tmp_path, monkeypatch):
    cfg = PipelineConfig(out=tmp_path / "out", baselines=["ir", "vis"], preset="tiny", progress=False)
    real_job = detect_stage.detect_job
    calls: list[str] = []

    def interrupted_after_one(job):
        if calls:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second detector run
        calls.append(job["candidate"])
        return real_job(job)

    monkeypatch.setattr(detect_stage, "detect_job", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    assert not (cfg.out / "results.json").exists()

    rerun: list[str] = []

    def counting(job):
        rerun.append(job["candidate"])
        return real_job(job)

    monkeypatch.setattr(detect_stage, "detect_job", counting)
    results = run_pipeline(cfg)
    names = {r["name"] for r in results["candidates"]}
    assert names == {"ir", "vis", "dae_fuse_tiny"}  # no --checkpoints: one DAE-Fuse was trained on the spot
    assert calls[0] not in rerun and len(rerun) == 2
    assert all(r["error"] is None and r["detection"] for r in results["candidates"])
    grid = cv2.imread(str(cfg.out / "plots" / "fused_scenes.png"))
    assert grid is not None and np.asarray(grid).std() > 0


def test_pipeline_device_names_map_to_torch_devices():
    assert torch_device("cpu") == "cpu"
    assert torch_device("0") == "cuda:0"
    assert torch_device("1,2,3") == "cuda:1"
    assert torch_device("cuda:2") == "cuda:2"


def test_bad_dataset_fails_before_any_heavy_work(tmp_path, synthetic_root):
    import shutil

    from data.errors import DatasetError

    root = tmp_path / "m3fd"
    shutil.copytree(synthetic_root, root)
    bad = sorted((root / "Ir").iterdir())[:2]
    for path in bad:
        path.write_bytes(b"not an image")
    cfg = PipelineConfig(out=tmp_path / "out", data=root, preset="tiny", progress=False)
    with pytest.raises(DatasetError) as err:
        run_pipeline(cfg)
    assert all(path.name in str(err.value) for path in bad)  # every offending file is named
    assert not (cfg.out / "cache").exists() and not (cfg.out / "state").exists()


def test_eval_split_without_boxes_and_bad_recipe_fail_before_any_heavy_work(tmp_path, synthetic_root):
    import shutil

    from data.errors import DatasetError
    from data.m3fd import load_m3fd

    root = tmp_path / "m3fd"
    shutil.copytree(synthetic_root, root)
    for image_id in load_m3fd(root).splits["test"]:
        (root / "Annotation" / f"{image_id}.xml").write_text("<annotation><size><width>80</width><height>64</height>"
                                                             "</size></annotation>")
    cfg = PipelineConfig(out=tmp_path / "out", data=root, preset="tiny", progress=False)
    with pytest.raises(DatasetError, match="'test' .* has no boxes"):
        run_pipeline(cfg)
    bad_recipe = PipelineConfig(out=tmp_path / "out2", preset="tiny", model="yolov8n.pt", epochs=0, progress=False)
    with pytest.raises(ValueError, match="must be a model yaml.*epochs >= 1"):
        run_pipeline(bad_recipe)
    assert not (tmp_path / "out2" / "synthetic_m3fd").exists()  # not even the default data was written


def test_an_edited_source_image_is_fused_again(tmp_path, synthetic_root):
    import shutil

    from data.m3fd import load_m3fd
    from data.store import KeyedStore

    root = tmp_path / "m3fd"
    shutil.copytree(synthetic_root, root)
    cfg = PipelineConfig(out=tmp_path / "out", data=root, preset="tiny", progress=False)
    dataset, store = load_m3fd(root), KeyedStore(tmp_path / "out" / "state")
    candidate = engine.Candidate(CandidateSpec(name="max", kind="baseline", fuser="max"))
    first = engine.stage_fuse(cfg, candidate, dataset, store)
    assert engine.stage_fuse(cfg, candidate, dataset, store).cached
    edited = dataset.ir_path(dataset.splits["test"][0])
    cv2.imwrite(str(edited), np.zeros_like(cv2.imread(str(edited))))
    again = engine.stage_fuse(cfg, candidate, dataset, store)
    assert not again.cached and again.key != first.key


def test_checkpoints_with_clashing_names_get_distinct_rows(tmp_path):
    paths = [tmp_path / "c" / "best.pt", tmp_path / "a" / "x" / "best.pt", tmp_path / "b" / "x" / "best.pt"]
    for path in paths:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"junk")  # rejected on load, but still a row with its own folders
    names = [c.name for c in engine.build_candidates(PipelineConfig(checkpoints=paths, baselines=["ir", "vis"]))]
    assert len(names) == len(set(names)) == 5 and names[:2] == ["ir", "vis"]


def test_cli_refuses_bad_data_and_options_with_one_message_and_exit_2(tmp_path, capsys):
    from pipelines.run_m3fd import main

    out = tmp_path / "out"
    assert main(["--preset", "tiny", "--data", str(tmp_path / "missing"), "--out", str(out), "--no-progress"]) == 2
    assert "not an M3FD-layout folder" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--epochs", "-1", "--seeds", "-1", "--device", "7", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "epochs >= 1" in err and "seeds must be non-negative" in err and "--device 7" in err
    assert not out.exists()  # refused runs leave no empty output folder behind


def test_synthetic_data_passed_with_data_stays_labelled_synthetic(tmp_path, synthetic_root):
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False)
    _, info = resolve_dataset(cfg, None)
    assert info.synthetic is True


def test_a_fused_folder_is_reused_from_its_own_record_without_the_run_state(tmp_path, synthetic_root, monkeypatch):
    from data.m3fd import load_m3fd
    from data.store import KeyedStore

    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False)
    dataset, store = load_m3fd(synthetic_root), KeyedStore(tmp_path / "out" / "state")
    candidate = engine.Candidate(CandidateSpec(name="max", kind="baseline", fuser="max"))
    first = engine.stage_fuse(cfg, candidate, dataset, store)
    shutil.rmtree(tmp_path / "out" / "state", ignore_errors=True)  # the run's records lost: the folder's own is enough
    monkeypatch.setattr("pipelines.stages.fuse.fuse_and_score",
                        lambda *a, **k: pytest.fail("finished fusing was redone"))
    again = engine.stage_fuse(cfg, candidate, dataset, store)
    assert again.cached and again.key == first.key
    assert again.seconds_per_image == first.seconds_per_image


def test_both_protocols_and_bootstrap_intervals_are_reported(first_run):
    cfg, results = first_run
    assert results["config"]["protocol"] == "deployed"
    boot = results["bootstrap"]
    assert boot["method"]["n_resamples"] == 1000 and boot["method"]["seed"] == 0
    for protocol in ("field", "deployed"):
        section = boot["protocols"][protocol]
        assert set(section["map50"]) == {"ir", "vis", "last"} and section["reference"] in {"ir", "vis"}
        for iv in section["map50"].values():
            assert iv["low"] <= iv["point"] <= iv["high"]
    rows = {r["name"]: r for r in results["candidates"]}
    for name in ("ir", "vis", "last"):
        det = rows[name]["detection"]
        run = rows[name]["detection_runs"][0]
        assert det["map50_deployed"]["mean"] == pytest.approx(run["map50_deployed"])
        assert Path(run["deployed_predictions_path"]).parent.name.endswith("_deployed")
        # the bootstrap's point estimate is the pycocotools mAP@50 of the same predictions
        assert boot["protocols"]["deployed"]["map50"][name]["point"] == pytest.approx(run["map50_deployed"], abs=1e-6)
        assert boot["protocols"]["field"]["map50"][name]["point"] == pytest.approx(run["coco_map50"], abs=1e-6)
        assert set(det["scenarios"]) and all("map50_deployed" in s for s in det["scenarios"].values())
    md = (cfg.out / "results.md").read_text()
    assert "ranked by mAP@50 under the deployed protocol" in md and "| mAP@50 field |" in md
    assert (cfg.out / "plots" / "gains.png").is_file() or not any(
        s.get("gains") for s in boot["protocols"].values())
    with (cfg.out / "results.csv").open() as f:
        header = next(csv.reader(f))
    assert {"map50_deployed", "deployed_gain_low", "deployed_gain_high", "field_map50_low"} <= set(header)


def test_temporal_consistency_is_reported_per_candidate(first_run):
    cfg, results = first_run
    for r in results["candidates"]:
        if r["error"]:
            continue
        temporal = r["temporal"]
        assert temporal["n_runs"] >= 1 and temporal["n_frames"] >= 2 * temporal["n_runs"]
        assert temporal["mean"]["flicker"] >= 0.0 and -1e-9 <= temporal["mean"]["temporal_correlation"] <= 1 + 1e-9
    header = next(line for line in (cfg.out / "results.md").read_text().splitlines() if line.startswith("| rank"))
    assert "| flicker |" in header and "| temporal_correlation |" in header
