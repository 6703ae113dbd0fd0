"""Turn the pipeline's per-candidate records into the tables, plots and TensorBoard summaries a user reads.

Everything here is a pure function of the records (plus file writes): the ranking, mean +- std over seeds, the
gain over the better single modality, Spearman rank correlations between fusion metrics and mAP@50. The records are
``pipelines.records``' dataclasses; ``render_markdown`` reads the results document as its :class:`RunResults`.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.io import atomic_path, atomic_write_text, write_image
from detection.bootstrap import Interval
from fusion.metrics.image import METRICS
from fusion.video.temporal import temporal_metric_names

from .records import (
    Bootstrap,
    CandidateResult,
    DetectionSummary,
    ImageVsDetector,
    MeanStd,
    ProtocolIntervals,
    Robustness,
    RobustIntervals,
    RunResults,
    ScenarioSummary,
    SeedRun,
    SpearmanRow,
    TopTwo,
)

# The fusion metrics shown beside mAP, in the order of the field's tables (CDDFuse), with AG added at the end.
# The columns are the metric registries' names: a metric registered in fusion.metrics.image is a column, nothing edited.
FUSION_METRICS: tuple[str, ...] = tuple(METRICS.names())
NO_FUSED_IMAGE = "n/a (no fused image)"  # early and late fusion's fusion-metric cells


def mean_std(values: Sequence[float | None]) -> MeanStd | None:
    """Mean and population std over seeds (None entries are skipped); None when nothing is left."""
    clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not clean:
        return None
    return MeanStd(mean=float(np.mean(clean)), std=float(np.std(clean)), n=len(clean))


def _named(values: Mapping[str, Any] | None, name: str) -> Any:
    """One name's entry of a name-keyed mapping (a class's AP, a metric's value): None where the mapping or the
    name is missing (a class the split lacks, a row without fusion metrics)."""
    return None if values is None else values.get(name)


def summarise_detection(per_seed: Sequence[SeedRun]) -> DetectionSummary:
    """Aggregate a candidate's detector seeds into mean +- std for every reported number."""
    # The dataset's classes, in its order, as the detector results carry them (no global class list).
    classes = list(dict.fromkeys(name for r in per_seed for name in r.ap50))
    scenarios = {}
    for s in sorted({s for r in per_seed for s in r.scenarios}):
        rows = [r.scenarios[s] for r in per_seed if s in r.scenarios]
        scenarios[s] = ScenarioSummary(map50=mean_std([row.map50 for row in rows]),
                                       map50_deployed=mean_std([row.map50_deployed for row in rows]),
                                       n_images=rows[0].n_images, n_boxes=rows[0].n_boxes)
    return DetectionSummary(
        seeds=[r.seed for r in per_seed],
        map50=mean_std([r.map50 for r in per_seed]), map50_95=mean_std([r.map50_95 for r in per_seed]),
        precision=mean_std([r.precision for r in per_seed]), recall=mean_std([r.recall for r in per_seed]),
        coco_map50=mean_std([r.coco_map50 for r in per_seed]),
        coco_map50_95=mean_std([r.coco_map50_95 for r in per_seed]),
        map50_deployed=mean_std([r.map50_deployed for r in per_seed]),
        map50_95_deployed=mean_std([r.map50_95_deployed for r in per_seed]),
        ap50={name: mean_std([_named(r.ap50, name) for r in per_seed]) for name in classes},
        ap50_deployed={name: mean_std([_named(r.ap50_deployed, name) for r in per_seed]) for name in classes},
        scenarios=scenarios)


# The scoring protocols (``detection.protocols``): the key suffix of their numbers in a detector summary.
PROTOCOL_SUFFIX = {"field": "", "deployed": "_deployed"}
PROTOCOL_WORDS = {"field": "field protocol (Ultralytics validator, multi-label NMS: comparable with papers)",
                  "deployed": "deployed protocol (one class per box, as YOLO.predict returns; pycocotools)"}


def add_gains(records: list[CandidateResult], protocol: str = "field") -> float | None:
    """Set ``gain_map50`` on every record: its mAP@50 (under ``protocol``) minus the better of the IR-only and
    visible-only rows'.

    Returns that reference value (None when neither single-modality row has a detector result).
    """
    singles = [_map50(r, protocol) for r in records if r.is_single]
    singles = [v for v in singles if v is not None]
    best_single = max(singles) if singles else None
    for r in records:
        value = _map50(r, protocol)
        r.gain_map50 = None if value is None or best_single is None else value - best_single
    return best_single


