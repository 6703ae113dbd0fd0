"""The paper's ablations, trained and scored side by side: each variant is a named overlay of the training config.

Command line::

    python -m fusion.training.ablate --data ROOT [ROOT2 ...] --variants full no_cross_attention cnn_only no_adversary \
        --minutes 30 --seeds 0 1 --out runs/ablation [--eval NAME=DIR ...] [--preset paper] [key=value ...]

Every variant trains with the trainer (``fusion.training.train.train``) on the same data, for the same wall-clock budget
(``max_minutes``, shared among the phases in proportion to their epochs) and with the same seeds (so the same crops);
then its best checkpoint fuses each evaluation set (``fusion.fusers.fuse``) and is scored with the nine metrics
(``fusion.metrics.image``). ``OUT/ablation.json`` and ``OUT/ablation.md`` hold, per variant: each metric per evaluation
set as mean +- std over the seeds (sample std; none for one seed), generator parameters, CPU milliseconds per 1024x768
pair (one timed forward after a warm-up, measured in this run so that variants compare on one machine state), the seeds,
the config and the package versions.

Resumable: runs live in ``OUT/runs/<variant>/seed<N>`` and resume through the trainer (a finished run is not
retrained); a run's fused evaluation images (``OUT/runs/<variant>/seed<N>/eval/<set>/``) and scores
(``.../eval/<set>.json``) are the keyed store's (``data.store.KeyedStore``), keyed by its fuser (the checkpoint's
bytes) and the evaluation folders, and reused. The default evaluation sets are the paired folders
``TNO`` and ``RoadScene`` under ``../shared/data/fusion_benchmarks`` (``SHARED_DATA``), where present.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.errors import DatasetError
from data.io import atomic_write_json, atomic_write_text
from data.paired import find_pairs, resolve_pair_dirs
from data.provenance import content_key, package_versions
from data.shared import SHARED_DATA
from data.store import KeyedStore

from fusion.fusers.fuse import fuse_folder, load_fuser_checkpoint
from fusion.metrics.image import evaluate_triples, find_triples, metric_names
from fusion.models.checkpoint import CheckpointError, load_checkpoint
from fusion.models.dae_fuse import count_parameters, create_model

from .config import PRESETS, ConfigError, FusionTrainConfig, load_train_config, replace_config, to_dict
from data.registry import Registry

LOGGER = logging.getLogger(__name__)

DEFAULT_EVAL_SETS: tuple[str, ...] = ("TNO", "RoadScene")  # folders under SHARED_DATA/fusion_benchmarks
SPEED_SIZE = (768, 1024)  # (H, W): the M3FD frame size, the one issue 3's speed budget is stated for


@dataclass(frozen=True)
class Variant:
    """An ablation: ``key=value`` overrides of the training config and what removing that part tests."""

    overrides: tuple[str, ...]
    about: str


VARIANTS: Registry[Variant] = Registry("ablation variant")
VARIANTS.register("full")(Variant((), "the full model (the config as given)"))
VARIANTS.register("no_cross_attention")(Variant(
    ("model.args.fusion=concat",), "embeddings concatenated and projected, no cross-attention"))
VARIANTS.register("average_fusion")(Variant(("model.args.fusion=average",), "embeddings averaged (no weights)"))
VARIANTS.register("cnn_only")(Variant(("model.args.encoder=cnn",), "CNN branch only, no transformer"))
VARIANTS.register("transformer_only")(Variant(
    ("model.args.encoder=transformer",), "transformer branch only, no CNN (and no skips between H/2 and the tokens)"))
VARIANTS.register("no_adversary")(Variant(("adversarial=false",), "no discriminators, no adversarial terms"))
VARIANTS.register("skip_average")(Variant(("model.args.skip_fusion=average",), "skip features averaged, no gate"))
VARIANTS.register("skip_max")(Variant(("model.args.skip_fusion=max",), "skip features by element-wise max, no gate"))


def variant_config(base: FusionTrainConfig, name: str, minutes: float, seed: int) -> FusionTrainConfig:
    """``base`` with the variant's overrides, the time budget and the seed."""
    return replace_config(base, *VARIANTS.get(name).overrides, f"max_minutes={minutes}", f"seed={seed}")


def default_eval_sets() -> dict[str, Path]:
    """The benchmark folders of ``DEFAULT_EVAL_SETS`` that are present."""
    root = SHARED_DATA / "fusion_benchmarks"
    return {name: root / name for name in DEFAULT_EVAL_SETS if (root / name).is_dir()}


def parse_eval_sets(specs: Sequence[str]) -> dict[str, Path]:
    """``["TNO=path", ...]`` -> {name: folder}; a malformed or repeated name is a ValueError."""
    sets: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--eval {spec!r} is not NAME=DIR")
        if name in sets:
            raise ValueError(f"--eval names {name!r} twice")
        sets[name] = Path(folder)
    return sets


