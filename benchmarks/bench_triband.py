"""Does a third band help? Three-band DAE-Fuse against three-band rules and the two-band release, on TNO_triband.

    .venv/bin/python benchmarks/bench_triband.py [--data ../shared/data/fusion_benchmarks/TNO_triband]
        [--triband fusion/weights/dae_fuse_triband.pt] [--release fusion/weights/dae_fuse_release.pt]
        [--out benchmarks/results/triband] [--threads 2]

Writes ``<out>.md``, ``<out>.json`` (per scene and method: the nine metrics and the per-source terms; commands,
versions, checkpoint digests) and ``<out>.png`` (the same scenes fused by each method).

TNO_triband (17 registered scenes, ``vis/``, ``nir/``, ``lwir/``; see its SOURCE.md) is evaluation data only: no
model here was trained or selected on it. Methods (``METHODS``):

* ``dae3``: the three-band DAE-Fuse on (vis, nir, lwir);
* ``max3`` / ``mean3``: the per-pixel rules over the three bands (``fusion.fusers.baselines``);
* ``release_vis_lwir`` / ``release_nir_lwir``: the released two-band DAE-Fuse with lwir in its infrared role and
  vis (or nir) in its visible role;
* ``dae3_no_nir``: the three-band model with near-infrared declared missing (its ``present`` mask): the same
  weights, two bands. ``dae3`` against it is the cleanest answer to "what does the third band add";
* ``dae3_no_vis``: visible declared missing (a blinded camera), fused from nir and lwir by the same model;
* ``dae3_vis_glare``: the same blinded camera NOT declared: its image replaced by a saturated white frame (glare)
  and fused as if it were a picture, to show what declaring a failed band is worth.

Every fused image is rounded to 8 bits as a fused PNG would be, then scored by ``fusion.metrics.image`` against all
three sources (``evaluate_sources``: MI, VIF and SSIM are sums over the sources, Qabf weighs each source's edges, SCD is
the documented N-source choice), so every method is judged on the same three images; the per-source terms
(``metric_terms``) say where each method's score comes from. A method that leaves a band out is scored against it too:
that is the question (what of the three bands reaches the fused image).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_gray_reference  # noqa: E402
from data.provenance import package_versions  # noqa: E402
from fusion.fusers.baselines import RULES  # noqa: E402
from fusion.metrics.image import GreyImage, FusionSet, metric_names, metric_terms, score  # noqa: E402
from fusion.models.checkpoint import build_generator, read_generator_checkpoint  # noqa: E402
from fusion.models.inference import for_inference  # noqa: E402

BANDS = ("vis", "nir", "lwir")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fusion_benchmarks" / "TNO_triband"
# Scenes shown in the picture: two image-intensified night scenes, a TRICLOBS urban scene and one rural one.
PICTURE_SCENES = ("Kaptein_1123", "Marne_04", "houses_with_3_men", "barbed_wire_1", "square_with_houses")
# The headline metrics of the per-scene verdict: edges kept (Qabf) and visual information kept (VIF), both over
# the three sources.
VERDICT_METRICS = ("Qabf", "VIF")


def read_scenes(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """{scene: {band: uint8 (H, W)}}; every problem (a band missing, sizes that differ) in one error."""
    scenes, problems = {}, []
    stems = sorted(p.stem for p in (root / BANDS[0]).glob("*.png")) if (root / BANDS[0]).is_dir() else []
    if not stems:
        raise SystemExit(f"error: no {root}/{BANDS[0]}/*.png (TNO_triband: vis/, nir/, lwir/)")
    for stem in stems:
        paths = {b: root / b / f"{stem}.png" for b in BANDS}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            problems.append(f"{stem}: missing {', '.join(missing)}")
            continue
        images = {b: read_gray_reference(p).astype(np.uint8) for b, p in paths.items()}
        if len({x.shape for x in images.values()}) != 1:
            problems.append(f"{stem}: band sizes differ ({', '.join(f'{b} {x.shape}' for b, x in images.items())})")
            continue
        scenes[stem] = images
    if problems:
        raise SystemExit("error: TNO_triband problems:\n  " + "\n  ".join(problems))
    return scenes


def load_model(path: Path) -> tuple[torch.nn.Module, str]:
    data, state = read_generator_checkpoint(path)
    model = build_generator(state, path).eval()
    return for_inference(model), hashlib.sha256(data).hexdigest()


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / np.float32(255.0))[None, None]


def _to_uint8(fused: torch.Tensor) -> np.ndarray:
    return np.clip(np.rint(fused[0, 0].numpy() * 255.0), 0, 255).astype(np.uint8)


def methods(dae3: torch.nn.Module, release: torch.nn.Module) -> dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]]:
    """name -> fuse({band: uint8}) -> uint8 fused image."""
    order = dae3.modalities  # the three-band model's input order

    def three(present: tuple[bool, ...] | None, glare: str | None = None
              ) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        def fuse(images: Mapping[str, np.ndarray]) -> np.ndarray:
            mask = None if present is None else torch.tensor([present])
            shown = {m: (np.full_like(x, 255) if m == glare else x) for m, x in images.items()}
            with torch.inference_mode():
                return _to_uint8(dae3(*(_tensor(shown[m]) for m in order), present=mask))
        return fuse

    def two(visible_role: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        def fuse(images: Mapping[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():  # the release's roles: (ir, vis) = (lwir, visible_role)
                return _to_uint8(release(_tensor(images["lwir"]), _tensor(images[visible_role])))
        return fuse

    def rule(name: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        return lambda images: np.clip(np.rint(RULES[name]([images[b].astype(np.float32) for b in BANDS])),
                                      0, 255).astype(np.uint8)

    return {
        "dae3": three(None),
        "max3": rule("max"),
        "mean3": rule("mean"),
        "release_vis_lwir": two("vis"),
        "release_nir_lwir": two("nir"),
        "dae3_no_nir": three(tuple(m != "nir" for m in order)),
        "dae3_no_vis": three(tuple(m != "vis" for m in order)),
        "dae3_vis_glare": three(None, glare="vis"),
    }


def picture(scenes: dict[str, dict[str, np.ndarray]], fused: dict[str, dict[str, np.ndarray]], names: list[str],
            height: int = 140) -> np.ndarray:
    """Rows: scenes; columns: the three bands then each method; a label row on top."""
    columns = [*BANDS, *names]
    rows = []
    for scene in [s for s in PICTURE_SCENES if s in scenes]:
        tiles = []
        for col in columns:
            image = scenes[scene][col] if col in BANDS else fused[col][scene]
            h, w = image.shape
            tile = cv2.resize(image, (round(w * height / h), height), interpolation=cv2.INTER_AREA)
            tiles.append(tile)
        rows.append(tiles)
    widths = [max(row[i].shape[1] for row in rows) for i in range(len(columns))]
    label_h = 28
    canvas_rows = []
    header = np.full((label_h, sum(widths) + 4 * (len(widths) - 1)), 255, np.uint8)
    x = 0
    for col, w in zip(columns, widths):
        cv2.putText(header, col, (x + 4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
        x += w + 4
    canvas_rows.append(header)
    for row in rows:
        padded = [np.pad(t, ((0, 0), (0, w - t.shape[1])), constant_values=255) for t, w in zip(row, widths)]
        gap = np.full((height, 4), 255, np.uint8)
        line = padded[0]
        for t in padded[1:]:
            line = np.hstack([line, gap, t])
        canvas_rows.append(line)
        canvas_rows.append(np.full((4, line.shape[1]), 255, np.uint8))
    return np.vstack(canvas_rows)


def fmt(x: float) -> str:
    return f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--triband", type=Path, default=ROOT / "fusion" / "weights" / "dae_fuse_triband.pt")
    parser.add_argument("--release", type=Path, default=ROOT / "fusion" / "weights" / "dae_fuse_release.pt")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "triband",
                        help="writes OUT.md, OUT.json and OUT.png")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scenes = read_scenes(args.data)
    dae3, dae3_sha = load_model(args.triband)
    release, release_sha = load_model(args.release)
    if set(dae3.modalities) != set(BANDS):
        raise SystemExit(f"error: {args.triband} fuses {dae3.modalities}, not {BANDS}")
    fusers = methods(dae3, release)
    names = list(fusers)
    results: dict[str, dict[str, dict]] = {}
    fused_images: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    seconds: dict[str, float] = {n: 0.0 for n in names}
    t_all = time.perf_counter()
    for scene, images in scenes.items():
        sources = {b: GreyImage(images[b]) for b in BANDS}  # prepared once, shared by every method
        pair = {b: sources[b] for b in ("vis", "lwir")}
        results[scene] = {}
        for name, fuse in fusers.items():
            t = time.perf_counter()
            out = fuse(images)
            seconds[name] += time.perf_counter() - t
            fused_images[name][scene] = out
            grey = GreyImage(out)
            tri = FusionSet(grey, sources)
            results[scene][name] = {
                "metrics": score(tri),
                "terms": metric_terms(tri),
                # the original two bands' view: what of (vis, lwir) the image keeps
                "metrics_vis_lwir": score(FusionSet(grey, pair)),
            }
        print(f"{scene}: " + ", ".join(f"{n} Qabf {results[scene][n]['metrics']['Qabf']:.3f}" for n in names),
              flush=True)
    wall = time.perf_counter() - t_all

    mean = {n: {k: float(np.mean([results[s][n]["metrics"][k] for s in scenes])) for k in metric_names()}
            for n in names}
    mean_pair = {n: {k: float(np.mean([results[s][n]["metrics_vis_lwir"][k] for s in scenes])) for k in metric_names()}
                 for n in names}
    mean_terms = {n: {m: {b: float(np.mean([results[s][n]["terms"][m][b] for s in scenes])) for b in BANDS}
                      for m in ("MI", "VIF", "Qabf", "SSIM")} for n in names}
    # per scene: what the third band adds to the same model (dae3 vs dae3_no_nir) and against the two-band release
    per_scene = {}
    for s in scenes:
        r = results[s]
        delta = {k: r["dae3"]["metrics"][k] - r["dae3_no_nir"]["metrics"][k] for k in VERDICT_METRICS}
        best2 = {k: max(r["release_vis_lwir"]["metrics"][k], r["release_nir_lwir"]["metrics"][k]) for k in VERDICT_METRICS}
        vs_release = {k: r["dae3"]["metrics"][k] - best2[k] for k in VERDICT_METRICS}
        per_scene[s] = {
            "delta_vs_no_nir": delta, "delta_vs_best_release": vs_release,
            "nir_adds": all(v > 0 for v in delta.values()),
            "beats_both_releases": all(v > 0 for v in vs_release.values()),
            "mi_nir_gain": r["dae3"]["terms"]["MI"]["nir"] - r["dae3_no_nir"]["terms"]["MI"]["nir"],
        }
    adds = [s for s in scenes if per_scene[s]["nir_adds"]]
    beats = [s for s in scenes if per_scene[s]["beats_both_releases"]]

    command = "python benchmarks/bench_triband.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {
        "command": command.strip(),
        "data": str(args.data), "scenes": list(scenes),
        "checkpoints": {"triband": {"path": str(args.triband), "sha256": dae3_sha},
                        "release": {"path": str(args.release), "sha256": release_sha}},
        "threads": args.threads, "seeds": "none drawn (inference and metrics are deterministic)",
        "versions": package_versions(("torch", "timm", "numpy", "opencv-python-headless")),
        "methods": names, "metric_names": metric_names(),
        "mean": mean, "mean_vs_vis_lwir": mean_pair, "mean_terms": mean_terms,
        "per_scene_verdict": per_scene, "nir_adds_scenes": adds, "beats_both_releases_scenes": beats,
        "fuse_seconds_total": seconds, "wall_seconds": wall,
        "per_scene": results,
    }
    out = args.out
    atomic_write_json(out.with_suffix(".json"), record)
    ok, png = cv2.imencode(".png", picture(scenes, fused_images, names))
    atomic_write_bytes(out.with_suffix(".png"), png.tobytes())

    m = metric_names()
    lines = [
        "# Three bands on TNO_triband: does near-infrared add anything?",
        "",
        f"Command: `{record['command']}` (torch {record['versions'].get('torch')}, {args.threads} CPU threads; "
        "deterministic, no seed drawn). Data: `../shared/data/fusion_benchmarks/TNO_triband`, "
        f"{len(scenes)} scenes (evaluation only: nothing was trained or selected on it). Three-band model "
        f"`{args.triband.name}` (sha256 {dae3_sha[:12]}), release `{args.release.name}` (sha256 {release_sha[:12]}).",
        "",
        "Every fused image (8-bit, as a fused PNG) is scored against **all three** sources (`fusion.metrics.image."
        "evaluate_sources`: MI, VIF, SSIM summed over the sources; Qabf weighted by every source's edges; SCD the "
        "documented N-source choice), so a two-band method is judged on what of the third band reaches its image.",
        "",
        "## Means over the scenes (three sources)",
        "",
        "| method | " + " | ".join(m) + " |",
        "|---|" + "---|" * len(m),
    ]
    lines += [f"| {n} | " + " | ".join(fmt(mean[n][k]) for k in m) + " |" for n in names]
    lines += [
        "",
        "## Means against the original two bands only (vis, lwir)",
        "",
        "What adding a band costs on the two the release fuses (same images, scored against vis and lwir only).",
        "",
        "| method | " + " | ".join(m) + " |",
        "|---|" + "---|" * len(m),
    ]
    lines += [f"| {n} | " + " | ".join(fmt(mean_pair[n][k]) for k in m) + " |" for n in names]
    lines += [
        "",
        "## Per-source terms (means): where each score comes from",
        "",
        "| method | MI vis | MI nir | MI lwir | VIF vis | VIF nir | VIF lwir | Qabf vis | Qabf nir | Qabf lwir |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | " + " | ".join(fmt(mean_terms[n][k][b]) for k in ("MI", "VIF", "Qabf") for b in BANDS) + " |"
              for n in names]
    lines += [
        "",
        "## Per scene: the third band in the same model, and against the two-band release",
        "",
        "dQabf / dVIF (nir): `dae3` minus `dae3_no_nir` (same weights, nir declared missing); dMI nir: its MI with "
        "the nir image. vs release: `dae3` minus the better of `release_vis_lwir` and `release_nir_lwir`.",
        "",
        "| scene | dQabf (nir) | dVIF (nir) | dMI nir | nir adds | dQabf vs release | dVIF vs release | beats both |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scenes:
        v = per_scene[s]
        lines.append(
            f"| {s} | {v['delta_vs_no_nir']['Qabf']:+.3f} | {v['delta_vs_no_nir']['VIF']:+.3f} | "
            f"{v['mi_nir_gain']:+.3f} | {'yes' if v['nir_adds'] else 'no'} | "
            f"{v['delta_vs_best_release']['Qabf']:+.3f} | {v['delta_vs_best_release']['VIF']:+.3f} | "
            f"{'yes' if v['beats_both_releases'] else 'no'} |"
        )
    lines += [
        "",
        f"Near-infrared raises both Qabf and VIF of the same model on {len(adds)} of {len(scenes)} scenes"
        f"{': ' + ', '.join(adds) if adds else ''}. The three-band model beats both two-band releases on both "
        f"metrics on {len(beats)} of {len(scenes)}{': ' + ', '.join(beats) if beats else ''}.",
        "",
        f"Picture: `{out.with_suffix('.png').name}` (rows: {', '.join(s for s in PICTURE_SCENES if s in scenes)}; "
        "columns: the three bands, then each method).",
        "",
        "Fusing time (this run, all scenes, CPU): " + ", ".join(f"{n} {seconds[n]:.1f} s" for n in names) + ".",
        "",
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print(f"wrote {out.with_suffix('.md')}, .json, .png in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