def _under(record: DetectionSummary | ScenarioSummary | SeedRun, key: str, protocol: str) -> Any:
    """``record``'s number ``key`` (``map50``, ``ap50``, ...) under ``protocol``: the records name each protocol's
    fields by its suffix (``map50``, ``map50_deployed``)."""
    return getattr(record, key + PROTOCOL_SUFFIX[protocol])


def _stat(record: CandidateResult, key: str, protocol: str) -> MeanStd | None:
    return None if record.detection is None else _under(record.detection, key, protocol)


def _map50(record: CandidateResult, protocol: str = "field") -> float | None:
    stat = _stat(record, "map50", protocol)
    return None if stat is None else stat.mean


def ranked(records: list[CandidateResult], protocol: str = "field") -> list[CandidateResult]:
    """Candidates sorted by mAP@50 under ``protocol`` (best first); failed candidates last, in input order."""
    return sorted(records, key=lambda r: (_map50(r, protocol) is None, -(_map50(r, protocol) or 0.0)))


def ranking_disagreement(records: list[CandidateResult], protocol: str) -> str | None:
    """One line when the other protocol ranks the top two candidates differently, else None."""
    other = "field" if protocol == "deployed" else "deployed"
    have = [r for r in records if _map50(r, protocol) is not None and _map50(r, other) is not None]
    if len(have) < 2:
        return None
    top = [r.name for r in ranked(have, protocol)[:2]]
    top_other = [r.name for r in ranked(have, other)[:2]]
    if top == top_other:
        return None
    return (f"**The protocols disagree:** the {protocol} protocol ranks `{top[0]}` then `{top[1]}`, the {other} "
            f"protocol `{top_other[0]}` then `{top_other[1]}`.")


def spearman_table(records: list[CandidateResult], protocol: str = "field") -> list[SpearmanRow]:
    """Spearman rank correlation of each fusion metric with mAP@50 across candidates (needs >= 3 candidates)."""
    from scipy.stats import spearmanr

    rows = []
    for metric in FUSION_METRICS:
        pairs = [(r.fusion[metric], _map50(r, protocol)) for r in records
                 if _map50(r, protocol) is not None and _named(r.fusion, metric) is not None]
        if len(pairs) < 3:
            continue
        x, y = zip(*pairs)
        if len(set(x)) < 2 or len(set(y)) < 2:
            rho, p = None, None  # a constant column has no rank order: say so rather than report NaN
        else:
            result = spearmanr(x, y)
            rho, p = float(result.statistic), float(result.pvalue)
        rows.append(SpearmanRow(metric=metric, rho=rho, p=p, n=len(pairs)))
    return rows


# Below this mAP@50 for every candidate the detectors learned nothing, and no ranking can be read from the table.
MIN_INFORMATIVE_MAP50 = 0.01


def _shown_gain(gain: float) -> float:
    """A gain as the table shows it (3 decimals), with -0.0 turned into 0.0: a gain that prints as 0.000 is none."""
    return round(gain, 3) + 0.0


def _fmt_interval(iv: Interval) -> str:
    return f"{_shown_gain(iv.point):+.3f} [{_shown_gain(iv.low):+.3f}, {_shown_gain(iv.high):+.3f}]"


PROVISIONAL = "provisional: one detector seed; run `--seeds 0 1 2` to include training noise"
_PROVISIONAL_HEAD = f"**{PROVISIONAL[0].upper()}{PROVISIONAL[1:]}.**"  # the same words opening a verdict


def is_provisional(intervals: ProtocolIntervals | RobustIntervals | None) -> bool:
    """True when a protocol's intervals rest on one detector seed (images-only: the training noise is unknown)."""
    if intervals is None:
        return False
    return any(iv.provisional for iv in [*(intervals.gains or {}).values(), *intervals.map50.values()])


def provisional_verdict(reference: str, ahead: list[str], ties: list[str], behind: list[str],
                        top: TopTwo | None) -> str:
    """The verdict on one detector seed: what the images alone show, and no win (or loss) called."""
    parts = [f"{_PROVISIONAL_HEAD} These intervals hold the evaluation images' noise "
             "only; a second seed can reverse any of them, so no fusion is called a win (or a loss) here."]
    if ahead:
        parts.append(f"Ahead of `{reference}` on these images: " + ", ".join(ahead) + ".")
    if ties:
        parts.append(f"Not distinguishable from `{reference}` even on these images: " + ", ".join(ties) + ".")
    if behind:
        parts.append(f"Behind `{reference}` on these images: " + ", ".join(behind) + ".")
    if top:
        parts.append(f"Top two: `{top.first}` over `{top.second}` by {_fmt_interval(top.gain)} (one seed).")
    return " ".join(parts)