def resolve_eval_sets(folders: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    """{name: paired folder} -> {name: (ir folder, vis folder)}, every pair checked before anything trains."""
    resolved = {}
    for name, folder in folders.items():
        ir_dir, vis_dir = resolve_pair_dirs(folder)
        find_pairs(ir_dir, vis_dir)  # raises one DatasetError listing every problem
        resolved[name] = (ir_dir, vis_dir)
    return resolved


@torch.inference_mode()
def cpu_ms_per_pair(model: torch.nn.Module, size: tuple[int, int] = SPEED_SIZE) -> float:
    """Milliseconds of one fp32 CPU forward of a (CPU) generator on a ``size`` (H, W) pair, after one warm-up."""
    model.eval()
    ir, vis = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    model(ir, vis)
    t = time.perf_counter()
    model(ir, vis)
    return (time.perf_counter() - t) * 1000.0


def evaluate_checkpoint(
    checkpoint: Path, eval_sets: dict[str, tuple[Path, Path]], out_dir: Path, *, device: str = "cpu", workers: int = 1
) -> dict[str, dict[str, float]]:
    """Fuse every evaluation set with ``checkpoint`` into ``out_dir/<set>/`` and score it: {set: mean metrics}.

    Both are the keyed store's, under a key of the fuser (the checkpoint's bytes) and the folders: the fused images
    a resumable folder (a killed run's are resumed; another checkpoint's, e.g. a run trained further, are
    replaced), the scores a stage record ``out_dir/<set>.json``; each is reused while that key holds."""
    fuser = load_fuser_checkpoint(checkpoint, device)
    store = KeyedStore(out_dir.parent)
    scores = {}
    for name, (ir_dir, vis_dir) in eval_sets.items():
        key = content_key(fuser.cache_key(), str(ir_dir.resolve()), str(vis_dir.resolve()))

        def fuse(folder: Path) -> dict[str, Any]:
            pairs = find_pairs(ir_dir, vis_dir)
            fuse_folder(fuser, pairs, folder, progress=False, skip_existing=True)
            return {"images": len(pairs)}

        def score() -> dict[str, Any]:
            store.folder(out_dir / name, key, fuse, resumable=True)
            return evaluate_triples(find_triples(out_dir / name, ir_dir, vis_dir), workers=workers)[1]

        scores[name] = store.cached(out_dir.name, name, key, score)
    return scores


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (None for a single value: one seed says nothing about the spread)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def _run_record(run_dir: Path, result: Any) -> dict[str, Any]:
    """What one variant/seed run left: epochs trained per phase, training minutes, best epoch."""
    state = load_checkpoint(result.last_checkpoint)[1]
    epochs: dict[str, int] = {}
    for e in state["history"]:
        epochs[e["phase"]] = epochs.get(e["phase"], 0) + 1
    return {
        "run": str(run_dir),
        "checkpoint": str(result.best_checkpoint or result.last_checkpoint),
        "epochs": epochs,
        "train_minutes": sum(e["seconds"] for e in state["history"]) / 60.0,
        "best": state["best"],
    }


def run_ablation(
    base: FusionTrainConfig,
    data: Sequence[Path],
    variants: Sequence[str],
    minutes: float,
    seeds: Sequence[int],
    out: Path,
    eval_sets: dict[str, Path],
    *,
    device: str = "cpu",
    split: str = "train",
    workers: int = 1,
    command: str = "",
) -> dict[str, Any]:
    """Train and score every variant for every seed (resuming what is there); writes and returns the report.

    ``eval_sets``: {name: paired folder}. ``command``: how the run was started, for the report."""
    from .train import train, versions  # the trainer imports much; the report helpers above do not need it

    configs = {v: {s: variant_config(base, v, minutes, s) for s in seeds} for v in variants}  # all checked first
    resolved = resolve_eval_sets(eval_sets)
    report: dict[str, Any] = {
        "command": command,
        "data": [str(Path(d).resolve()) for d in data], "split": split, "minutes": minutes, "seeds": list(seeds),
        "eval_sets": {name: [str(p) for p in dirs] for name, dirs in resolved.items()},
        "metrics": metric_names(), "speed": {"size": list(SPEED_SIZE), "torch_threads": torch.get_num_threads()},
        "versions": {**versions(), **package_versions(("opencv-python",))}, "variants": {},
    }
    for name in variants:
        first = configs[name][seeds[0]]
        model = create_model(first.model.name, **first.model.args)
        entry: dict[str, Any] = {
            "about": VARIANTS.get(name).about, "overrides": list(VARIANTS.get(name).overrides),
            "generator_parameters": count_parameters(model), "cpu_ms_per_1024x768": cpu_ms_per_pair(model),
            "config": {k: v for k, v in to_dict(first).items() if k != "seed"}, "seeds": {},
        }
        for seed, cfg in configs[name].items():
            run_dir = out / "runs" / name / f"seed{seed}"
            LOGGER.info("variant %s, seed %d: %s", name, seed, run_dir)
            result = train(cfg, list(data), run_dir, device=device, resume=True, progress=False, split=split)
            record = _run_record(run_dir, result)
            record["eval"] = evaluate_checkpoint(Path(record["checkpoint"]), resolved, run_dir / "eval", device=device,
                                                 workers=workers)
            entry["seeds"][str(seed)] = record
        entry["eval"] = {
            set_name: {m: mean_std([r["eval"][set_name][m] for r in entry["seeds"].values()]) for m in metric_names()}
            for set_name in resolved
        }
        report["variants"][name] = entry
        write_report(report, out)  # after every variant: a long ablation shows what is done
    return report


def _cell(stat: dict[str, float | None]) -> str:
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat["std"] is not None else "")


