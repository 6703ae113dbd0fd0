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
from pipelines.engine import PipelineConfig, run_pipeline
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
    return {"seed": job["seed"], "map50": score, "map50_95": score, "map50_deployed": score,
            "map50_95_deployed": score, "ap50": {}, "ap50_deployed": {}, "predictions_path": str(paths["field"]),
            "deployed_predictions_path": str(paths["deployed"]), "coco_gt": job["coco_gt"],
            "eval_split": job["eval_split"], "n_images": 0, "n_boxes": {}, "run_dir": str(run_dir),
            "key": job["key"], "scenarios": {}, "dataset": job["dataset"]}


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
    _, results = stubbed_run
    stack = next(r for r in results["candidates"] if r["name"] == "stack")
    assert stack["error"] is None and stack["fusion"] is None and stack["fused_dir"] is None
    exported = YoloDataset.load(Path(stack["detection_runs"][0]["dataset"]))
    assert exported.channels == ("ir", "vis.B", "vis.G", "vis.R")


def test_report_says_early_and_late_fusion_have_no_fused_image_and_compares_them(stubbed_run):
    cfg, results = stubbed_run
    md = (cfg.out / "results.md").read_text()
    stack_line = next(line for line in md.splitlines() if line.startswith("|") and "| stack |" in line)
    assert "n/a (no fused image)" in stack_line
    comparison = results["bootstrap"]["protocols"]["deployed"]["image_vs_detector_fusion"]
    assert comparison["image"] == "max" and comparison["detector"] == "late"
    assert "detector-side fusion `late`" in md