def verdict(records: list[CandidateResult], best_single: float | None, protocol: str = "field",
            intervals: ProtocolIntervals | None = None) -> str:
    """The one-paragraph answer: which fusions beat the better single modality, and how far to trust it.

    With bootstrap ``intervals`` (``pipelines.significance``, this protocol's section) the verdict reads from them:
    a gain is a win only when its 95% interval (detector seeds and images, ``detection.bootstrap``) excludes 0, "not
    distinguishable" when it includes 0. On one detector seed the intervals hold the images' noise only, so the
    verdict is provisional and calls nothing a win. Without intervals, a gain no larger than the seed spread of the
    two rows compared is called out as within seed noise. A table in which no detector learned anything is called
    inconclusive instead of "no fusion helps".
    """
    if best_single is None:
        return "No single-modality detector finished, so no fusion can be judged."
    values = [_map50(r, protocol) for r in records if _map50(r, protocol) is not None]
    if max(values) < MIN_INFORMATIVE_MAP50:
        return (f"Inconclusive: every detector stayed below mAP@50 {MIN_INFORMATIVE_MAP50} (it learned nothing), so "
                "this table cannot rank the inputs. Use more images and a longer schedule (e.g. the `standard` "
                "preset on a GPU with the full M3FD).")
    reference = max((r for r in records if r.is_single and _map50(r, protocol) is not None),
                    key=lambda r: _map50(r, protocol))
    text = f"Better single modality: `{reference.name}`, mAP@50 {best_single:.3f} ({protocol} protocol). "
    if intervals is not None and intervals.gains and intervals.reference == reference.name:
        gains = intervals.gains
        wins, ties, losses = [], [], []
        for r in ranked(records, protocol):
            iv = gains.get(r.name)
            if r.is_single or iv is None or r.error:
                continue
            (wins if iv.low > 0 else losses if iv.high < 0 else ties).append(f"`{r.name}` {_fmt_interval(iv)}")
        top = intervals.top_two
        if is_provisional(intervals):
            return text + provisional_verdict(reference.name, wins, ties, losses, top)
        n_seeds = next(iter(gains.values())).n_seeds
        parts = []
        if wins:
            parts.append(f"Beat `{reference.name}` (95% interval over {n_seeds} detector seeds and the images "
                         "above 0): " + ", ".join(wins) + ".")
        if ties:
            parts.append(f"Not distinguishable from `{reference.name}` (interval includes 0): "
                         + ", ".join(ties) + ".")
        if losses:
            parts.append(f"Worse than `{reference.name}`: " + ", ".join(losses) + ".")
        if not wins:
            parts.append("No fusion is shown to beat it on this data: none earns its keep here.")
        if top:
            parts.append(f"Top two: `{top.first}` over `{top.second}` by {_fmt_interval(top.gain)}"
                         + ("." if top.gain.low > 0 else " (not distinguishable)."))
        parts.append(image_vs_detector_sentence(intervals.image_vs_detector_fusion))
        return text + " ".join(p for p in parts if p)
    winners = []
    one_seed = False
    for r in records:
        gain = r.gain_map50
        if r.is_single or gain is None or _shown_gain(gain) <= 0:
            continue
        spread = max(_stat(r, "map50", protocol).std, _stat(reference, "map50", protocol).std)
        n_seeds = min(_stat(r, "map50", protocol).n, _stat(reference, "map50", protocol).n)
        one_seed |= n_seeds < 2
        note = (" (one seed: no spread known)" if n_seeds < 2
                else " (within seed noise)" if gain <= spread else "")
        winners.append(f"`{r.name}` {gain:+.3f}{note}")
    if not winners:
        return text + "No fusion beats it on this data: none earns its keep here."
    if one_seed:
        return text + f"{_PROVISIONAL_HEAD} Ahead of it on one seed, no win called: " + \
            ", ".join(winners) + "."
    return text + "Fusions ahead of it (no intervals computed, `--bootstrap 0`): " + ", ".join(winners) + "."


def image_vs_detector_sentence(iv: ImageVsDetector | None) -> str:
    """Whether the best image fusion beats the better of early fusion (the detector reads the modalities as
    channels) and late fusion (the single-modality detectors' boxes merged): the alternatives needing no fused
    image. Empty when either side is missing."""
    if not iv:
        return ""
    pair = f"best image fusion `{iv.image}` vs the better detector-side fusion `{iv.detector}`"
    gain = iv.gain
    if gain.provisional:
        return f"Image vs detector-side fusion (provisional, one seed): {pair} {_fmt_interval(gain)}."
    if gain.low > 0:
        return f"Image fusion beats fusing in the detector: {pair} {_fmt_interval(gain)}."
    if gain.high < 0:
        return (f"Fusing in the detector beats every image fusion: {pair} {_fmt_interval(gain)}; no image fusion "
                "earns its keep over it.")
    return f"Image fusion is not distinguishable from fusing in the detector: {pair} {_fmt_interval(gain)}."


