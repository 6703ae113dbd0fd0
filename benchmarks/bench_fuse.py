"""DAE-Fuse cost: parameter counts and time per 1024x768 pair (CPU with 1 and 2 threads; CUDA fp32 and bf16).

Times the inference copy that fusing runs (``fusion.inference.for_inference``) and, on CPU, the model as trained
beside it as the same-run baseline.

    .venv/bin/python benchmarks/bench_fuse.py [--variant dae_fuse_s] [--checkpoint CKPT] [--repeats 3]

Issue 3's budget: a 1024x768 (M3FD) pair in at most 2 s on a 2-core CPU and at most 70 ms bf16 on an H100/H200
(CDDFuse, measured on the same machines: ~5 min on the CPU, 139 ms bf16 on an H200). Inputs are random (the cost
does not depend on content). The figure to quote is the minimum over repeats (the least disturbed run; the
machine is shared); the median is printed beside it. Prints figures only, asserts nothing.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch

from fusion.dae_fuse import build_discriminators, count_parameters, create_model
from fusion.fuse import load_fuser_checkpoint
from fusion.inference import for_inference

WIDTH, HEIGHT = 1024, 768


def _time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    fn()  # warm-up (allocator, kernel selection)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="dae_fuse_s", help="registered variant (ignored with --checkpoint)")
    parser.add_argument("--checkpoint", help="time a trained checkpoint instead of a fresh variant")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts to time")
    args = parser.parse_args()

    model = load_fuser_checkpoint(args.checkpoint).model if args.checkpoint else create_model(args.variant)
    model.eval()
    d = build_discriminators()
    print(f"model {args.checkpoint or args.variant}: {model.cfg}")
    print(f"parameters: generator {count_parameters(model):,}; discriminators {count_parameters(d):,} "
          f"(2 x {count_parameters(d['ir']):,}, training only)")
    for part in ("encoder.shallow", "encoder.cnn", "encoder.vit", "encoder.embed", "fusion", "skip_fusion", "decoder"):
        print(f"  {part:16s} {count_parameters(model.get_submodule(part)):>10,}")

    ir, vis = torch.rand(1, 1, HEIGHT, WIDTH), torch.rand(1, 1, HEIGHT, WIDTH)
    previous = torch.get_num_threads()
    # what fusing runs (fusion.inference: BN folded, channels-last), and the model as trained as the same-run baseline
    runs = {"inference copy": for_inference(model, "cpu"), "as trained": model}
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for label, net in runs.items():
                best, median = _time(lambda net=net: net(ir, vis), args.repeats)
                print(f"CPU {threads} thread(s), {label}: {best:.3f} s per {WIDTH}x{HEIGHT} pair "
                      f"(median {median:.3f} s)")
    torch.set_num_threads(previous)
    # ru_maxrss is in KiB on Linux: the process peak, libraries and the model included.
    print(f"CPU peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")

    if not torch.cuda.is_available():
        print("CUDA: not available here")
        return
    dev = torch.device("cuda")
    model = for_inference(model, dev)
    ir, vis = ir.to(dev), vis.to(dev)
    print(f"CUDA: {torch.cuda.get_device_name(dev)}")
    with torch.inference_mode():
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                best, median = _time(lambda: model(ir, vis), max(args.repeats, 10), torch.cuda.synchronize)
            peak = torch.cuda.max_memory_allocated(dev) / 2**30
            print(f"CUDA {name}: {best * 1000:.1f} ms per pair (median {median * 1000:.1f} ms), peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
