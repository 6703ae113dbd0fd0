"""Early fusion (``stack``) and late fusion (``late``) as rows of the pipeline, beside image fusion.

The detector runs are stubbed with hand-made predictions: the infrared "detector" finds exactly the boxes of the
even-numbered evaluation images, the visible one those of the odd ones, so each alone scores about half and late
fusion, which merges their boxes, must find them all. The early-fusion export is real (4 channels: ir + vis B, G, R).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from detection.export import YoloDataset
from detection.train import DetectionResult
from pipelines.engine import PipelineConfig, run_pipeline
from pipelines.records import DetectorRun
from pipelines.stages import detect as detect_stage

SEEDS = [0, 1]


def _stub_predictions(job: dict, keep) -> list[dict]:
    gt = json.loads(Path(job["coco_gt"]).read_text())
    images = sorted(image["id"] for image in gt["images"])
    kept = {image_id for k, image_id in enumerate(images) if keep(k)}
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"] if a["image_id"] in kept]


def stub_detect_job(job: dict) -> dict:
    """Each candidate's 'detector' finds the boxes of some evaluation images: ir the even, vis the odd, every other
    candidate all of them on seed 0 and none on seed 1."""
    keep = {"ir": lambda k: k % 2 == 0, "vis": lambda k: k % 2 == 1}.get(
        job["candidate"], lambda k: job["seed"] == 0)
    run_dir = Path(job["run_dir"]) / f"seed{job['seed']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions = _stub_predictions(job, keep)
    paths = {}
    for protocol in ("field", "deployed"):
        paths[protocol] = run_dir / f"predictions_{protocol}.json"
        paths[protocol].write_text(json.dumps(predictions))
    from detection.coco_eval import coco_map

    score = coco_map(Path(job["coco_gt"]), paths["field"]).map50
    result = DetectionResult(
        map50=score, map50_95=score, precision=score, recall=score, ap50={}, absent_classes=[], coco_map50=score,
        coco_map50_95=score, run_dir=str(run_dir), predictions_path=str(paths["field"]), wall_time_s=0.0, epochs=1,
        epochs_completed=1, imgsz=64, batch=4, seed=job["seed"], model="yolov8n.yaml", weights=None,
        eval_split=job["eval_split"], n_images=0, n_boxes={}, key=job["key"], map50_deployed=score,
        map50_95_deployed=score, ap50_deployed={}, deployed_predictions_path=str(paths["deployed"]))
    return DetectorRun.of(result, coco_gt=job["coco_gt"], scenarios={}).to_dict()


def stack_export(out: Path) -> YoloDataset:
    """The early-fusion export the stack row's detectors trained on (one per run: the modalities' stack)."""
    (folder,) = (out / "cache" / "yolo").glob("stack-*")
    return YoloDataset.load(folder)


@pytest.fixture(scope="module")
def stubbed_run(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("early_late") / "out"
    cfg = PipelineConfig(out=out, data=synthetic_root, preset="tiny", baselines=["max"], seeds=SEEDS,
                         early_fusion=True, late_fusion=True, train_dae_fuse=False, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detect_stage, "detect_job", stub_detect_job)
        results = run_pipeline(cfg)
    return cfg, results


def test_late_fusion_merges_the_single_modality_detectors_boxes(stubbed_run):
    _, results = stubbed_run
    rows = {r["name"]: r for r in results["candidates"]}
    assert rows["late"]["error"] is None and rows["late"]["kind"] == "late"
    single = {n: rows[n]["detection"]["map50_deployed"]["mean"] for n in ("ir", "vis")}
    late = rows["late"]["detection"]["map50_deployed"]["mean"]
    assert max(single.values()) < 0.8 and late > 0.95  # each finds half the images' boxes, merged: all of them
    runs = rows["late"]["detection_runs"]
    assert [r["seed"] for r in runs] == SEEDS
    assert all(Path(r["deployed_predictions_path"]).is_file() for r in runs)
    assert sorted(runs[0]["merged"]) == ["ir", "vis"]


def test_early_fusion_trains_on_the_modalities_as_channels(stubbed_run):
    cfg, results = stubbed_run
    stack = next(r for r in results["candidates"] if r["name"] == "stack")
    assert stack["error"] is None and stack["fusion"] is None and stack["fused_dir"] is None
    exported = stack_export(cfg.out)
    assert exported.channels == ("ir", "vis.B", "vis.G", "vis.R")


def test_report_says_early_and_late_fusion_have_no_fused_image_and_compares_them(stubbed_run):
    cfg, results = stubbed_run
    md = (cfg.out / "results.md").read_text()
    stack_line = next(line for line in md.splitlines() if line.startswith("|") and "| stack |" in line)
    assert "n/a (no fused image)" in stack_line
    comparison = results["bootstrap"]["protocols"]["deployed"]["image_vs_detector_fusion"]
    assert comparison["image"] == "max" and comparison["detector"] == "late"
    assert "detector-side fusion `late`" in md


@pytest.fixture(scope="module")
def three_band_folder(tmp_path_factory) -> Path:
    """A folder dataset (``--dataset folder``) with ir/, vis/, nir/ and VOC labels/, from the synthetic
    generator's opt-in near-infrared band: 6 scenes x 2 frames of 80x64, scenes.csv keeping each scene whole."""
    import shutil

    from data.synthetic import generate_synthetic_m3fd

    src = generate_synthetic_m3fd(tmp_path_factory.mktemp("nir") / "m3fd", num_scenes=6, frames_per_scene=2,
                                  size=(80, 64), nir=True)
    root = tmp_path_factory.mktemp("folder") / "three_band"
    for modality, folder in (("ir", "Ir"), ("vis", "Vis"), ("nir", "Nir"), ("labels", "Annotation")):
        shutil.copytree(src / folder, root / modality)
    ids = sorted(p.stem for p in (root / "ir").iterdir())
    (root / "scenes.csv").write_text("".join(f"{i},scene{k // 2}\n" for k, i in enumerate(ids)))
    return root