def _fmt(stat: MeanStd | float | None, digits: int = 3, pm: bool = True) -> str:
    if stat is None:
        return "-"
    if isinstance(stat, MeanStd):
        text = f"{stat.mean:.{digits}f}"
        return text + (f" ± {stat.std:.{digits}f}" if pm and stat.n > 1 else "")
    return f"{stat:.{digits}f}"


def class_names_of(records: list[CandidateResult]) -> list[str]:
    """The classes the records' detector results name, in the dataset's order."""
    return list(dict.fromkeys(c for r in records if r.detection for c in r.detection.ap50))


# Temporal consistency over the evaluation split's consecutive-frame runs (fusion.video.temporal), shown when measured.
TEMPORAL_COLUMNS: tuple[str, ...] = tuple(temporal_metric_names())


def _temporal(record: CandidateResult, metric: str) -> float | None:
    """One temporal metric of the row (the score stage's ``{"mean": {metric: value}, ...}``; None: not measured)."""
    return _named(_named(record.temporal, "mean"), metric)


def _has_temporal(records: list[CandidateResult], metric: str) -> bool:
    return any(_temporal(r, metric) is not None for r in records)


def _scenarios(records: list[CandidateResult]) -> list[str]:
    return sorted({s for r in records if r.detection for s in r.detection.scenarios})


def _scenario_stat(record: CandidateResult, scenario: str, protocol: str) -> MeanStd | None:
    """The row's mAP@50 on one scenario under ``protocol`` (None: no detector result, or none on that scenario)."""
    summary = None if record.detection is None else record.detection.scenarios.get(scenario)
    return None if summary is None else _under(summary, "map50", protocol)


def table_columns(records: list[CandidateResult], protocol: str = "field") -> list[str]:
    """The table's columns: ``mAP@50`` is the ranking protocol's, the other protocol's is named beside it."""
    other = "deployed" if protocol == "field" else "field"
    several = _n_seeds(records) > 1
    return (["rank", "candidate", "mAP@50", f"mAP@50 {other}"] + (["mAP@50 per seed"] if several else [])
            + ["gain vs best single"] + (["gain noise: seed sd / image se"] if several else [])
            + ["mAP@50:95", "P", "R"]
            + [f"AP50 {c}" for c in class_names_of(records)] + [f"mAP@50 {s}" for s in _scenarios(records)]
            + list(FUSION_METRICS) + [c for c in TEMPORAL_COLUMNS if _has_temporal(records, c)]
            + ["fuse ms/img", "status"])


def _n_seeds(records: list[CandidateResult]) -> int:
    return max((len(r.detection_runs) for r in records), default=0)


def per_seed_map50(record: CandidateResult, protocol: str) -> list[float | None]:
    """The record's mAP@50 under ``protocol`` for each detector seed, in seed order."""
    return [_under(run, "map50", protocol) for run in sorted(record.detection_runs, key=lambda run: run.seed)]


def _fmt_noise(iv: Interval | None) -> str:
    """A gain interval's two noise sources: the seeds' spread (sd) and the shared images' standard error."""
    if iv is None or iv.seed_std is None:
        return "-"
    return f"{iv.seed_std:.3f} / {iv.image_se:.3f}"


def table_rows(records: list[CandidateResult], pm: bool = True, protocol: str = "field",
               intervals: ProtocolIntervals | None = None) -> list[dict[str, str]]:
    """One formatted row per candidate, ranked by ``protocol``; ``pm`` adds ± std where there are several seeds,
    ``intervals`` (this protocol's bootstrap section) the gain's 95% interval."""
    other = "deployed" if protocol == "field" else "field"
    gains = intervals.gains if intervals is not None else {}
    rows = []
    for rank, r in enumerate(ranked(records, protocol), start=1):
        det = r.detection or DetectionSummary()
        gain = r.gain_map50
        gain_text = "-" if gain is None else f"{_shown_gain(gain):+.3f}".replace("+0.000", "0.000")
        if gain is not None and r.name in gains:
            # the interval with its own point estimate (pycocotools, as the verdict quotes it): under the field
            # protocol the table's mAP is Ultralytics', whose interpolation differs from pycocotools' by ~0.005
            gain_text = _fmt_interval(gains[r.name])
        row = {
            "rank": str(rank) if _map50(r, protocol) is not None else "-",
            "candidate": r.name,
            "mAP@50": _fmt(_stat(r, "map50", protocol), pm=pm),
            f"mAP@50 {other}": _fmt(_stat(r, "map50", other), pm=pm),
            "mAP@50 per seed": " / ".join("-" if v is None else f"{v:.3f}" for v in per_seed_map50(r, protocol))
            or "-",
            "gain vs best single": gain_text,
            "gain noise: seed sd / image se": _fmt_noise(gains.get(r.name)),
            "mAP@50:95": _fmt(_stat(r, "map50_95", protocol), pm=pm),
            "P": _fmt(det.precision, pm=False),
            "R": _fmt(det.recall, pm=False),
            **{f"AP50 {c}": _fmt(_named(_under(det, "ap50", protocol), c), pm=pm) for c in class_names_of(records)},
            **{f"mAP@50 {s}": _fmt(_scenario_stat(r, s, protocol), pm=pm) for s in _scenarios(records)},
            **{m: _fmt(_named(r.fusion, m), digits=3) if r.fused_image else NO_FUSED_IMAGE
               for m in FUSION_METRICS},
            **{m: _fmt(_temporal(r, m), digits=3) if r.fused_image else NO_FUSED_IMAGE
               for m in TEMPORAL_COLUMNS},
            "fuse ms/img": "-" if r.fuse_seconds_per_image is None else f"{1000 * r.fuse_seconds_per_image:.1f}",
            "status": "ok" if not r.error else "FAILED (see below)",
        }
        rows.append(row)
    return rows


