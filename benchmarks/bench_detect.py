"""Wall time and mAP@50 of a detection preset on a real sample: each modality alone, early and late fusion.

    .venv/bin/python benchmarks/bench_detect.py --preset quick --out /tmp/bench_detect
    .venv/bin/python benchmarks/bench_detect.py --dataset llvip --root ../shared/data/llvip_sample/LLVIP

Trains on the dataset's ``train`` split and evaluates on ``val`` (the M3FD sample's ``meta/train.txt`` and
``meta/val.txt``: 22 / 6 pairs), once per modality, once on the modalities stacked as one N-channel image
(early fusion, the colour modality as its three channels), and scores the single-modality detectors' boxes merged
per image (late fusion, WBF and NMS; no training). A sample is far too small to rank inputs; this measures cost
and checks each path end to end on real data.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from data.datasets import add_dataset_arguments, dataset_from_args
from detection import export_stacked, export_yolo_dataset, load_preset, score_late_fusion, train_and_evaluate

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "m3fd_sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_arguments(parser, root_flags=("--root",), root_required=False)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_detect"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.root = args.root or DEFAULT_ROOT

    dataset = dataset_from_args(args)
    splits = {split: dataset.splits[split] for split in ("train", "val")}
    ids = [i for split_ids in splits.values() for i in split_ids]
    annotations = {i: dataset.annotation(i) for i in ids}
    classes = dataset.class_names
    preset = load_preset(args.preset)
    rows, results = [], {}

    def train(name: str, export) -> None:
        start = time.perf_counter()
        yolo = export()
        export_s = time.perf_counter() - start
        cpu_start = time.process_time()
        result = train_and_evaluate(yolo, **preset.train_kwargs(), seed=args.seed, out_dir=args.out / "runs",
                                    name=f"{args.preset}_{name}_s{args.seed}")
        results[name] = (result, yolo)
        rows.append({"input": name, "export_s": round(export_s, 2), "cpu_s": round(time.process_time() - cpu_start, 1),
                     "map50_field": result.coco_map50, "map50_deployed": result.map50_deployed,
                     "ap50": result.ap50, **result.to_dict()})

    for modality in dataset.modalities:
        train(modality, lambda m=modality: export_yolo_dataset({i: dataset.path(i, m) for i in ids}, annotations,
                                                               splits, args.out / f"yolo_{m}", class_names=classes))
    train("stack", lambda: export_stacked(splits, {i: dataset.sources(i) for i in ids}, annotations, classes,
                                          args.out / "yolo_stack", colour=dataset.colour,
                                          modalities=dataset.modalities))
    singles = {m: results[m][0] for m in dataset.modalities}
    for method in ("wbf", "nms"):
        start = time.perf_counter()
        scores = score_late_fusion(singles, results[dataset.modalities[0]][1], args.out / "late", method=method)
        rows.append({"input": f"late-{method}", "export_s": 0.0, "cpu_s": round(time.perf_counter() - start, 1),
                     "wall_time_s": round(time.perf_counter() - start, 1),
                     "map50_field": scores["field"]["map50"], "map50_deployed": scores["deployed"]["map50"],
                     "ap50": scores["field"]["ap50"]})

    print(f"\n{dataset.name} ({'+'.join(dataset.modalities)}), preset {args.preset}: {preset.model}, imgsz "
          f"{preset.imgsz}, {preset.epochs} epochs, batch {preset.batch}; train {len(splits['train'])} / val "
          f"{len(splits['val'])} images; pycocotools mAP@50, AP@50 per class under the field protocol")
    header = " ".join(f"{c[:6]:>7}" for c in classes)
    print(f"{'input':9} {'wall s':>7} {'cpu s':>7} {'field':>7} {'deploy':>7}  {header}")

    def fmt(value) -> str:
        return f"{'-' if value is None else format(value, '.3f'):>7}"

    for r in rows:
        ap = " ".join(fmt(r["ap50"][c]) for c in classes)
        print(f"{r['input']:9} {r['wall_time_s']:7.1f} {r['cpu_s']:7.1f} {fmt(r['map50_field'])} "
              f"{fmt(r['map50_deployed'])}  {ap}")
    (args.out / f"bench_{dataset.name}_{args.preset}_s{args.seed}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
