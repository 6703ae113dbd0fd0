"""The pipeline's ranking and report with detector results that are far from 0 and differ (stubbed detector runs).
Real detector runs: ``--jobs 2`` end to end in test_determinism.py, detectors that learn in
test_learning_detector.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.types import CLASS_NAMES
from detection.train import DetectionResult
from pipelines.stages import detect as detect_stage
from pipelines.engine import PipelineConfig, run_pipeline
from pipelines.report import FUSION_METRICS

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_m3fd_root")

SEEDS = [0, 1]
# mAP@50 of each candidate's detector per seed, under the deployed protocol (the ranking's) and the field one,
# which orders them differently (its better single modality is ir, the deployed one's vis), so a number taken
# from the wrong protocol anywhere shows.
DEPLOYED = {"ir": [0.50, 0.54], "vis": [0.60, 0.64], "mean": [0.70, 0.66], "max": [0.40, 0.42],
            "dae_fuse_tiny": [0.80, 0.90]}
FIELD = {"ir": [0.70, 0.72], "vis": [0.61, 0.65], "mean": [0.69, 0.69], "max": [0.45, 0.47],
         "dae_fuse_tiny": [0.82, 0.92]}
SCENARIO_DROP = {"daytime": 0.05, "night": 0.15}  # a scenario's mAP@50 is the overall one minus this


@pytest.fixture(scope="module")
def two_scenario_root(tmp_path_factory) -> Path:
    """Synthetic M3FD-layout scenes whose test split has daytime and night images (80x64)."""
    from data.synthetic import generate_synthetic_m3fd

    return generate_synthetic_m3fd(tmp_path_factory.mktemp("ranking") / "m3fd", num_scenes=8, frames_per_scene=2,
                                   size=(80, 64))


def stub_detect_job(job: dict) -> dict:
    """A detector result as ``detect_job`` returns it, with hand-made numbers for the job's candidate and seed."""
    deployed = DEPLOYED[job["candidate"]][SEEDS.index(job["seed"])]
    field = FIELD[job["candidate"]][SEEDS.index(job["seed"])]
    result = DetectionResult(
        map50=field, map50_95=field / 2, precision=0.7, recall=0.6, ap50={c: field for c in CLASS_NAMES},
        absent_classes=[], coco_map50=field, coco_map50_95=field / 2, run_dir=f"{job['run_dir']}/seed{job['seed']}",
        predictions_path="", wall_time_s=0.0, epochs=2, epochs_completed=2, imgsz=64, batch=4, seed=job["seed"],
        model="yolov8n.yaml", weights=None, eval_split=job["eval_split"], n_images=4, n_boxes={}, key=job["key"],
        map50_deployed=deployed, map50_95_deployed=deployed / 2, ap50_deployed={c: deployed for c in CLASS_NAMES},
        deployed_predictions_path="").to_dict()
    result["coco_gt"] = job["coco_gt"]
    result["scenarios"] = {s: {"map50": field - SCENARIO_DROP[s], "map50_deployed": deployed - SCENARIO_DROP[s],
                               "n_images": len(ids), "n_boxes": job["scenario_boxes"][s]}
                           for s, ids in job["scenario_ids"].items()}
    return result


