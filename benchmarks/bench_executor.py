"""What an executor costs: the tiny pipeline's detector stage run locally, in a process pool and on a local Dask
cluster of 1 and 2 workers, plus the bare overhead of a no-op job on each executor.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_executor.py --out /tmp/bench_executor

Every configuration runs the same command on the built-in synthetic scenes (``tiny`` preset, candidates ``ir`` and
``vis``, ``--seeds`` detector seeds: 2 x seeds detector jobs) in a fresh ``--out``, so nothing is reused; the
detector stage (``run_detector_jobs``) is timed on its own, the rest of the run being the same for all. The no-op
jobs measure what an executor adds to each task (process start, scheduling, the Dask job's child process).
Prints the figures; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from pipelines import engine
from pipelines.executors import EXECUTORS, ExecutorConfig, Job
from pipelines.engine import PipelineConfig, run_pipeline

# (label, executor, jobs): jobs at once for pool, worker processes for the local Dask cluster.
CONFIGURATIONS = [("local", "local", 1), ("pool, 2 processes", "pool", 2), ("dask, 1 worker", "dask", 1),
                  ("dask, 2 workers", "dask", 2)]


def no_op(arg: int) -> int:
    return arg


def job_overhead(name: str, jobs: int, n: int) -> tuple[float, float]:
    """Seconds to start the executor, and seconds per no-op job once started."""
    started = time.perf_counter()
    with EXECUTORS.get(name)(ExecutorConfig(name=name, jobs=jobs)) as executor:
        ready = time.perf_counter()
        outcomes = list(executor.run([Job(no_op, i) for i in range(n)]))
        ran = time.perf_counter()
    assert sorted(o.result for o in outcomes) == list(range(n))
    return ready - started, (ran - ready) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_executor"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--no-op-jobs", type=int, default=8)
    args = parser.parse_args()

    detector_stage: dict[str, float] = {}
    plain = engine.run_detector_jobs

    def timed(pending, executor, store):  # the detector stage alone: fusing and the report are the same for all
        started = time.perf_counter()
        plain(pending, executor, store)
        detector_stage["s"] = time.perf_counter() - started

    engine.run_detector_jobs = timed
    rows = []
    for label, name, jobs in CONFIGURATIONS:
        out = args.out / name / str(jobs)
        shutil.rmtree(out, ignore_errors=True)
        cfg = PipelineConfig(out=out, preset="tiny", baselines=[], seeds=args.seeds, jobs=jobs, executor=name,
                             train_dae_fuse=False, progress=False, bootstrap_resamples=0)
        started = time.perf_counter()
        results = run_pipeline(cfg)
        wall = time.perf_counter() - started
        failed = [r["name"] for r in results["candidates"] if r["error"]]
        runs = sum(len(r["detection_runs"]) for r in results["candidates"])
        start_s, per_job_s = job_overhead(name, jobs, args.no_op_jobs)
        rows.append((label, wall, detector_stage["s"], runs, start_s, per_job_s, failed))
    engine.run_detector_jobs = plain

    print(f"\ntiny pipeline, candidates ir and vis, seeds {args.seeds}, {os.cpu_count()} CPUs "
          f"({args.no_op_jobs} no-op jobs per executor)")
    print("| executor | run wall s | detector stage s | detector jobs | s per job (stage) | executor start s "
          "| s per no-op job | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for label, wall, stage, runs, start_s, per_job_s, failed in rows:
        print(f"| {label} | {wall:.1f} | {stage:.1f} | {runs} | {stage / max(runs, 1):.1f} | {start_s:.2f} "
              f"| {per_job_s:.3f} | {', '.join(failed) or '-'} |")


if __name__ == "__main__":
    main()
