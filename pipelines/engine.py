"""The pipeline engine: rank fusion checkpoints, other methods and simple rules by the mAP@50 they give a detector.

``run_pipeline(PipelineConfig(...))`` is what ``python pipelines/run_m3fd.py`` calls. It only orders the stages
(``pipelines.stages``: fuse -> score -> detect -> robustness -> outputs), hands the detector runs to an executor
(``pipelines.executors``), and assembles the results. Each stage caches its work in one keyed store
(``data.store.KeyedStore``): a repeated run with the same inputs does no fusing and no detector training that
already finished, and a killed run picks up where it stopped. One failing candidate is reported with its error;
the others still run. Every check (options, dataset, candidates) passes before the first write into ``--out``.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from data.errors import DatasetError
from data.io import read_record, write_record
from data.lock import hold_folder_lock, raise_if_locked
from data.provenance import content_key, package_versions
from data.store import RECORD_NAME, KeyedStore, finished
from fusion.fusers.baselines import BASELINE_NAMES, RULES  # no torch: the simple rules only

from . import report
from .candidates import (
    Candidate,
    CandidateError,
    CandidateSpec,
    build_source,
    check_unique,
    checkpoint_specs,
    parse_fused,
    parse_fuser,
    released_spec,
)
from .config import OptionsError, PipelineConfig, PipelinePreset, check_options, load_pipeline_preset, torch_device
from .datasets import dataset_root, prepare_out, resolve_dataset
from .executors import ExecutorConfig, RunExecutor, default_executor
from .progress import Progress
from .records import CandidateResult, DatasetInfo, RunConfig, RunResults, ScenarioSize
from .stages.detect import (
    clear_tb_events,
    detection_settings,
    export_fused,
    export_stack,
    queue_detector_jobs,
    run_detector_jobs,
)
from .stages.fuse import source_fingerprint, stage_fuse, used_ids
from .stages.late import stage_late
from .stages.outputs import write_outputs
from .stages.robustness import stage_robustness
from .stages.score import stage_score
from .stages.sudden import stage_sudden_change

LOGGER = logging.getLogger(__name__)


def candidate_specs(cfg: PipelineConfig, preset: PipelinePreset | None = None,
                    modalities: Sequence[str] = ("ir", "vis")) -> list[CandidateSpec]:
    """Every row's spec: one single-modality row per modality (always: every gain is measured against the better
    of them), the simple rules, the pre-fused folders and plug-ins named on the command line, the released
    DAE-Fuse, early and late fusion, then the checkpoints (named around the others).

    Raises:
        OptionsError: an unknown baseline, a malformed ``--fused``/``--fuser``, or two candidates with one name.
    """
    preset_baselines = preset.baselines if preset is not None else None
    baselines = cfg.baselines if cfg.baselines is not None else (preset_baselines or BASELINE_NAMES)
    unknown = [n for n in baselines if n not in BASELINE_NAMES and n not in modalities]
    if unknown:
        raise OptionsError(f"unknown baseline(s) {unknown}; known: {', '.join(dict.fromkeys([*modalities, *RULES]))}")
    specs = [single_modality_spec(m) for m in modalities]
    specs += [CandidateSpec(name=n, kind="baseline", fuser=n) for n in baselines if n in RULES]
    try:
        specs += [parse_fused(text) for text in cfg.fused] + [parse_fuser(tokens) for tokens in cfg.plugins]
    except CandidateError as err:
        raise OptionsError(str(err)) from None
    released = cfg.released_dae_fuse if cfg.released_dae_fuse is not None else (preset and preset.released_dae_fuse)
    if released:
        specs.append(released_spec())
    early = cfg.early_fusion if cfg.early_fusion is not None else (preset and preset.early_fusion)
    late = cfg.late_fusion if cfg.late_fusion is not None else (preset and preset.late_fusion)
    if early:
        specs.append(CandidateSpec(name="stack", kind="stack"))
    if late:
        specs.append(CandidateSpec(name="late", kind="late", args={"method": cfg.late_method}))
    problems = check_unique(specs)
    if problems:
        raise OptionsError("; ".join(problems))
    return specs + checkpoint_specs(cfg.checkpoints, {s.name for s in specs})


def single_modality_spec(modality: str) -> CandidateSpec:
    """The row of one modality alone (its passthrough), named by the modality."""
    from fusion.fusers.baselines import PASSTHROUGH_NAMES

    if modality in PASSTHROUGH_NAMES:
        return CandidateSpec(name=modality, kind="baseline", fuser=modality)
    return CandidateSpec(name=modality, kind="baseline", fuser="passthrough", args={"modality": modality})


def build_candidates(cfg: PipelineConfig, dataset=None, preset: PipelinePreset | None = None) -> list[Candidate]:
    """The candidates, each built (fusers, plug-ins) or checked (folders, checkpoints) here, before heavy work.

    A plug-in that does not build or a folder that does not hold the splits' images refuses the run, every such
    problem in one ``OptionsError``: both are the command line's mistakes. A checkpoint that does not load stays in
    the table as a failed row while the others run.
    """
    from fusion.fusers.base import FuserSpecError
    from fusion.models.checkpoint import CheckpointError

    modalities = dataset.modalities if dataset is not None else ("ir", "vis")
    candidates = [Candidate(spec) for spec in candidate_specs(cfg, preset, modalities)]
    pairs, sizes = [], {}
    if dataset is not None:
        wanted = set(used_ids(cfg, dataset))
        pairs = [p for p in dataset.pairs() if p.stem in wanted]
        sizes = {p.stem: (dataset.annotation(p.stem).width, dataset.annotation(p.stem).height) for p in pairs}
    refused = []
    for cand in candidates:
        if not cand.spec.fuses_images:
            continue
        try:
            cand.fuser = build_source(cand.spec, device=torch_device(cfg.device), pairs=pairs, sizes=sizes)
        except CheckpointError as err:
            cand.error = f"checkpoint rejected: {err}"
            print(f"WARNING: {cand.checkpoint}: {cand.error}", flush=True)
        except Exception as err:  # noqa: BLE001 - a plug-in's own failure, whatever its type, refuses the run
            prefix = "" if isinstance(err, (FuserSpecError, DatasetError)) else f"{type(err).__name__}: "
            refused.append(f"candidate '{cand.name}' ({cand.spec.origin}): {prefix}{err}")
    if refused:
        raise OptionsError("\n".join(refused))
    return candidates


def train_fusion_here(cfg: PipelineConfig, preset_name: str, dataset, store: KeyedStore) -> Path:
    """Train a DAE-Fuse with a short schedule on the training split. Returns its checkpoint.

    The training is a resumable folder of the run's store (``KeyedStore.folder``): it trains in
    ``fusion_training/<key>.partial`` (a killed run resumes from its ``last.pt``), renamed to
    ``fusion_training/<key>`` once finished with its checkpoint's name as the record, and reused while that
    checkpoint is there. A run finished by a version that kept its record in ``state/_fusion_training`` is reused;
    one it left unfinished is trained again and replaces its folder whole. ``--force`` trains it again once.

    The trainer reads the run's dataset again by its root, reader and options; the run showed that dataset's
    DatasetWarnings when it loaded it, so the second read's are not shown again."""
    import warnings

    from fusion.training.config import load_train_config
    from fusion.training.train import train

    from data.datasets import parse_options
    from data.errors import DatasetWarning

    base = load_train_config(preset=preset_name)
    fusion_cfg = replace(base, data=replace(base.data, dataset=dataset.name if cfg.dataset is None else cfg.dataset,
                                            dataset_options={"seed": cfg.split_seed,
                                                             **parse_options(cfg.dataset_options)}))
    ids = sorted(dataset.splits[cfg.train_split])
    key = content_key("dae_fuse_train", asdict(fusion_cfg), str(dataset.root), ids, source_fingerprint(dataset, ids),
                      torch_device(cfg.device))
    run_dir = cfg.out / "fusion_training" / key[:12]
    _adopt_earlier_training(store, run_dir, key)

    def build(tmp: Path) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        resume = (tmp / "last.pt").is_file()
        if store.force and not resume:  # trained again from scratch: its curves replace the old ones
            clear_tb_events(cfg.out / "tb" / "fusion_training")
        writer = SummaryWriter(str(cfg.out / "tb" / "fusion_training"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DatasetWarning)
                result = train(fusion_cfg, dataset.root, tmp, device=torch_device(cfg.device), resume=resume,
                               tb_writer=writer, progress=cfg.progress, split=cfg.train_split)
        finally:
            writer.close()
        return {"checkpoint": str(Path(result.best_checkpoint).relative_to(tmp)), "wall_time_s": result.wall_time_s}

    stored, reused = store.folder(run_dir, key, build, resumable=True,
                                  accept=lambda done: (run_dir / done.get("checkpoint", "")).is_file())
    checkpoint = run_dir / stored["checkpoint"]
    if reused:
        LOGGER.info("DAE-Fuse trained here reused: %s", checkpoint)
    return checkpoint


def _adopt_earlier_training(store: KeyedStore, run_dir: Path, key: str) -> None:
    """A DAE-Fuse training finished in ``run_dir`` by a version that recorded it in ``state/_fusion_training``
    (not in the folder) gets the folder's record, so the store reuses it; the old record goes."""
    earlier_record = store.root / "_fusion_training" / "train.json"
    earlier = read_record(earlier_record, key)
    if not isinstance(earlier, dict):
        return
    name = Path(earlier.get("checkpoint", "")).name  # the run's folder is this one (its name is the key's)
    if name and finished(run_dir) is None and (run_dir / name).is_file():
        write_record(run_dir / RECORD_NAME, key, {"checkpoint": name, "wall_time_s": earlier.get("wall_time_s")})
    earlier_record.unlink(missing_ok=True)


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole comparison; returns the results document as written to OUT/results.json (its JSON).

    Every check (options, dataset, candidates) passes before the first write into ``--out``, and from that write to
    its end the run holds ``--out``'s lock (``data.lock``): a second run on the same ``--out`` (another terminal, a
    requeued cluster job) is refused at once with ``FolderLocked`` instead of tearing the first one's files.
    """
    started = time.time()
    cfg = replace(cfg, out=Path(cfg.out).resolve())
    preset = load_pipeline_preset(cfg.preset)
    seeds = list(dict.fromkeys(cfg.seeds if cfg.seeds is not None else preset.seeds))  # a repeat is no new seed
    jobs = cfg.jobs or preset.jobs
    problems = check_options(cfg, seeds, jobs)
    try:
        settings = detection_settings(cfg, preset.detection)
    except ValueError as err:
        problems.append(str(err))
    if problems:  # options first: cheap, and every candidate would fail the same way after hours of work
        raise OptionsError("; ".join(problems))
    raise_if_locked(cfg.out)  # a run already busy in --out: refused now, not after checking the data

    # 1. Up-front validation: the dataset and every candidate, before anything is written into --out. The lock lives
    # in --out (not beside it, where the parent folder may be shared or read-only) and is taken at the first write,
    # so a refused run creates nothing; a run refused by the lock finds --out and the lock file already there.
    with contextlib.ExitStack() as held:
        generated = dataset_root(cfg) is None
        if generated:  # the synthetic scenes are written into --out, so under its lock, after the cheap checks
            candidate_specs(cfg, preset)  # the command line's own mistakes refuse the run before --out exists
            held.enter_context(hold_folder_lock(cfg.out))
        dataset, data_info = resolve_dataset(cfg, preset.synthetic)
        candidates = build_candidates(cfg, dataset, preset)
        if not generated:
            held.enter_context(hold_folder_lock(cfg.out))
        prepare_out(cfg, dataset)
        executor = held.enter_context(RunExecutor(ExecutorConfig(
            name=cfg.executor or default_executor(jobs), jobs=jobs, scheduler=cfg.scheduler,
            gpus_per_job=cfg.gpus_per_job)))
        return compare_candidates(cfg, preset, seeds=seeds, executor=executor, settings=settings, dataset=dataset,
                                  data_info=data_info, candidates=candidates, started=started)


def compare_candidates(cfg: PipelineConfig, preset: PipelinePreset, *, seeds: list[int], executor: RunExecutor,
                       settings: dict[str, Any], dataset, data_info: DatasetInfo, candidates: list[Candidate],
                       started: float) -> dict[str, Any]:
    """Steps 2-4 of ``run_pipeline`` on its checked inputs, with ``--out`` locked: fuse, score and export every
    candidate, train and score the detectors, then assemble and write the results."""
    store = KeyedStore(cfg.out / "state", force=cfg.force)
    train_here = cfg.train_dae_fuse if cfg.train_dae_fuse is not None else (
        preset.train_dae_fuse and not cfg.checkpoints)
    if train_here:
        candidates.append(Candidate(CandidateSpec(name=f"dae_fuse_{preset.fusion_train}", kind="trained")))

    scenario_ids = {s: sorted(v) for s, v in dataset.scenario_ids(cfg.eval_split).items() if v}
    progress = Progress("candidate", len(candidates))
    pending_jobs: list[tuple[Candidate, dict[str, Any]]] = []

    # 2. Per candidate: (train) -> fuse -> score -> export; detector runs are queued (they may run concurrently).
    for k, cand in enumerate(candidates, start=1):
        if cand.error or cand.kind == "late":  # late fusion waits for the single-modality detectors (step 3)
            progress.finished()
            continue
        try:
            if cand.kind == "trained":
                progress.stage(k, cand.name, "training DAE-Fuse")
                checkpoint = train_fusion_here(cfg, preset.fusion_train, dataset, store)
                cand.spec = replace(cand.spec, fuser="dae_fuse", args={"checkpoint": checkpoint})
            if cand.kind == "stack":
                progress.stage(k, cand.name, "exporting the modalities as one multi-channel image each")
                yolo = export_stack(cfg, dataset, store)
                input_key = yolo.key
            else:
                progress.stage(k, cand.name, "fusing")
                cand.record.fuse = stage_fuse(cfg, cand, dataset, store, executor)
                progress.stage(k, cand.name, "fusion and temporal metrics")
                cand.record.scores = stage_score(cfg, cand, dataset, cand.record.fuse, store)
                progress.stage(k, cand.name, "exporting detection dataset")
                yolo, input_key = export_fused(cfg, cand, dataset, store), cand.record.fuse.key
            jobs = queue_detector_jobs(cfg, cand, yolo, input_key, dataset, settings=settings, seeds=seeds,
                                       scenarios=scenario_ids, store=store)
            pending_jobs += [(cand, job) for job in jobs]
        except Exception as err:  # noqa: BLE001 - one failing candidate must not stop the others
            LOGGER.exception("candidate %s failed", cand.name)
            cand.error = f"{type(err).__name__}: {err}"
        progress.finished()

    # 3. Detector trainings: one at a time, --jobs N at once where the hardware allows, or on a Dask cluster;
    # then late fusion merges the single-modality detectors' boxes (no training).
    run_detector_jobs(pending_jobs, executor, store)
    singles = [c for c in candidates if c.spec.modality is not None]
    for cand in candidates:
        if cand.kind == "late" and not cand.error:
            try:
                stage_late(cfg, cand, singles, dataset, seeds=seeds, scenarios=scenario_ids, store=store)
            except Exception as err:  # noqa: BLE001 - one failing candidate must not stop the others
                LOGGER.exception("candidate %s failed", cand.name)
                cand.error = f"{type(err).__name__}: {err}"

    # 3b. Robustness: the trained detectors scored again on corrupted evaluation inputs (no retraining).
    robustness = stage_robustness(cfg, candidates, dataset, settings, seeds, store, executor)

    # 4. Assemble, rank, write.
    eval_annotations = dataset.annotations(cfg.eval_split)
    scenarios = {s: ScenarioSize(n_images=len(ids), n_boxes=sum(len(eval_annotations[i].boxes) for i in ids))
                 for s, ids in scenario_ids.items()}
    results = assemble_results(cfg, preset, seeds, settings, data_info, candidates, scenarios, time.time() - started)
    results.robustness = robustness
    results.sudden_change = stage_sudden_change(cfg, candidates, dataset)
    write_outputs(cfg, results, dataset, sorted(dataset.splits[cfg.eval_split]))
    return results.to_dict()


def assemble_results(cfg: PipelineConfig, preset: PipelinePreset, seeds: list[int], settings: dict,
                     data_info: DatasetInfo, candidates: list[Candidate], scenarios: dict[str, ScenarioSize],
                     wall: float) -> RunResults:
    """The results document: config, versions, data and split, ranked candidates, bootstrap, Spearman, scenarios
    (``stages.outputs`` writes it, once, as results.json). The rows are assembled and judged as
    ``pipelines.records`` dataclasses."""
    records = []
    for cand in candidates:
        runs = [cand.record.detection_runs[s] for s in seeds if s in cand.record.detection_runs]
        fuse, scores = cand.record.fuse, cand.record.scores
        records.append(CandidateResult(
            name=cand.name, kind=cand.kind, baseline=cand.baseline, single_modality=cand.spec.modality,
            fused_image=cand.spec.fuses_images, checkpoint=str(cand.checkpoint) if cand.checkpoint else None,
            error=cand.error, origin=cand.spec.origin, spec=cand.spec,
            fusion=scores.metrics if scores else None, temporal=scores.temporal if scores else None,
            fuse_seconds_per_image=fuse.seconds_per_image if fuse else None, fused_dir=fuse.dir if fuse else None,
            # A candidate with any failed seed is not ranked: a mean over fewer seeds than the others' is no match.
            detection=report.summarise_detection(runs) if runs and not cand.error else None,
            detection_runs=runs))
    best_single = report.add_gains(records, cfg.protocol)
    bootstrap = None
    if cfg.bootstrap_resamples:
        from .significance import bootstrap_verdicts

        started = time.perf_counter()
        bootstrap = bootstrap_verdicts(records, seeds, cfg.bootstrap_resamples, cfg.bootstrap_seed)
        bootstrap.seconds = round(time.perf_counter() - started, 3)
    return RunResults(
        config=RunConfig.of(cfg, seeds=seeds, detection=settings, preset=preset), versions=package_versions(),
        data=data_info, candidates=report.ranked(records, cfg.protocol),
        best_single_map50=best_single, bootstrap=bootstrap,
        spearman=report.spearman_table(records, cfg.protocol) if len(records) >= 3 else [], scenarios=scenarios,
        wall_time_s=wall, command=" ".join(sys.argv))


