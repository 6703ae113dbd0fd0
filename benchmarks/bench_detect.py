"""Wall time and mAP@50 of a detection preset on the shared M3FD sample, IR-only versus visible-only.

    .venv/bin/python benchmarks/bench_detect.py --preset quick --out /tmp/bench_detect

Trains on ``meta/train.txt`` and evaluates on ``meta/val.txt`` of ``../shared/data/m3fd_sample`` (22 / 6 pairs),
once with ``Ir/*.png`` and once with ``Vis/*.jpg`` as the detector input. The M3FD sample is far too small to
rank inputs; this measures cost and checks the path end to end on real data.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from data.m3fd import M3FDDataset, load_m3fd
from data.types import CLASS_NAMES
from detection import export_yolo_dataset, load_preset, train_and_evaluate

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "m3fd_sample"
# Which image of a pair the detector sees.
MODALITIES = {"ir": M3FDDataset.ir_path, "vis": M3FDDataset.vis_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_detect"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    m3fd = load_m3fd(args.root)  # the sample's meta/train.txt and meta/val.txt give the split
    splits = {split: m3fd.splits[split] for split in ("train", "val")}
    ids = [i for split_ids in splits.values() for i in split_ids]
    annotations = {i: m3fd.annotation(i) for i in ids}
    preset = load_preset(args.preset)
    rows = []
    for modality, path_of in MODALITIES.items():
        images = {i: path_of(m3fd, i) for i in ids}
        start = time.perf_counter()
        dataset = export_yolo_dataset(images, annotations, splits, args.out / f"yolo_{modality}")
        export_s = time.perf_counter() - start
        cpu_start = time.process_time()
        result = train_and_evaluate(dataset, **preset.train_kwargs(), seed=args.seed, out_dir=args.out / "runs",
                                    name=f"{args.preset}_{modality}_s{args.seed}")
        rows.append({"input": modality, "export_s": round(export_s, 2),
                     "cpu_s": round(time.process_time() - cpu_start, 1), **result.to_dict()})

    print(f"\npreset {args.preset}: {preset.model}, imgsz {preset.imgsz}, {preset.epochs} epochs, "
          f"batch {preset.batch}; train {len(splits['train'])} / val {len(splits['val'])} images")
    classes = " ".join(f"{c[:6]:>7}" for c in CLASS_NAMES)
    print(f"{'input':6} {'wall s':>7} {'cpu s':>7} {'mAP50':>7} {'coco50':>7} {'mAP50-95':>9}  {classes}")
    for r in rows:
        ap = " ".join(f"{'-' if r['ap50'][c] is None else format(r['ap50'][c], '.3f'):>7}" for c in CLASS_NAMES)
        print(f"{r['input']:6} {r['wall_time_s']:7.1f} {r['cpu_s']:7.1f} {r['map50']:7.3f} {r['coco_map50']:7.3f} "
              f"{r['map50_95']:9.3f}  {ap}")
    (args.out / f"bench_{args.preset}_s{args.seed}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
