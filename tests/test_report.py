"""The pipeline's table logic on hand-made records: ranking, mean ± std, gain, Spearman, CSV/Markdown."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from data.types import CLASS_NAMES
from pipelines import report
from pipelines.records import CandidateResult, DetectorRun

# What a detector seed's record holds beside the numbers these tests vary.
_RUN = {"absent_classes": [], "run_dir": "runs/x", "predictions_path": "", "wall_time_s": 0.0, "epochs": 2,
        "epochs_completed": 2, "imgsz": 64, "batch": 4, "model": "yolov8n.yaml", "weights": None,
        "eval_split": "test", "n_images": 3, "n_boxes": {}, "coco_gt": "gt.json"}


def _run(seed, map50, ap_people=0.5, scen=None):
    return DetectorRun.from_dict({
        **_RUN, "seed": seed, "map50": map50, "map50_95": map50 / 2, "precision": 0.6, "recall": 0.5,
        "coco_map50": map50 + 0.001, "coco_map50_95": map50 / 2,
        "ap50": {**{c: None for c in CLASS_NAMES}, "People": ap_people, "Car": 0.9},
        "scenarios": scen or {"night": {"map50": map50 - 0.1, "n_images": 3, "n_boxes": 7}}})


def _record(name, maps, baseline=None, fusion_value=1.0, error=None):
    runs = [_run(s, m) for s, m in enumerate(maps)]
    return CandidateResult(
        name=name, kind="baseline" if baseline else "checkpoint", baseline=baseline,
        single_modality=baseline if baseline in ("ir", "vis") else None, error=error,
        fusion=None if error else {m: fusion_value * (i + 1) for i, m in enumerate(report.FUSION_METRICS)},
        fuse_seconds_per_image=0.01, detection=report.summarise_detection(runs) if runs else None)


def test_mean_std_over_seeds_skips_missing():
    assert report.mean_std([0.5, 0.7, None]).to_dict() == pytest.approx({"mean": 0.6, "std": 0.1, "n": 2})
    assert report.mean_std([None]) is None


def test_summary_keeps_absent_classes_absent():
    s = report.summarise_detection([_run(0, 0.5), _run(1, 0.7)])
    assert s.ap50["Bus"] is None
    assert s.ap50["People"].mean == pytest.approx(0.5)
    assert s.scenarios["night"].map50.mean == pytest.approx(0.5)
    assert s.scenarios["night"].map50_deployed is None  # a scenario record written without it
    assert s.seeds == [0, 1]


def test_gain_is_against_the_better_single_modality_and_ranking():
    records = [_record("mean", [0.60, 0.62], "mean", 1.0), _record("ir", [0.70, 0.72], "ir", 2.0),
               _record("vis", [0.50], "vis", 3.0), _record("dae", [0.80], None, 4.0),
               _record("broken", [], None, error="checkpoint rejected: bad file")]
    best = report.add_gains(records)
    assert best == pytest.approx(0.71)
    gains = {r.name: r.gain_map50 for r in records}
    assert gains["dae"] == pytest.approx(0.09) and gains["mean"] == pytest.approx(-0.10)
    assert gains["broken"] is None
    assert [r.name for r in report.ranked(records)] == ["dae", "ir", "mean", "vis", "broken"]
    rows = report.table_rows(records)
    assert rows[0]["candidate"] == "dae" and rows[-1]["status"] == "FAILED (see below)"
    assert rows[1]["mAP@50"] == "0.710 ± 0.010"  # two seeds -> mean ± std
    assert rows[0]["mAP@50"] == "0.800"  # one seed -> no ± shown
    assert rows[0]["AP50 Bus"] == "-"
    assert "mAP@50 night" in report.table_columns(records)


def test_spearman_sign_and_constant_column():
    records = [_record(n, [m], None, f) for n, m, f in [("a", 0.1, 1.0), ("b", 0.2, 2.0), ("c", 0.3, 3.0)]]
    table = {row.metric: row for row in report.spearman_table(records)}
    assert table["EN"].rho == pytest.approx(1.0) and table["EN"].n == 3
    for r in records:
        r.fusion["SSIM"] = 1.0
    assert report.spearman_table(records)[report.FUSION_METRICS.index("SSIM")].metric == "SSIM"
    assert {row.metric: row for row in report.spearman_table(records)}["SSIM"].rho is None
    assert report.spearman_table(records[:2]) == []


def test_csv_and_markdown(tmp_path):
    records = [_record("ir", [0.7], "ir"), _record("vis", [0.6], "vis"), _record("x", [], error="boom")]
    report.add_gains(records)
    report.write_csv(tmp_path / "r.csv", records)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["candidate"] for r in rows] == ["ir", "vis", "x"]
    assert float(rows[0]["map50"]) == pytest.approx(0.7) and rows[2]["status"] == "error"
    assert rows[2]["error"] == "boom" and rows[1]["ap50_Bus"] == ""
    md = report.markdown_table(report.table_columns(records), report.table_rows(records))
    assert md.count("\n") == 4 and "| 1 | ir |" in md


def test_scene_grid_shape():
    grey = np.zeros((40, 80), np.uint8)
    colour = np.zeros((40, 80, 3), np.uint8)
    grid = report.scene_grid({"a": [grey, colour], "b": [colour, grey]}, tile_width=64)
    assert grid.ndim == 3 and grid.shape[0] == 2 * (32 + 2) and grid.shape[1] >= 150 + 2 * 66


def test_verdict_names_winners_noise_and_inconclusive_tables():
    records = [_record("ir", [0.70, 0.72], "ir"), _record("vis", [0.50, 0.52], "vis"),
               _record("dae", [0.80, 0.84], None), _record("meh", [0.715, 0.725], None),
               _record("bad", [0.1, 0.1], None)]
    best = report.add_gains(records)
    text = report.verdict(records, best)
    assert "`ir`, mAP@50 0.710" in text
    assert "`dae` +0.110" in text and "`dae` +0.110 (" not in text
    assert "`meh` +0.010 (within seed noise)" in text and "bad" not in text
    single_seed = [_record("ir", [0.7], "ir"), _record("vis", [0.5], "vis"), _record("f", [0.75], None)]
    assert "(one seed: no spread known)" in report.verdict(single_seed, report.add_gains(single_seed))
    losers = [_record("ir", [0.7], "ir"), _record("vis", [0.5], "vis"), _record("f", [0.6], None)]
    assert "none earns its keep" in report.verdict(losers, report.add_gains(losers))
    nothing = [_record("ir", [0.0], "ir"), _record("vis", [0.0], "vis"), _record("f", [0.004], None)]
    assert report.verdict(nothing, report.add_gains(nothing)).startswith("Inconclusive")



def test_a_gain_that_prints_as_zero_is_no_gain_and_never_negative_zero():
    def row(name, baseline, value):  # as results.json held it before single_modality: ir/vis are the singles
        return CandidateResult.from_dict({
            "name": name, "kind": "baseline", "baseline": baseline, "error": None, "fusion": None,
            "fuse_seconds_per_image": None, "detection": {"map50": {"mean": value, "std": 0.0, "n": 1}}})

    records = [row("ir", "ir", 0.5), row("vis", "vis", 0.2), row("mean", "mean", 0.4996), row("max", "max", 0.5004)]
    best = report.add_gains(records)
    shown = {r["candidate"]: r["gain vs best single"] for r in report.table_rows(records)}
    assert shown["mean"] == shown["max"] == "0.000" and shown["vis"] == "-0.300"
    assert "No fusion beats it" in report.verdict(records, best)
