"""DAE-Fuse cost: parameter counts and time per 1024x768 pair (CPU with 1 and 2 threads; CUDA fp32 and bf16).

Times the inference copy that fusing runs (``fusion.models.inference.for_inference``) and, on CPU, the model as trained
beside it as the same-run baseline. ``--modalities 2 3`` also times the same variant fusing 2 and 3 modalities
(a 1024x768 input set: ('ir', 'vis') against ('vis', 'nir', 'lwir')), interleaved in one run, with the two-band
model as the baseline (``--checkpoint3`` times a trained three-band checkpoint instead of a fresh one; the cost
does not depend on the weights).

    .venv/bin/python benchmarks/bench_fuse.py [--variant dae_fuse_s] [--checkpoint CKPT] [--repeats 3]
                                              [--modalities 2 3] [--checkpoint3 CKPT3]

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

from fusion.fusers.fuse import load_fuser_checkpoint
from fusion.models.dae_fuse import build_discriminators, count_parameters, create_model
from fusion.models.inference import for_inference

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
    parser.add_argument("--modalities", type=int, nargs="*", default=[],
                        help="also time N-modality models of the variant (e.g. 2 3); only these timings run")
    parser.add_argument("--checkpoint3", help="a trained three-band checkpoint for --modalities 3")
    args = parser.parse_args()
    if args.modalities:
        time_modalities(args)
        return

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
    # what fusing runs (fusion.models.inference: BN folded, channels-last), and the model as trained as the same-run
    # baseline
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


# the modality names of an N-band model in this benchmark (N = 2 is the released model's roles)
MODALITY_SETS: dict[int, tuple[str, ...]] = {2: ("ir", "vis"), 3: ("vis", "nir", "lwir"), 4: ("vis", "nir", "swir", "lwir")}


def time_modalities(args: argparse.Namespace) -> None:
    """Seconds per 1024x768 input set for each N of ``args.modalities``, CPU, the inference copy, every thread
    count; the models are timed in turn within each repeat (interleaved), so a busy machine slows all alike."""
    models = {}
    for n in args.modalities:
        if n not in MODALITY_SETS:
            raise SystemExit(f"error: --modalities takes {sorted(MODALITY_SETS)}, got {n}")
        if n == 2 and args.checkpoint:
            model = load_fuser_checkpoint(args.checkpoint).model
        elif n == 3 and args.checkpoint3:
            from fusion.models.checkpoint import build_generator, read_generator_checkpoint

            model = build_generator(read_generator_checkpoint(args.checkpoint3)[1], args.checkpoint3)
        else:
            model = create_model(args.variant, modalities=MODALITY_SETS[n])
        models[n] = for_inference(model.eval(), "cpu")
        print(f"{n} modalities {models[n].modalities}: generator {count_parameters(model):,} parameters, "
              f"fusion {count_parameters(model.fusion):,}, skip fusion {count_parameters(model.skip_fusion):,}")
    inputs = {n: [torch.rand(1, 1, HEIGHT, WIDTH) for _ in range(n)] for n in models}
    previous = torch.get_num_threads()
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            times: dict[int, list[float]] = {n: [] for n in models}
            for n, net in models.items():
                net(*inputs[n])  # warm-up
            for _ in range(args.repeats):
                for n, net in models.items():
                    t = time.perf_counter()
                    net(*inputs[n])
                    times[n].append(time.perf_counter() - t)
            for n in models:
                print(f"CPU {threads} thread(s), {n} modalities: {min(times[n]):.3f} s per {WIDTH}x{HEIGHT} input set "
                      f"(median {statistics.median(times[n]):.3f} s, {args.repeats} repeats)")
    torch.set_num_threads(previous)


if __name__ == "__main__":
    main()