def markdown_table(columns: list[str], rows: list[dict[str, str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: RunResults) -> str:
    """The human report: header (data, split, preset, seeds), the ranked table, the verdict, Spearman, scenarios,
    robustness and sudden change. ``results`` is the results document (``RunResults.from_dict`` reads a
    results.json back)."""
    records, data, cfg = results.candidates, results.data, results.config
    out = io.StringIO()
    out.write("# Which fusion helps the detector\n\n")
    if data.synthetic:
        out.write("> **SYNTHETIC DATA.** These numbers come from the built-in synthetic M3FD-layout scenes, not from "
                  "real M3FD. Run with `--data /path/to/M3FD` (or set `M3FD_ROOT`) for real rankings.\n\n")
    split, select = data.split, cfg.select_split
    kept = (f"keep their best epoch on `{select}` ({split.size(select)})" if cfg.keeps_best_epoch else
            f"keep their last epoch (the recipe validates only at the end, `val: false`, so `{select}` picks nothing)")
    out.write(f"- data: `{data.root}` ({data.n_images} pairs; split method `{split.method}`): "
              f"detectors learn on `{cfg.train_split}` ({split.size(cfg.train_split)} images), {kept} and "
              f"are scored on `{cfg.eval_split}` ({split.size(cfg.eval_split)})\n")
    if select == cfg.eval_split and cfg.keeps_best_epoch:
        out.write("- **note:** the best epoch was chosen on the scored images, so every mAP here is optimistic, "
                  "the noisier candidates' most; score on a separate split (`--eval-split test`) to rank fairly\n")
    recipe = cfg.detection
    out.write(f"- detector: `{recipe['model']}` preset `{cfg.preset}`, imgsz {recipe['imgsz']}, "
              f"{recipe['epochs']} epochs, seeds {cfg.seeds} (mean ± std over seeds)\n")
    resumed = [f"`{r.name}` seed {run.seed}" for r in records for run in r.detection_runs if run.resumed]
    if resumed:
        out.write(f"- **note:** detector run(s) {', '.join(resumed)} resumed after an interruption: Ultralytics "
                  "resumes from its EMA checkpoint without the random state, so those numbers can differ slightly "
                  "from an uninterrupted run's\n")
    out.write(f"- fusion metrics: mean over the `{cfg.eval_split}` images, reference-evaluator conventions "
              "(MI, SCD, VIF, SSIM summed over the sources; MI in nats)")
    if any(_has_temporal(records, m) for m in TEMPORAL_COLUMNS):
        runs = next((r.temporal.get("n_runs") for r in records if r.temporal), 0)
        out.write(f"; temporal consistency over its {runs} runs of consecutive frames (`fusion.video.temporal`: flicker "
                  "in grey levels per frame beyond the sources' own change, 0 is none; temporal_correlation 1 means "
                  "the fused changes follow the sources')")
    out.write("\n\n")
    protocol, boot = cfg.protocol, results.bootstrap
    intervals = None if boot is None else boot.protocols.get(protocol)
    out.write(f"- ranked by mAP@50 under the {PROTOCOL_WORDS[protocol]}; the other protocol's mAP@50 is beside it "
              "(`--protocol` switches)")
    if intervals is not None:
        method = boot.method  # written with the first protocol's intervals
        n_seeds = len(cfg.seeds)
        if is_provisional(intervals):
            out.write(f"; gains with 95% intervals over the {method['n_images']} scored images only (paired "
                      f"bootstrap, {method['n_resamples']} resamples, seed {method['seed']}): **one detector "
                      "seed, so the noise of training is not in them** and the verdict is provisional")
        else:
            out.write(f"; gains with 95% intervals holding both the noise of training ({n_seeds} detector seeds, "
                      "paired by seed: their spread is the `seed sd`) and of the evaluation images (paired bootstrap "
                      f"over the {method['n_images']} scored images, {method['n_resamples']} resamples, seed "
                      f"{method['seed']}: `image se`), Student-t (`detection.bootstrap`)")
        if protocol == "field":
            out.write("; a gain with an interval is pycocotools' on the validator's predictions (the bootstrap's "
                      "point estimate), which differs from the difference of the Ultralytics mAP@50 column by "
                      "their AP interpolations")
    out.write("\n\n")
    rows = table_rows(records, protocol=protocol, intervals=intervals)
    out.write(markdown_table(table_columns(records, protocol), rows) + "\n\n")
    out.write(verdict(records, results.best_single_map50, protocol, intervals) + "\n\n")
    disagreement = ranking_disagreement(records, protocol)
    if disagreement:
        out.write(disagreement + "\n\n")
    if results.spearman:
        out.write("## Which fusion metric predicts detector utility (Spearman ρ with mAP@50 across candidates)\n\n")
        srows = [{"metric": s.metric, "rho": "-" if s.rho is None else f"{s.rho:+.2f}",
                  "p": "-" if s.p is None else f"{s.p:.2f}", "n": str(s.n)} for s in results.spearman]
        out.write(markdown_table(["metric", "rho", "p", "n"], srows) + "\n\n")
    if results.scenarios:
        out.write("## Scenarios in the evaluated split\n\n")
        srows = [{"scenario": s, "images": str(size.n_images), "boxes": str(size.n_boxes)}
                 for s, size in results.scenarios.items()]
        out.write(markdown_table(["scenario", "images", "boxes"], srows) + "\n\n")
    robust = results.robustness
    if robust is not None and robust.cells:
        out.write(render_robustness(robust) + "\n")
    sudden = results.sudden_change
    if sudden is not None and sudden.table:
        out.write(f"## Sudden change of visibility (`{sudden.corruption}`)\n\n"
                  + Path(sudden.table).read_text() + f"\n\nPlot: `{sudden.plot}`.\n\n")
    origins = [r for r in records if r.origin]
    if origins:
        out.write("## Candidates\n\n")
        for r in origins:
            out.write(f"- `{r.name}`: {r.origin}\n")
        out.write("\n")
    failed = [r for r in records if r.error]
    if failed:
        out.write("## Failed candidates\n\n")
    for r in failed:
        out.write(f"- `{r.name}`: " + r.error.replace("\n", "\n  ") + "\n")
    return out.getvalue()


def render_robustness(robust: Robustness) -> str:
    """The robustness table: deployed mAP@50 per candidate and corruption, with the drop from clean and its 95%
    interval, and one line per corruption at its worst severity saying whether any fusion still beats the better
    single modality there."""
    cells = robust.cells
    names = list(dict.fromkeys(n for cell in cells.values() for n in cell.candidates))
    columns = ["candidate"] + list(cells)
    rows = []
    for name in names:
        row = {"candidate": name}
        for cell_name, cell in cells.items():
            score = cell.candidates.get(name)
            drop = None if cell.intervals is None else cell.intervals.drop.get(name)
            text = _fmt(None if score is None else score.map50_deployed, pm=False)
            if drop is not None:
                text += f" ({_fmt_interval(drop)})"
            row[cell_name] = text
        rows.append(row)
    out = io.StringIO()
    out.write("## Robustness: the trained detectors on corrupted evaluation inputs\n\n")
    out.write(f"Deployed mAP@50 under each corruption/severity (`data.corruptions`, seed {robust.seed}; visible "
              "corrupted by all five, infrared by noise and blur only; no retraining), with the change from clean and "
              "its 95% interval in brackets (over the detector seeds and the images; one seed: the images only).\n\n")
    out.write(markdown_table(columns, rows) + "\n\n")
    worst = {}
    for cell_name in cells:
        corruption, severity = cell_name.rsplit("/", 1)
        worst[corruption] = cell_name if corruption not in worst or int(severity) > int(
            worst[corruption].rsplit("/", 1)[1]) else worst[corruption]
    for corruption, cell_name in worst.items():
        iv = cells[cell_name].intervals
        if iv is None or not iv.reference:
            continue
        wins = [f"`{n}` {_fmt_interval(g)}" for n, g in (iv.gains or {}).items()
                if n not in robust.singles and g.low > 0]
        if is_provisional(iv):
            out.write(f"- {cell_name}: better single modality `{iv.reference}`; "
                      + (f"ahead of it on these images ({PROVISIONAL}): {', '.join(wins)}\n" if wins
                         else "no fusion is ahead of it even on these images\n"))
        else:
            out.write(f"- {cell_name}: better single modality `{iv.reference}`; "
                      + (f"fusions that still beat it: {', '.join(wins)}\n" if wins
                         else "no fusion is shown to beat it\n"))
    for name, why in robust.skipped.items():
        out.write(f"- `{name}` left out: {why}\n")
    return out.getvalue()


def plot_robustness(path: Path, robust: Robustness, clean: dict[str, float]) -> None:
    """Deployed mAP@50 against severity (0 = clean), one panel per corruption, one line per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = robust.cells
    corruptions = list(dict.fromkeys(c.rsplit("/", 1)[0] for c in cells))
    if not corruptions:
        return
    names = list(dict.fromkeys(n for cell in cells.values() for n in cell.candidates))
    fig, axes = plt.subplots(1, len(corruptions), figsize=(4 * len(corruptions), 3.5), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, corruption in zip(axes[0], corruptions):
        for name in names:
            xs, ys, lo, hi = [0], [clean.get(name, np.nan)], [0.0], [0.0]
            for cell_name, cell in cells.items():
                if cell_name.rsplit("/", 1)[0] != corruption or name not in cell.candidates:
                    continue
                stat = cell.candidates[name].map50_deployed
                value = np.nan if stat is None else stat.mean
                iv = None if cell.intervals is None else cell.intervals.map50.get(name)
                xs.append(int(cell_name.rsplit("/", 1)[1]))
                ys.append(value)
                lo.append(value - iv.low if iv is not None else 0.0)
                hi.append(iv.high - value if iv is not None else 0.0)
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, label=name)
        ax.set_title(corruption)
        ax.set_xlabel("severity (0 = clean)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mAP@50 deployed")
    axes[0][-1].legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _blank(value: Any) -> Any:
    """A CSV cell: the value, or empty where there is none."""
    return "" if value is None else value


def write_csv(path: Path, records: list[CandidateResult], protocol: str = "field",
              bootstrap: Bootstrap | None = None) -> None:
    """Machine-readable table: one row per candidate (ranked by ``protocol``), plain numbers (means and stds in
    separate columns), both protocols, and the bootstrap intervals of mAP@50 and of the gain where computed."""
    columns = ["rank", "candidate", "kind", "status", "error", "map50", "map50_std", "gain_map50", "map50_95",
               "map50_95_std", "precision", "recall", "coco_map50", "map50_deployed", "map50_deployed_std",
               "map50_95_deployed"]
    sections = bootstrap.protocols if bootstrap is not None else {}
    for p in ("field", "deployed"):
        columns += [f"{p}_map50_low", f"{p}_map50_high", f"{p}_gain", f"{p}_gain_low", f"{p}_gain_high",
                    f"{p}_gain_seed_std", f"{p}_gain_image_se", f"{p}_per_seed", f"{p}_n_seeds"]
    classes = class_names_of(records)
    columns += [f"ap50_{c}" for c in classes]
    scenarios = _scenarios(records)
    columns += [f"ap50_deployed_{c}" for c in classes]
    columns += [f"map50_{s}" for s in scenarios] + [f"map50_deployed_{s}" for s in scenarios]
    columns += list(FUSION_METRICS) + list(TEMPORAL_COLUMNS) + ["fuse_seconds_per_image", "origin"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()

    def mean(stat: MeanStd | None) -> Any:
        return "" if stat is None else stat.mean

    def std(stat: MeanStd | None) -> Any:
        return "" if stat is None else stat.std

    for rank, r in enumerate(ranked(records, protocol), start=1):
        det = r.detection or DetectionSummary()
        row = {"rank": rank if _map50(r, protocol) is not None else "", "candidate": r.name, "kind": r.kind,
               "status": "error" if r.error else "ok", "error": r.error or "",
               "map50": mean(det.map50), "map50_std": std(det.map50), "gain_map50": _blank(r.gain_map50),
               "map50_95": mean(det.map50_95), "map50_95_std": std(det.map50_95),
               "precision": mean(det.precision), "recall": mean(det.recall), "coco_map50": mean(det.coco_map50),
               "fuse_seconds_per_image": r.fuse_seconds_per_image or "", "origin": r.origin or "",
               "map50_deployed": mean(det.map50_deployed), "map50_deployed_std": std(det.map50_deployed),
               "map50_95_deployed": mean(det.map50_95_deployed)}
        for p, section in sections.items():
            own = section.map50.get(r.name)
            gain = section.gains.get(r.name)
            row.update({f"{p}_map50_low": "" if own is None else own.low,
                        f"{p}_map50_high": "" if own is None else own.high,
                        f"{p}_gain": "" if gain is None else gain.point,
                        f"{p}_gain_low": "" if gain is None else gain.low,
                        f"{p}_gain_high": "" if gain is None else gain.high,
                        f"{p}_gain_seed_std": "" if gain is None else _blank(gain.seed_std),
                        f"{p}_gain_image_se": "" if gain is None else _blank(gain.image_se),
                        f"{p}_per_seed": " ".join(f"{v:.6f}" for v in section.per_seed.get(r.name, [])),
                        f"{p}_n_seeds": "" if own is None else own.n_seeds})
        row.update({f"ap50_deployed_{c}": mean(_named(det.ap50_deployed, c)) for c in classes})
        row.update({f"map50_deployed_{s}": mean(_scenario_stat(r, s, "deployed")) for s in scenarios})
        row.update({f"ap50_{c}": mean(_named(det.ap50, c)) for c in classes})
        row.update({f"map50_{s}": mean(_scenario_stat(r, s, "field")) for s in scenarios})
        row.update({k: _blank(_named(r.fusion, k)) for k in FUSION_METRICS})
        row.update({k: _blank(_temporal(r, k)) for k in TEMPORAL_COLUMNS})
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def plot_metric_vs_map(path: Path, records: list[CandidateResult], protocol: str = "field") -> None:
    """mAP@50 (under ``protocol``) against each fusion metric, one panel per metric, one point per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [r for r in records if _map50(r, protocol) is not None and r.fusion]
    fig, axes = plt.subplots(3, 3, figsize=(12, 10), constrained_layout=True)
    for ax, metric in zip(axes.flat, FUSION_METRICS):
        for r in usable:
            x, y = _named(r.fusion, metric), _map50(r, protocol)
            if x is None:
                continue
            std = _stat(r, "map50", protocol).std
            ax.errorbar([x], [y], yerr=[std] if std else None, fmt="o")
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(metric)
        ax.set_ylabel(f"mAP@50 ({protocol})")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Detector mAP@50 ({protocol} protocol) against each fusion metric")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def plot_gains(path: Path, bootstrap: Bootstrap | None) -> None:
    """Each candidate's gain over the better single modality with its 95% interval, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = {p: s for p, s in (bootstrap.protocols if bootstrap is not None else {}).items() if s.gains}
    if not sections:
        return
    fig, axes = plt.subplots(1, len(sections), figsize=(6 * len(sections), 0.5 * max(
        len(s.gains) for s in sections.values()) + 2), squeeze=False, constrained_layout=True)
    for ax, (protocol, section) in zip(axes[0], sections.items()):
        items = sorted(section.gains.items(), key=lambda kv: kv[1].point)
        for y, (name, iv) in enumerate(items):
            colour = "tab:green" if iv.low > 0 else "tab:red" if iv.high < 0 else "tab:grey"
            ax.errorbar([iv.point], [y], xerr=[[iv.point - iv.low], [iv.high - iv.point]],
                        fmt="o", color=colour, capsize=3)
        ax.set_yticks(range(len(items)), [name for name, _ in items])
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlabel(f"mAP@50 gain over `{section.reference}` (95% interval)")
        ax.set_title(f"{protocol} protocol")
        ax.grid(alpha=0.3, axis="x")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def scene_grid(images: dict[str, list[np.ndarray]], tile_width: int = 256) -> np.ndarray:
    """A grid image: one row per candidate (its name written at the left), one column per scene.

    ``images`` maps candidate name -> list of uint8 images (grey or BGR), the same scenes in the same order.
    """
    import cv2

    label_w = 150
    rows = []
    for name, tiles in images.items():
        cells = []
        for tile in tiles:
            tile = tile if tile.ndim == 3 else cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR)
            h = max(1, round(tile.shape[0] * tile_width / tile.shape[1]))
            cells.append(cv2.resize(tile, (tile_width, h), interpolation=cv2.INTER_AREA))
        height = max(c.shape[0] for c in cells)
        cells = [cv2.copyMakeBorder(c, 0, height - c.shape[0], 0, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
                 for c in cells]
        label = np.full((height, label_w, 3), 255, np.uint8)
        cv2.putText(label, name[:18], (5, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.hstack([label] + cells))
    width = max(r.shape[1] for r in rows)
    rows = [cv2.copyMakeBorder(r, 0, 2, 0, width - r.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
            for r in rows]
    return np.vstack(rows)


def write_scene_grid(path: Path, images: dict[str, list[np.ndarray]]) -> None:
    write_image(path, scene_grid(images))
