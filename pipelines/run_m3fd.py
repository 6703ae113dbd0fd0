#!/usr/bin/env python
"""Compare fusion checkpoints, other methods and simple baselines by the mAP@50 they give a detector on M3FD.

    python pipelines/run_m3fd.py                         # quick preset on the built-in synthetic scenes
    python pipelines/run_m3fd.py --data /data/M3FD --checkpoints a.pt b.pt --preset standard --device 0
    python pipelines/run_m3fd.py --data /data/M3FD --fused tardal=/data/TarDAL_M3FD --fuser cddfuse=my.cdd:make w=x.pth

A thin wrapper over ``pipelines.m3fd.run_pipeline``; see ``--help`` for the options.

Exit status: 0 when every candidate has its detector result; 1 when any candidate failed (the results are still
written, the failed ones are listed on stderr); 2 when the run is refused before any work: bad options or data, or
another run holding the same --out (one run per --out at a time).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Before torch is imported anywhere: idle OpenMP threads sleep instead of spinning. On a shared CPU, spinning
# threads were seen to make one yolov8n step 45x slower (18 s instead of 0.4 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.errors import DatasetError  # noqa: E402
from data.lock import FolderLocked  # noqa: E402
from detection.protocols import DEFAULT_PROTOCOL, PROTOCOLS  # noqa: E402
from fusion.baselines import BASELINE_NAMES  # noqa: E402
from pipelines.executors import EXECUTORS  # noqa: E402
from pipelines.m3fd import OptionsError, PipelineConfig, run_pipeline  # noqa: E402


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="M3FD root (Ir/, Vis/, Annotation/, meta/); default $M3FD_ROOT, "
                                             "else built-in synthetic scenes")
    p.add_argument("--checkpoints", type=Path, nargs="*", default=[], help="DAE-Fuse checkpoints to compare")
    p.add_argument("--train-dae-fuse", action="store_true", default=None,
                   help="also train a DAE-Fuse on the training split here, with the preset's short schedule")
    p.add_argument("--no-released-dae-fuse", action="store_false", default=None, dest="released_dae_fuse",
                   help="leave out the released DAE-Fuse (fusion/weights), which every preset but tiny includes")
    p.add_argument("--baselines", nargs="*", default=None, choices=list(BASELINE_NAMES),
                   help="simple fusers to include (default: the preset's; quick: ir vis max, the others every rule). "
                        "IR-only and visible-only are always included: gains are measured against the better of them")
    p.add_argument("--fused", action="append", default=[], metavar="NAME=DIR",
                   help="another method's fused images as a candidate: a folder with one image per M3FD id "
                        "(00001.png, any format, grey or colour) covering the train, selection and evaluation "
                        "splits; repeatable")
    p.add_argument("--fuser", action="append", nargs="+", default=[], dest="plugins",
                   metavar=("NAME=package.module:factory", "key=value"),
                   help="a plug-in fuser as a candidate: a factory returning a fusion.fusers.Fuser (or the name of an "
                        "installed 'fusebench.fusers' entry point), called with the key=value arguments; repeatable")
    p.add_argument("--preset", default="quick", choices=["quick", "standard", "paper", "tiny"])
    p.add_argument("--seeds", type=int, nargs="+", help="detector seeds (default: the preset's)")
    p.add_argument("--epochs", type=int, help="override the detector preset's epochs")
    p.add_argument("--imgsz", type=int, help="override the detector preset's image size")
    p.add_argument("--batch", type=int, help="override the detector preset's batch size")
    p.add_argument("--model", help="detector model yaml (default yolov8n.yaml, built from scratch)")
    p.add_argument("--weights", type=Path, help="local detector weights .pt to start from (nothing is downloaded)")
    p.add_argument("--device", default="cpu", help="cpu, 0, or 0,1,... (Ultralytics DDP for several GPUs)")
    p.add_argument("--jobs", type=int, help="detector runs at once (default: the preset's); with --executor dask and "
                                            "no --scheduler, the local cluster's worker processes")
    p.add_argument("--executor", choices=EXECUTORS.names(),
                   help="where the detector runs go: local (in this process, one at a time), pool (--jobs local "
                        "processes) or dask (a Dask cluster); default local for --jobs 1, else pool. Fusing, "
                        "scoring and robustness run in this process whichever is chosen")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="--executor dask: join this running scheduler (dask-jobqueue, dask-kubernetes, 'dask "
                        "scheduler'); its workers need this repository installed and --out on a shared filesystem. "
                        "Default: a local cluster of --jobs worker processes on 127.0.0.1, closed at the end")
    p.add_argument("--gpus-per-job", type=float, metavar="N",
                   help="--executor dask: each detector run holds N of a worker's 'GPU' resource (start workers "
                        "with --resources GPU=1), so a worker trains one at a time on its GPU")
    p.add_argument("--train-split", default="train", help="M3FD split the detectors learn from (default train)")
    p.add_argument("--select-split", default="val",
                   help="split validated every epoch to keep the best detector checkpoint (default val)")
    p.add_argument("--eval-split", default="test",
                   help="split the kept detector and the fusion metrics are scored on (default test; naming the "
                        "--select-split here scores on the selection images, which the report flags as optimistic)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the scene-aware split when there are no lists")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS.names(),
                   help="how the ranking and the verdict score detectors: 'deployed' (default; one class per box, as "
                        "a deployed detector outputs) or 'field' (Ultralytics' multi-label validator, as papers "
                        "report); both are always in the tables")
    p.add_argument("--bootstrap", type=int, default=1000, dest="bootstrap_resamples",
                   help="paired bootstrap resamples of the evaluation images for the 95%% intervals (>= 1000; 0: none)")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--corruptions", type=lambda text: [t for t in text.split(",") if t], default=[],
                   metavar="NAME[,NAME...]",
                   help="robustness check: corrupt the evaluation split's sources (fog, low_light, glare, noise, "
                        "blur), fuse them with every candidate and score its trained detector again (no retraining)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3], help="corruption severities (1-3)")
    p.add_argument("--corruption-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/m3fd"))
    p.add_argument("--force", action="store_true",
                   help="redo everything: fusing, the DAE-Fuse trained here, exports, detector runs, robustness")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return PipelineConfig(out=a.out, data=a.data, checkpoints=a.checkpoints, baselines=a.baselines,
                          fused=a.fused, plugins=a.plugins, train_dae_fuse=a.train_dae_fuse,
                          released_dae_fuse=a.released_dae_fuse, preset=a.preset,
                          seeds=a.seeds, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, model=a.model,
                          weights=a.weights, device=a.device, jobs=a.jobs, executor=a.executor,
                          scheduler=a.scheduler, gpus_per_job=a.gpus_per_job, force=a.force,
                          train_split=a.train_split, select_split=a.select_split, eval_split=a.eval_split,
                          split_seed=a.split_seed, protocol=a.protocol, bootstrap_resamples=a.bootstrap_resamples,
                          bootstrap_seed=a.bootstrap_seed, corruptions=a.corruptions, severities=a.severities,
                          corruption_seed=a.corruption_seed, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    # The project's own progress notes (stages reused from the cache, resumed runs, training epochs) at INFO; the
    # libraries' chatter stays at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for package in ("pipelines", "data", "fusion", "detection"):
        logging.getLogger(package).setLevel(logging.INFO)
    try:
        results = run_pipeline(cfg)
    except (DatasetError, OptionsError, FolderLocked) as err:  # refused before any work: say why, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(cfg.out) / "results.md").resolve().read_text())
    print(f"results: {Path(cfg.out).resolve()}/results.{{json,csv,md}}, plots/, tb/ "
          f"(tensorboard --logdir {Path(cfg.out).resolve() / 'tb'})")
    return report_failures(results["candidates"])


def report_failures(candidates: list[dict]) -> int:
    """The exit status of a finished run: 1, with the failed candidates listed on stderr, when any failed, else 0.
    A scheduler or script only sees the status: a table with a failed row must not look like a clean run."""
    failed = [r for r in candidates if r["error"] or not r["detection"]]
    if not failed:
        return 0
    lines = "".join(f"\n  - {r['name']}: {r['error'] or 'no detector result'}" for r in failed)
    print(f"error: {len(failed)} of {len(candidates)} candidate(s) failed (their rows are in the results):{lines}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