def _spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho as the Pearson correlation of the ranks (average ranks for ties), written out here."""
    def ranks(values):
        values = np.asarray(values, float)
        order = values.argsort()
        r = np.empty(len(values))
        r[order] = np.arange(1, len(values) + 1)
        for v in np.unique(values):
            r[values == v] = r[values == v].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def _md_table(md: str) -> list[dict[str, str]]:
    """The first table of results.md as rows of column -> cell."""
    lines = [line for line in md.splitlines() if line.startswith("| rank |")]
    start = md.splitlines().index(lines[0])
    rows = []
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in md.splitlines()[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


@pytest.fixture(scope="module")
def stubbed_run(tmp_path_factory, two_scenario_root):
    out = tmp_path_factory.mktemp("stubbed") / "out"
    cfg = PipelineConfig(out=out, data=two_scenario_root, preset="tiny", baselines=["mean", "max"], seeds=SEEDS,
                         progress=False, bootstrap_resamples=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detect_stage, "detect_job", stub_detect_job)
        results = run_pipeline(cfg)
    return cfg, results


def test_ranking_gains_and_mean_std_follow_the_detector_results(stubbed_run):
    cfg, results = stubbed_run
    saved = json.loads((cfg.out / "results.json").read_text())
    means = {n: float(np.mean(v)) for n, v in DEPLOYED.items()}
    stds = {n: float(np.std(v)) for n, v in DEPLOYED.items()}
    expected_order = sorted(DEPLOYED, key=lambda n: -means[n])
    assert expected_order == ["dae_fuse_tiny", "mean", "vis", "ir", "max"]
    best_single = max(means["ir"], means["vis"])  # vis, 0.62
    for doc in (results, saved):
        assert [r["name"] for r in doc["candidates"]] == expected_order
        assert doc["best_single_map50"] == pytest.approx(best_single)
        for r in doc["candidates"]:
            det = r["detection"]
            assert det["seeds"] == SEEDS and r["error"] is None
            assert det["map50_deployed"] == pytest.approx({"mean": means[r["name"]], "std": stds[r["name"]], "n": 2})
            assert det["map50"] == pytest.approx({"mean": np.mean(FIELD[r["name"]]), "std": np.std(FIELD[r["name"]]),
                                                  "n": 2})
            assert r["gain_map50"] == pytest.approx(means[r["name"]] - best_single)
    rows = _md_table((cfg.out / "results.md").read_text())
    assert [row["candidate"] for row in rows] == expected_order
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5"]
    by_name = {row["candidate"]: row for row in rows}
    assert by_name["dae_fuse_tiny"]["mAP@50"] == "0.850 ± 0.050"
    assert by_name["dae_fuse_tiny"]["mAP@50 field"] == "0.870 ± 0.050"
    assert by_name["mean"]["mAP@50 field"] == "0.690 ± 0.000"
    assert by_name["max"]["mAP@50"] == "0.410 ± 0.010"
    gains = {name: row["gain vs best single"] for name, row in by_name.items()}
    assert gains == {"dae_fuse_tiny": "+0.230", "mean": "+0.060", "vis": "0.000", "ir": "-0.100", "max": "-0.210"}
    md = (cfg.out / "results.md").read_text()
    assert "Better single modality: `vis`, mAP@50 0.620" in md
    assert "`dae_fuse_tiny` +0.230" in md and "`mean` +0.060" in md
    assert ("**The protocols disagree:** the deployed protocol ranks `dae_fuse_tiny` then `mean`, the field "
            "protocol `dae_fuse_tiny` then `ir`.") in md


def test_per_scenario_columns_in_json_and_markdown(stubbed_run):
    cfg, _ = stubbed_run
    saved = json.loads((cfg.out / "results.json").read_text())
    assert set(saved["scenarios"]) == set(SCENARIO_DROP)
    rows = {row["candidate"]: row for row in _md_table((cfg.out / "results.md").read_text())}
    for r in saved["candidates"]:
        for scenario, drop in SCENARIO_DROP.items():
            stat = r["detection"]["scenarios"][scenario]
            values = [v - drop for v in DEPLOYED[r["name"]]]
            assert stat["map50_deployed"] == pytest.approx({"mean": np.mean(values), "std": np.std(values), "n": 2})
            assert stat["map50"]["mean"] == pytest.approx(np.mean(FIELD[r["name"]]) - drop)
            assert stat["n_images"] == saved["scenarios"][scenario]["n_images"] == 2
            assert rows[r["name"]][f"mAP@50 {scenario}"] == f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def test_spearman_rho_between_fusion_metrics_and_map(stubbed_run):
    cfg, _ = stubbed_run
    saved = json.loads((cfg.out / "results.json").read_text())
    records = saved["candidates"]
    table = {row["metric"]: row for row in saved["spearman"]}
    assert set(table) == set(FUSION_METRICS)
    md = (cfg.out / "results.md").read_text()
    section = md[md.index("## Which fusion metric predicts detector utility"):]
    checked = 0
    for metric in FUSION_METRICS:
        x = [r["fusion"][metric] for r in records]
        y = [float(np.mean(DEPLOYED[r["name"]])) for r in records]
        row = table[metric]
        assert row["n"] == len(records) == 5
        if len(set(x)) < 2:
            assert row["rho"] is None
            continue
        assert row["rho"] == pytest.approx(_spearman(x, y), abs=1e-12)
        assert f"| {metric} | {row['rho']:+.2f} |" in section
        checked += 1
    assert checked >= 5  # the candidates' fusion metrics differ, so most rows have a rank order
