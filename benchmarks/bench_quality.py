"""DAE-Fuse fusion quality beside the mean/max fusers and CDDFuse's published row.

    .venv/bin/python benchmarks/bench_quality.py --medical [--json OUT.json]    # the released model (default)
    .venv/bin/python benchmarks/bench_quality.py --checkpoint runs/x/best.pt --medical   # score a trained model
    .venv/bin/python benchmarks/bench_quality.py --train [--minutes 15] [--out /tmp/bench_quality]

Sets: TNO (25), RoadScene test (50), MSRS (8), the shared M3FD sample's test split, and with ``--medical``
MRI-CT, MRI-PET, MRI-SPECT; the nine metrics (the field's eight plus AG) per set and method; ``--json`` writes
them with the checkpoint's hash, the versions and the command, for the model card.

With ``--train``:
it trains on the train split of the shared M3FD sample (22 real 1024x768 pairs; validation on its val split) for
about ``--minutes`` of wall time: the ``quick`` preset with the epochs sized to the budget (one third
reconstruction, two thirds fusion, as CDDFuse's 40/80 epochs) from a short timing of real steps. Then it fuses the
shared TNO (25) and RoadScene (50) sets (and, with ``--medical``, MRI-CT, MRI-PET, MRI-SPECT, applying the same
infrared-visible model as CDDFuse's "IVF" row does) at full resolution, scores the written PNGs with
``fusion.metrics.image.evaluate_folders`` (the reference evaluator's conventions) and prints EN, SD, SF, MI, SCD, VIF,
Qabf, SSIM per set for DAE-Fuse, ``mean``, ``max`` and CDDFuse's row from ``../shared/data/metric_reference.md``.
Issue 3's target: beat ``mean`` on Qabf and VIF. Prints figures only, asserts nothing.

Medical roles: CT plays "ir" and MRI "vis" (CDDFuse's test_MIF.py). For PET and SPECT, which are colour, MRI plays
"ir" and PET/SPECT "vis" so that the written image keeps their chroma (fusers restore the *visible* chroma); the
eight metrics are symmetric in the two sources, so the figures are comparable either way.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
import time
from pathlib import Path

import torch

from data.io import atomic_write_json
from data.paired import find_pairs
from data.provenance import package_versions
from data.shared import SHARED_DATA
from fusion.fusers.catalog import create_fuser
from fusion.fusers.fuse import fuse_folder, load_fuser_checkpoint
from fusion.metrics.image import FileTriple, evaluate_triples
from fusion.training.config import FusionTrainConfig, load_train_config, replace_config
from fusion.training.train import Trainer, train
from fusion.weights import RELEASED_CHECKPOINT

COLUMNS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")  # the field's tables
SHOWN = COLUMNS + ("AG",)
# set name -> (folder under fusion_benchmarks, "ir" subfolder, "vis" subfolder, heading in metric_reference.md,
# label of the CDDFuse row to print: the infrared-visible-trained model in every case)
IVF_SETS = {"TNO": ("TNO", "ir", "vi", "### TNO", "**CDDFuse** [T1]"),
            "RoadScene": ("RoadScene", "ir", "vi", "### RoadScene", "**CDDFuse** [T1]"),
            # 8 of the 361 MSRS test pairs: the published row is over the full set, shown for scale only
            "MSRS": ("MSRS", "ir", "vi", "### MSRS", "**CDDFuse**")}
MEDICAL_SETS = {"MRI-CT": ("MRI_CT", "CT", "MRI", "### MRI-CT", "**CDDFuse** [T5]"),
                "MRI-PET": ("MRI_PET", "MRI", "PET", "### MRI-PET", "**CDDFuse** [T5]"),
                "MRI-SPECT": ("MRI_SPECT", "MRI", "SPECT", "### MRI-SPECT", "**CDDFuse** [T5]")}


def published_row(reference: Path, heading: str, label: str) -> dict[str, float] | None:
    """A method's row (EN .. SSIM) under ``heading`` in metric_reference.md, or None when absent."""
    if not reference.is_file():
        return None
    text = reference.read_text()
    start = text.find(heading + " ")
    if start < 0:
        return None
    for line in text[start:].splitlines()[1:]:
        if line.startswith("### "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return dict(zip(COLUMNS, (float(c) for c in cells[1:9])))
    return None


def budget_config(base: FusionTrainConfig, data: Path, minutes: float, out: Path) -> FusionTrainConfig:
    """``base`` with its phases sized so that training takes about ``minutes``, from timed real steps."""
    probe = Trainer(base, data, out / "probe", progress=False)
    batch = next(iter(probe.loader))
    step_s = []
    for phase in ("recon", "fuse"):
        probe.train_step(batch, phase)  # warm-up
        t = time.perf_counter()
        for _ in range(2):
            probe.train_step(batch, phase)
        step_s.append((time.perf_counter() - t) / 2)
    t = time.perf_counter()
    probe.validate()
    epoch_s = len(probe.loader) * sum(step_s) / 2 + (time.perf_counter() - t) + 1.0  # + checkpoint writes
    epochs = max(3, int(minutes * 60 / epoch_s))
    recon = max(1, round(epochs / 3))
    print(f"timing: {sum(step_s) / 2:.2f} s per step, {len(probe.loader)} steps and ~{epoch_s:.0f} s per epoch -> "
          f"{recon} reconstruction + {epochs - recon} fusion epochs")
    return replace_config(
        base,
        f"phases=[{{name: recon, epochs: {recon}}}, {{name: fuse, epochs: {epochs - recon}}}]",
        f"optim.lr_step={max(1, math.ceil(epochs / 4))}",  # halve the rate about three times over the run
    )


def score(fuser, pairs, out: Path) -> tuple[dict[str, float], float]:
    """Fuse ``pairs`` with ``fuser`` into ``out`` and return (mean metrics, mean seconds per pair)."""
    report = fuse_folder(fuser, pairs, out, progress=False)
    triples = [FileTriple(p.stem, out / f"{p.stem}.png", p.ir, p.vis) for p in pairs]
    _, mean = evaluate_triples(triples, workers=2)
    return mean, report["total_seconds"] / max(1, len(report["written"]))


def evaluation_sets(medical: bool) -> dict[str, tuple[list, str | None, str | None]]:
    """set name -> (pairs, heading in metric_reference.md, label of CDDFuse's row); sets absent here are skipped."""
    from data.m3fd import load_m3fd

    sets = {}
    for name, (folder, ir_sub, vis_sub, heading, label) in {**IVF_SETS, **(MEDICAL_SETS if medical else {})}.items():
        root = SHARED_DATA / "fusion_benchmarks" / folder
        if (root / ir_sub).is_dir():
            sets[name] = (find_pairs(root / ir_sub, root / vis_sub), heading, label)
    if (SHARED_DATA / "m3fd_sample").is_dir():
        sets["M3FD test"] = (load_m3fd(SHARED_DATA / "m3fd_sample").pairs("test"), None, None)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "m3fd_sample", help="training data (M3FD layout)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-time budget")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_quality"))
    parser.add_argument("--checkpoint", type=Path, help="score this checkpoint (default: the released model)")
    parser.add_argument("--train", action="store_true", help="train a model for --minutes first and score it")
    parser.add_argument("--json", type=Path, help="also write the table, checkpoint hash and versions as JSON")
    parser.add_argument("--medical", action="store_true", help="also score MRI-CT, MRI-PET, MRI-SPECT")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); on a loaded shared "
                        "machine 1 thread trains faster than 2, whose OpenMP barriers wait for a descheduled core")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to the quick preset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")

    checkpoint = args.checkpoint or (None if args.train else RELEASED_CHECKPOINT)
    if checkpoint is None:
        base = load_train_config(preset="quick", overrides=["data.crops_per_image=8", *args.overrides])
        cfg = budget_config(base, args.data, args.minutes, args.out)
        t = time.perf_counter()
        result = train(cfg, args.data, args.out / "run", device=args.device, progress=False)
        checkpoint = result.best_checkpoint or result.last_checkpoint
        print(f"trained {cfg.total_epochs} epochs in {(time.perf_counter() - t) / 60:.1f} min; "
              f"M3FD val: {', '.join(f'{k} {v:.3f}' for k, v in result.val_metrics.items())}")
    print(f"scoring {checkpoint}")

    fusers = {"DAE-Fuse": load_fuser_checkpoint(checkpoint, args.device), "mean": create_fuser("mean"),
              "max": create_fuser("max")}
    header = f"{'set':10s} {'method':18s} " + " ".join(f"{c:>7s}" for c in SHOWN) + "   s/pair"
    print(header)
    print("-" * len(header))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, (pairs, heading, label) in evaluation_sets(args.medical).items():
        table[set_name] = {}
        for method, fuser in fusers.items():
            mean, seconds = score(fuser, pairs, args.out / "fused" / set_name.replace(" ", "_") / method)
            table[set_name][method] = {**mean, "seconds_per_pair": seconds, "n_pairs": len(pairs)}
            print(f"{set_name:10s} {method:18s} " + " ".join(f"{mean[c]:7.3f}" for c in SHOWN) + f"   {seconds:.3f}")
        row = published_row(SHARED_DATA / "metric_reference.md", heading, label) if heading else None
        if row:
            table[set_name]["CDDFuse (paper)"] = row
            print(f"{set_name:10s} {'CDDFuse (paper)':18s} " + " ".join(f"{row[c]:7.2f}" for c in COLUMNS) + "       -")
    if args.json:
        atomic_write_json(args.json, {
            "checkpoint": str(checkpoint), "checkpoint_sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "torch_threads": torch.get_num_threads(),
            "versions": package_versions(), "sets": table})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
