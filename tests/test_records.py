"""The pipeline's records (pipelines.records): stored once, read back through the same dataclasses, equal; records
written before a field existed read back with its default, and the report reads them (the results files the
repository keeps under benchmarks/results/ included)."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from data.store import KeyedStore
from detection.bootstrap import Interval
from pipelines import report
from pipelines.candidates import CandidateSpec
from pipelines.config import PipelineConfig, load_pipeline_preset
from pipelines.records import (
    Bootstrap,
    CandidateResult,
    CorruptedRun,
    DatasetInfo,
    DetectorRun,
    LateRun,
    ProtocolIntervals,
    Robustness,
    RunConfig,
    RunResults,
    ScenarioScore,
    ScenarioSize,
    SpearmanRow,
    SuddenChange,
    TopTwo,
)

REPO = Path(__file__).resolve().parents[1]


def _detector_run(seed: int = 0, map50: float = 0.6) -> DetectorRun:
    return DetectorRun.from_dict({
        "map50": map50, "map50_95": map50 / 2, "precision": 0.7, "recall": 0.5,
        "ap50": {"People": map50, "Bus": None}, "absent_classes": ["Bus"], "coco_map50": map50 + 0.01,
        "coco_map50_95": map50 / 2, "run_dir": f"runs/ir/seed{seed}", "predictions_path": "p.json",
        "wall_time_s": 1.5, "epochs": 2, "epochs_completed": 2, "imgsz": 64, "batch": 4, "seed": seed,
        "model": "yolov8n.yaml", "weights": None, "eval_split": "test", "n_images": 3,
        "n_boxes": {"People": 4, "Bus": 0}, "resumed": False, "key": f"k{seed}", "notes": ["a note"],
        "map50_deployed": map50 - 0.05, "map50_95_deployed": map50 / 3,
        "ap50_deployed": {"People": map50 - 0.05, "Bus": None}, "deployed_predictions_path": "d.json",
        "coco_gt": "gt.json",
        "scenarios": {"night": {"map50": map50 - 0.1, "map50_deployed": map50 - 0.2, "n_images": 2, "n_boxes": 3}}})


def _late_run(seed: int = 0) -> LateRun:
    return LateRun(seed=seed, map50=0.8, map50_95=0.4, ap50={"People": 0.8, "Bus": None}, map50_deployed=0.75,
                   map50_95_deployed=0.35, ap50_deployed={"People": 0.75, "Bus": None}, predictions_path="l.json",
                   deployed_predictions_path="ld.json", coco_gt="gt.json", eval_split="test", n_images=3,
                   n_boxes={"People": 4, "Bus": 0}, run_dir=f"runs/late/seed{seed}", key="late",
                   merged={"ir": "runs/ir/seed0", "vis": "runs/vis/seed0"}, method="wbf",
                   scenarios={"night": ScenarioScore(0.7, 0.65, n_images=2, n_boxes=3)})


def _json_round_trip(data):
    return json.loads(json.dumps(data))


@pytest.mark.parametrize("make, read", [(_detector_run, DetectorRun.from_dict), (_late_run, LateRun.from_dict)])
def test_a_stored_seed_record_reads_back_equal(tmp_path, make, read):
    run = make()
    store = KeyedStore(tmp_path / "state")
    store.put("cand", "detect_seed0", "key", run.to_dict())
    stored = store.get("cand", "detect_seed0", "key")
    assert read(stored) == run
    assert read(stored).to_dict() == stored  # written again, the same JSON (keys in the same order)
    assert list(read(stored).to_dict()) == list(run.to_dict())


def test_a_detector_run_is_its_detection_result_with_the_pipelines_fields_after_it():
    run = _detector_run()
    keys = list(run.to_dict())
    assert keys[-2:] == ["coco_gt", "scenarios"] and "map50" in keys
    assert run.to_dict()["scenarios"]["night"] == {"map50": pytest.approx(0.5), "map50_deployed": pytest.approx(0.4),
                                                  "n_images": 2, "n_boxes": 3}


def test_a_candidate_result_round_trips_through_results_json():
    spec = CandidateSpec(name="dae", kind="checkpoint", fuser="dae_fuse", args={"checkpoint": Path("/w/best.pt")})
    runs = [_detector_run(0, 0.6), _detector_run(1, 0.7)]
    records = [
        CandidateResult(name="dae", kind="checkpoint", spec=spec, origin=spec.origin, checkpoint="/w/best.pt",
                        fusion={"EN": 6.1, "SD": None}, temporal={"mean": {"flicker": 0.1}, "n_runs": 2, "n_frames": 6},
                        fuse_seconds_per_image=0.01, fused_dir="cache/fused/x",
                        detection=report.summarise_detection(runs), detection_runs=runs),
        CandidateResult(name="late", kind="late", fused_image=False, spec=CandidateSpec(name="late", kind="late"),
                        detection=report.summarise_detection([_late_run()]), detection_runs=[_late_run()]),
        CandidateResult(name="broken", kind="checkpoint", error="checkpoint rejected"),
    ]
    report.add_gains(records)
    written = _json_round_trip([r.to_dict() for r in records])
    read = [CandidateResult.from_dict(r) for r in written]
    assert read == records
    assert [r.to_dict() for r in read] == written
    assert isinstance(read[1].detection_runs[0], LateRun) and isinstance(read[0].detection_runs[0], DetectorRun)
    assert list(written[0]) == ["name", "kind", "baseline", "single_modality", "fused_image", "checkpoint", "error",
                                "origin", "spec", "fusion", "temporal", "fuse_seconds_per_image", "fused_dir",
                                "detection", "detection_runs", "gain_map50"]


def test_bootstrap_and_robustness_sections_round_trip_and_leave_absent_parts_absent():
    iv = Interval(0.1, -0.02, 0.2, n_seeds=2, seed_std=0.03, image_se=0.04, dof=5.0)
    section = ProtocolIntervals(map50={"a": iv, "b": iv}, seeds=[0, 1], per_seed={"a": [0.1, 0.2], "b": [0.3, 0.1]},
                                top_two=TopTwo("a", "b", iv))
    boot = Bootstrap(protocols={"deployed": section}, method={"n_images": 3, "seed": 0}, seconds=0.5)
    written = _json_round_trip(boot.to_dict())
    assert "reference" not in written["protocols"]["deployed"]
    assert "image_vs_detector_fusion" not in written["protocols"]["deployed"]
    assert written["protocols"]["deployed"]["top_two"]["first"] == "a"
    assert Bootstrap.from_dict(written) == boot and Bootstrap.from_dict(written).to_dict() == written
    assert "method" not in Bootstrap(seconds=0.1).to_dict()

    robust = Robustness.from_dict({
        "corruptions": ["fog"], "severities": [1], "seed": 0,
        "cells": {"fog/1": {"candidates": {"ir": {"map50_deployed": {"mean": 0.5, "std": 0.0, "n": 1},
                                                  "map50": None}},
                            "intervals": {"map50": {"ir": iv.to_dict()}, "drop": {}}}},
        "skipped": {"late": "not scored"}, "singles": ["ir", "vis"]})
    written = _json_round_trip(robust.to_dict())
    assert "errors" not in written and "gains" not in written["cells"]["fog/1"]["intervals"]
    assert Robustness.from_dict(written) == robust and Robustness.from_dict(written).to_dict() == written
    corrupted = {"field": {"map50": 0.5, "map50_95": 0.2, "ap50": {"People": 0.5}, "predictions_path": "f.json"},
                 "deployed": {"map50": 0.4, "map50_95": 0.2, "ap50": {"People": 0.4}, "predictions_path": "d.json"},
                 "coco_gt": "gt.json"}
    assert CorruptedRun.from_dict(corrupted).to_dict() == corrupted


def test_the_report_reads_records_written_without_the_optional_fields(tmp_path):
    """A detector seed stored before the deployed protocol and a row written before single_modality, fused_image
    and temporal existed: the fields read back with their defaults and every table is written."""
    old_run = {k: v for k, v in _detector_run().to_dict().items()
               if k not in ("map50_deployed", "map50_95_deployed", "ap50_deployed", "deployed_predictions_path",
                            "coco_gt", "scenarios", "resumed", "key", "notes")}
    run = DetectorRun.from_dict(old_run)
    assert run.map50_deployed is None and run.scenarios == {} and run.coco_gt is None and run.notes == []
    detection = report.summarise_detection([run]).to_dict()
    rows = [{"name": name, "kind": "baseline", "baseline": name, "error": None,
             "fusion": {m: 1.0 for m in report.FUSION_METRICS}, "fuse_seconds_per_image": 0.01,
             "detection": detection, "detection_runs": [old_run]} for name in ("ir", "vis", "max")]
    records = [CandidateResult.from_dict(r) for r in rows]
    assert [r.is_single for r in records] == [True, True, False]  # ir and vis: the single-modality rows then
    assert all(r.fused_image and r.temporal is None for r in records)
    assert records[0].detection.map50_deployed is None
    report.add_gains(records)
    table = report.table_rows(records, protocol="field")
    assert table[0]["mAP@50"] == "0.600" and table[0]["mAP@50 deployed"] == "-"
    report.write_csv(tmp_path / "r.csv", records)
    written = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert written[0]["map50_deployed"] == "" and float(written[0]["map50"]) == pytest.approx(0.6)
    results = {"candidates": rows, "data": {"root": "d", "n_images": 9, "split": {"method": "m", "counts": {}}},
               "config": {"eval_split": "test", "train_split": "train", "detection": {"model": "y", "imgsz": 64,
                                                                                    "epochs": 1},
                          "preset": "tiny", "seeds": [0], "retired_option": 1,
                          "preset_values": {"detection": "tiny", "fusion_train": "tiny", "released_dae_fuse": False,
                                            "train_dae_fuse": True, "seeds": [0], "jobs": 1, "retired_key": 2,
                                            "synthetic": {"num_scenes": 6, "frames_per_scene": 2, "size": [96, 80]}}}}
    read = RunResults.from_dict(results)
    # before select_split the best epoch was chosen on the scored split, before protocol the ranking was the field's
    assert (read.config.select_split, read.config.protocol) == ("test", "field") and read.config.keeps_best_epoch
    assert read.config.preset_values.early_fusion is False and read.config.preset_values.synthetic.size == (96, 80)
    assert read.data.modalities == ["ir", "vis"] and read.data.split.size("test") == 0 and read.versions == {}
    assert read.bootstrap is read.robustness is read.sudden_change is None and read.spearman == []
    md = report.render_markdown(read)  # no bootstrap, robustness or scenarios sections: none rendered
    assert "| ir |" in md and "## Robustness" not in md and "optimistic" in md


def _results(tmp_path: Path) -> RunResults:
    """A results document with every section, built as the engine builds it."""
    cfg = PipelineConfig(data=Path("/data/m3fd"), checkpoints=[Path("/w/best.pt")], out=Path("/runs/x"),
                         corruptions=["fog"])
    recipe = {"model": "yolov8n.yaml", "epochs": 2, "imgsz": 64, "batch": 4, "extra_args": {"val": False},
              "weights": None}
    table = tmp_path / "sudden_change.md"
    table.write_text("| fuser | drop |\n|---|---|\n| ir | 0.1 |")
    runs = [_detector_run(0, 0.6), _detector_run(1, 0.7)]
    records = [CandidateResult(name="ir", kind="baseline", baseline="ir", single_modality="ir",
                               detection=report.summarise_detection(runs), detection_runs=runs),
               CandidateResult(name="broken", kind="checkpoint", error="checkpoint rejected")]
    best = report.add_gains(records)
    iv = Interval(0.1, -0.02, 0.2, n_seeds=2, seed_std=0.03, image_se=0.04, dof=5.0)
    return RunResults(
        config=RunConfig.of(cfg, seeds=[0, 1], detection=recipe, preset=load_pipeline_preset("tiny")),
        data=DatasetInfo.from_dict({
            "root": "/data/m3fd", "reader": "m3fd", "modalities": ["ir", "vis"], "colour": "vis", "synthetic": False,
            "n_images": 9, "class_names": ["People", "Bus"],
            "split": {"method": "meta-lists", "file": "/runs/x/split.json", "seed": 0,
                      "counts": {"train": 5, "val": 2, "test": 2}}}),
        candidates=report.ranked(records), versions={"python": "3.11.7", "torch": "2.4.0"}, best_single_map50=best,
        bootstrap=Bootstrap(protocols={"field": ProtocolIntervals(map50={"ir": iv}, seeds=[0, 1],
                                                                  per_seed={"ir": [0.6, 0.7]}, reference="ir")},
                            method={"n_images": 2, "n_resamples": 1000, "seed": 0}, seconds=0.5),
        spearman=[SpearmanRow(metric="EN", rho=0.5, p=0.2, n=3), SpearmanRow(metric="SSIM", rho=None, p=None, n=3)],
        scenarios={"night": ScenarioSize(n_images=2, n_boxes=3)}, wall_time_s=12.5, command="pipelines/run_m3fd.py",
        sudden_change=SuddenChange(corruption="glare:flash:1:1", plot="/runs/x/plots/sudden_change.png",
                                   table=str(table), json="/runs/x/plots/sudden_change.json",
                                   summaries=[{"fuser": "ir", "change_frame": 1}]))


def test_the_results_document_round_trips_through_results_json(tmp_path):
    results = _results(tmp_path)
    written = _json_round_trip(results.to_dict())
    assert list(written) == ["config", "versions", "data", "candidates", "best_single_map50", "bootstrap",
                             "spearman", "scenarios", "wall_time_s", "command", "robustness", "sudden_change"]
    # the config as the engine wrote it before it was a record: the options, seeds resolved, recipe, preset values
    cfg = PipelineConfig(data=Path("/data/m3fd"), checkpoints=[Path("/w/best.pt")], out=Path("/runs/x"),
                         corruptions=["fog"])
    expected = cfg.to_dict()
    expected.update({"seeds": [0, 1], "detection": results.config.detection,
                     "preset_values": asdict(load_pipeline_preset("tiny"))})
    assert written["config"] == _json_round_trip(expected) and list(written["config"]) == list(expected)
    assert list(written["data"]) == ["root", "reader", "modalities", "colour", "synthetic", "n_images",
                                     "class_names", "split"]
    assert written["robustness"] == {} and written["spearman"][1] == {"metric": "SSIM", "rho": None, "p": None, "n": 3}
    read = RunResults.from_dict(written)
    assert read == results and read.to_dict() == written
    assert read.config.out == Path("/runs/x") and read.config.checkpoints == [Path("/w/best.pt")]
    assert read.config.weights is None and not read.config.keeps_best_epoch  # val: false keeps the last epoch
    md = report.render_markdown(read)
    assert md == report.render_markdown(results)
    assert "keep their last epoch" in md and "| night | 2 | 3 |" in md and "| ir | 0.1 |" in md
    assert SuddenChange(skipped="no fuser").to_dict() == {"skipped": "no fuser"}
    assert RunResults.from_dict({**written, "sudden_change": {"skipped": "no fuser"}}).sudden_change.skipped


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "benchmarks" / "results").glob("*.json")
                                        if '"candidates"' in p.read_text()))
def test_the_stored_results_files_read_back_and_render(path):
    """The results.json files kept in the repository (some from before options, sections and fields existed)."""
    data = json.loads((REPO / "benchmarks" / "results" / path).read_text())
    results = RunResults.from_dict(data)
    assert [r.name for r in results.candidates] == [r["name"] for r in data["candidates"]]
    assert results.config.seeds == data["config"]["seeds"] and results.data.root == data["data"]["root"]
    again = RunResults.from_dict(_json_round_trip(results.to_dict()))
    assert again == results
    assert report.render_markdown(again).startswith("# Which fusion helps the detector")