def format_markdown(report: dict[str, Any]) -> str:
    """One table per evaluation set: a row per variant, the nine metrics (mean ± std over seeds), size and speed."""
    names = report["metrics"]
    lines = [
        "# DAE-Fuse ablation", "",
        f"Command: `{report['command']}`", "",
        f"Budget {report['minutes']:g} min per run, seeds {', '.join(map(str, report['seeds']))}; data: "
        + ", ".join(f"`{d}`" for d in report["data"]) + f" ({report['split']} split).",
        f"CPU ms: one fp32 forward at {report['speed']['size'][1]}x{report['speed']['size'][0]}, "
        f"{report['speed']['torch_threads']} torch threads. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
    ]
    for set_name in report["eval_sets"]:
        lines += [f"## {set_name}", "", "| variant | " + " | ".join(names) + " | params | CPU ms |",
                  "|---" * (len(names) + 3) + "|"]
        for name, v in report["variants"].items():
            cells = [_cell(v["eval"][set_name][m]) for m in names]
            lines.append(f"| {name} | " + " | ".join(cells)
                         + f" | {v['generator_parameters']:,} | {v['cpu_ms_per_1024x768']:.0f} |")
        lines.append("")
    lines += ["## Variants", ""]
    for name, v in report["variants"].items():
        runs = "; ".join(f"seed {s}: {r['train_minutes']:.1f} min, epochs {r['epochs']}" for s, r in v["seeds"].items())
        lines.append(f"- **{name}**: {v['about']} (`{' '.join(v['overrides']) or 'no overrides'}`). {runs}.")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ablation.json", report)
    atomic_write_text(out / "ablation.md", format_markdown(report))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.training.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, nargs="+",
                        help="training roots, as for fusion.training.train")
    parser.add_argument("--variants", nargs="+", default=VARIANTS.names(), metavar="NAME",
                        help=f"variants to train (default: all): {', '.join(VARIANTS.names())}")
    parser.add_argument("--minutes", required=True, type=float, help="wall-clock training budget per run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", required=True, type=Path, help="folder for runs/, ablation.json, ablation.md")
    parser.add_argument("--eval", nargs="+", default=[], metavar="NAME=DIR",
                        help="evaluation sets, each a paired folder (default: TNO and RoadScene of the shared data)")
    parser.add_argument("--preset", choices=PRESETS, default="paper", help="base configuration (default: paper)")
    parser.add_argument("--config", type=Path, help="YAML file applied on top of the preset")
    parser.add_argument("--split", default="train", help="M3FD split to train on (default: train)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=1, help="threads for scoring (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS.names())}")
    if not args.minutes > 0 or args.workers < 1 or len(set(args.seeds)) != len(args.seeds):
        parser.error("need --minutes > 0, --workers >= 1 and distinct --seeds")
    try:
        eval_sets = parse_eval_sets(args.eval) if args.eval else default_eval_sets()
        base = load_train_config(args.config, preset=args.preset, overrides=args.overrides)
    except (ValueError, ConfigError) as err:
        parser.error(str(err))
    if not eval_sets:
        parser.error(f"no evaluation set: none of {', '.join(DEFAULT_EVAL_SETS)} under {SHARED_DATA} (use --eval)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run_ablation(
            base, args.data, list(dict.fromkeys(args.variants)), args.minutes, args.seeds, args.out, eval_sets,
            device=args.device, split=args.split, workers=args.workers,
            command=" ".join(["python -m fusion.training.ablate", *(sys.argv[1:] if argv is None else argv)]),
        )
    except (ConfigError, CheckpointError, DatasetError) as err:
        parser.exit(2, f"error: {err}\n")
    print(format_markdown(report))
    print(f"wrote {args.out / 'ablation.md'} and {args.out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
