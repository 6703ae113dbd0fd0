"""Time the fusion metrics on 1024x768 triples: seconds per triple on one core, per metric, 2-core throughput, and
the cost of a third source (the N-source metrics, ``evaluate_sources``).

    python benchmarks/bench_metrics.py [--repeats 7] [--batch 8] [--synthetic]

Uses the 1024x768 cases of ``../shared/data/metric_reference.json`` when the shared data is present (and prints
the reference evaluator's own timing stored there), otherwise a synthetic 1024x768 triple. Prints figures only;
timings depend on the machine and its load, so nothing is asserted. Minimum over repeats is the figure to quote
(the least disturbed run); the median is printed beside it.
"""
from __future__ import annotations

import os

# One core: pin the BLAS/OpenMP pools before NumPy loads them (OpenCV is pinned below).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data.io import read_gray_reference  # noqa: E402
from data.shared import SHARED_DATA  # noqa: E402
from fusion.metrics.image import METRICS, FusionTriple, evaluate, evaluate_many, evaluate_sources  # noqa: E402

SIZE_HW = (768, 1024)

Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


def synthetic_triple(seed: int = 0) -> Triple:
    """A deterministic 1024x768 triple with smooth structure, edges and noise (uint8), fused = pixel mean."""
    rng = np.random.default_rng(seed)
    h, w = SIZE_HW
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ir = 90 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + rng.normal(0, 6, (h, w))
    ir[200:400, 300:380] += 80  # a warm object
    vis = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 3) + 0.15 * xx
    vis = np.clip(vis, 0, 255)
    ir = np.clip(ir, 0, 255)
    fused = np.round((ir + vis) / 2)
    return fused.astype(np.uint8), np.round(ir).astype(np.uint8), np.round(vis).astype(np.uint8)


def load_triples() -> tuple[list[tuple[str, Triple]], dict | None]:
    """The 1024x768 reference cases (read the reference's way) and the reference timing, or one synthetic triple."""
    reference = SHARED_DATA / "metric_reference.json"
    if reference.is_file():
        doc = json.loads(reference.read_text())
        cases = [c for c in doc["cases"] if tuple(c["shape_hw"]) == SIZE_HW]
        if cases:
            triples = [(c["name"], tuple(read_gray_reference(SHARED_DATA / c[k]) for k in ("fused", "ir", "vis")))
                       for c in cases]
            return triples, doc.get("timing_s")
    return [("synthetic_1024x768", synthetic_triple())], None


def timings(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(min wall seconds, median wall seconds, min CPU seconds of this thread) over ``repeats`` calls.

    The CPU time leaves out waiting for a core on a busy machine (not the slow-down from shared caches)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return min(wall), statistics.median(wall), min(cpu)


def per_metric(triple: Triple, repeats: int) -> dict[str, tuple[float, float]]:
    """For each metric: (seconds in evaluation order, shared per-image work charged to the first metric needing it;
    seconds standalone on a fresh triple, all its own per-image work included). Minimum over repeats."""
    in_order = {name: float("inf") for name in METRICS}
    standalone = {name: float("inf") for name in METRICS}
    for _ in range(repeats):
        prepared = FusionTriple.of(*triple)
        for name in METRICS:
            start = time.perf_counter()
            METRICS.get(name)(prepared)
            in_order[name] = min(in_order[name], time.perf_counter() - start)
        for name in METRICS:
            fresh = FusionTriple.of(*triple)
            start = time.perf_counter()
            METRICS.get(name)(fresh)
            standalone[name] = min(standalone[name], time.perf_counter() - start)
    return {name: (in_order[name], standalone[name]) for name in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (default 7)")
    parser.add_argument("--batch", type=int, default=8, help="triples in the throughput batch (default 8)")
    parser.add_argument("--synthetic", action="store_true", help="use a synthetic triple even if shared data exists")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    triples, reference_timing = ([("synthetic_1024x768", synthetic_triple())], None) if args.synthetic \
        else load_triples()
    print(f"fusion metrics benchmark: {len(triples)} triple(s) of {SIZE_HW[1]}x{SIZE_HW[0]}, one core "
          f"(cv2 threads {cv2.getNumThreads()}, OMP/BLAS threads {os.environ['OMP_NUM_THREADS']}), "
          f"{args.repeats} repeats, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    evaluate(*triples[0][1])  # warm-up: one-off tables and allocator

    print("\nseconds per triple (evaluate on arrays: input conversion and all nine metrics)")
    bests, cpus = [], []
    for name, triple in triples:
        best, median, cpu = timings(lambda t=triple: evaluate(*t), args.repeats)
        bests.append(best)
        cpus.append(cpu)
        print(f"  {name:<28} min {best:.4f} s   median {median:.4f} s   CPU min {cpu:.4f} s")
    print(f"  {'mean of the minima':<28}     {np.mean(bests):.4f} s{'':<20}         {np.mean(cpus):.4f} s")

    print(f"\nper metric on {triples[0][0]} (seconds, min over repeats)")
    print(f"  {'metric':<6} {'in order':>10} {'standalone':>11}   reference")
    rows = per_metric(triples[0][1], args.repeats)
    for name, (in_order, alone) in rows.items():
        ref = (reference_timing or {}).get(name, {}).get("min_s")
        print(f"  {name:<6} {in_order:>10.4f} {alone:>11.4f}   {'' if ref is None else f'{ref:.4f}'}")
    total_ref = (reference_timing or {}).get("total_metrics_min_s")
    print(f"  {'sum':<6} {sum(v[0] for v in rows.values()):>10.4f}"
          + ("" if total_ref is None else f"{'':>12}   {total_ref:.4f} (reference evaluator, from the JSON)"))

    # A third source: a deterministic blend of the two (a stand-in band with its own structure); the figure is the
    # cost per added source, which depends on the size, not on the content.
    fused, ir, vis = triples[0][1]
    third = np.round(cv2.GaussianBlur(0.5 * ir.astype(np.float32) + 0.5 * np.flipud(vis), (0, 0), 1.5))
    two, _, _ = timings(lambda: evaluate_sources(fused, {"ir": ir, "vis": vis}), args.repeats)
    three, _, _ = timings(lambda: evaluate_sources(fused, {"ir": ir, "vis": vis, "third": third}), args.repeats)
    print(f"\nsources per fused image (evaluate_sources, min over repeats): 2 -> {two:.4f} s, 3 -> {three:.4f} s "
          f"(+{three - two:.4f} s per added source)")

    batch = [triples[i % len(triples)][1] for i in range(args.batch)]
    print(f"\nbatch throughput, {len(batch)} triples (evaluate_many)")
    for workers in (1, 2):
        best, median, _ = timings(lambda w=workers: evaluate_many(batch, workers=w), max(1, args.repeats // 2))
        print(f"  workers={workers}: {len(batch) / best:.2f} triples/s (min {best / len(batch):.4f} s per triple, "
              f"median {median / len(batch):.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