def test_a_three_band_folder_dataset_flows_through_rules_metrics_and_both_detector_side_fusions(
        tmp_path, three_band_folder):
    from fusion.weights import RELEASED_CHECKPOINT

    cfg = PipelineConfig(out=tmp_path / "out", data=three_band_folder, dataset="folder",
                         dataset_options=["modalities=ir,vis,nir", "colour=vis"], preset="tiny",
                         baselines=["max", "mean"], seeds=SEEDS, early_fusion=True, late_fusion=True,
                         train_dae_fuse=False, progress=False,
                         plugins=[["release2=dae_fuse", f"checkpoint={RELEASED_CHECKPOINT}"]])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detect_stage, "detect_job", stub_detect_job)
        results = run_pipeline(cfg)
    rows = {r["name"]: r for r in results["candidates"]}
    assert results["data"]["modalities"] == ["ir", "vis", "nir"]
    assert all(rows[n]["error"] is None for n in rows), {n: r["error"] for n, r in rows.items()}
    assert [n for n, r in rows.items() if r["single_modality"]] == ["ir", "vis", "nir"]  # one row per modality
    # The rules fuse all three bands; the metrics judge every fused image against all three.
    from fusion.metrics.image import metric_terms  # noqa: F401  (the per-source terms exist for N sources)

    assert rows["max"]["fusion"]["MI"] > 0 and rows["mean"]["fusion"]["VIF"] > 0
    assert rows["release2"]["fusion"] is not None  # the two-band release reads its own two bands of the three
    stack = stack_export(cfg.out)
    assert stack.channels == ("ir", "vis.B", "vis.G", "vis.R", "nir")
    assert sorted(rows["late"]["detection_runs"][0]["merged"]) == ["ir", "nir", "vis"]


def test_sudden_change_option_reports_each_fuser_around_the_change(tmp_path, synthetic_root):
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", baselines=["max"], seeds=[0],
                         train_dae_fuse=False, progress=False, bootstrap_resamples=0,
                         sudden_change="glare:flash:1:1:3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detect_stage, "detect_job", stub_detect_job)
        results = run_pipeline(cfg)
    sudden = results["sudden_change"]
    assert Path(sudden["plot"]) == cfg.out / "plots" / "sudden_change.png" and Path(sudden["plot"]).is_file()
    assert {s["fuser"] for s in sudden["summaries"]} == {"ir", "vis", "max"}
    assert all(s["change_frame"] == 1 for s in sudden["summaries"])
    assert "## Sudden change of visibility (`glare:flash:1:1:3`)" in (cfg.out / "results.md").read_text()


def test_a_bad_sudden_change_spec_is_refused_before_any_work(tmp_path):
    from pipelines.config import OptionsError

    with pytest.raises(OptionsError, match="--sudden-change: unknown corruption 'smog'"):
        run_pipeline(PipelineConfig(out=tmp_path / "out", preset="tiny", sudden_change="smog:ramp:1", progress=False))
    assert not (tmp_path / "out").exists()
