#!/usr/bin/env python
"""Compare fusion checkpoints, other methods and simple baselines by the mAP@50 they give a detector on M3FD.

    python pipelines/run_m3fd.py                         # quick preset on the built-in synthetic scenes
    python pipelines/run_m3fd.py --data /data/M3FD --checkpoints a.pt b.pt --preset standard --device 0
    python pipelines/run_m3fd.py --data /data/M3FD --fused tardal=/data/TarDAL_M3FD --fuser cddfuse=my.cdd:make w=x.pth

A thin wrapper over ``pipelines.engine.run_pipeline``; see ``--help`` for the options.

Exit status: 0 when every candidate has its detector result; 1 when any candidate failed (the results are still
written, the failed ones are listed on stderr); 2 when the run is refused before any work: bad options or data, or
another run holding the same --out (one run per --out at a time).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from detection.protocols import PROTOCOLS  # noqa: E402
from pipelines.config import OptionsError, PipelineConfig, pipeline_preset_names  # noqa: E402
from pipelines.engine import run_pipeline  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line, built from ``PipelineConfig``'s fields: each option is spelled once, beside its field."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = {"preset": pipeline_preset_names(), "protocol": PROTOCOLS.names()}
    for f in dataclasses.fields(PipelineConfig):
        cli = dict(f.metadata.get("cli") or {})
        if not cli:
            continue
        flag = cli.pop("flag") or "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name in choices:
            cli["choices"] = choices[f.name]
        p.add_argument(flag, dest=f.name, default=default, **cli)
    return p


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    return PipelineConfig(**vars(build_parser().parse_args(argv)))


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
