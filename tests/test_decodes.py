"""How often the fuse, score and export stages decode an image, counted through a reader that counts its calls: each
source once on its way to the scores, no fused image again when it was just fused, and the numbers those of reading
every file (fusion.metrics.image.evaluate_triples, fusion.video.temporal.evaluate_sequences), bit for bit; the YOLO
exports take sizes from the headers (none decoded for the fused export, each source once to stack it) and write
what they wrote when they decoded for the sizes, byte for byte."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import data.io
import detection.export as export_module
import pipelines.stages.fuse as fuse_stage
from data.io import clear_dir, decoding_once, gray_reference_of, read_gray_reference, read_ir, write_image
from data.m3fd import load_m3fd
from data.probe import probe_images
from data.store import KeyedStore
from data.synthetic import generate_synthetic_m3fd
from fusion.fusers.base import SourceSet, fuse_images, read_sources
from fusion.fusers.catalog import create_fuser
from fusion.fusers.fuse import fuse_folder
from pipelines.candidates import Candidate, CandidateSpec
from pipelines.config import PipelineConfig
from pipelines.executors import LocalExecutor
from pipelines.stages.detect import detector_splits, export_fused, export_stack
from pipelines.stages.fuse import stage_fuse, used_ids
from pipelines.stages.score import EvalScorer, score_fused, score_plan, stage_score


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """Twelve scenes of three consecutive frames (96x80, colour visible): runs of frames in every split."""
    return generate_synthetic_m3fd(tmp_path_factory.mktemp("decodes") / "m3fd", num_scenes=12, frames_per_scene=3,
                                   size=(96, 80))


@pytest.fixture
def decodes(monkeypatch) -> Counter:
    """Every decode of this process by file: data.io's reader counted, and checked to be the only decoder."""
    counts: Counter = Counter()
    raw = {"n": 0}
    real_read, real_decode = data.io._imread, cv2.imdecode

    def counted_read(path, flags):
        before = raw["n"]
        image = real_read(path, flags)
        counts[Path(path)] += raw["n"] - before  # 0 when decoding_once kept the first decode
        return image

    def counted_decode(*args, **kwargs):
        raw["n"] += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(data.io, "_imread", counted_read)
    monkeypatch.setattr(cv2, "imdecode", counted_decode)
    counts.raw = raw  # type: ignore[attr-defined]
    return counts


def _reset(decodes: Counter) -> None:
    decodes.clear()
    decodes.raw["n"] = 0


def _old_scores(dataset, fused_dir: Path, ids: list[str]) -> dict:
    """The score stage as it was: every image read by evaluate_triples, then again by evaluate_sequences."""
    from fusion.metrics.image import FileSet, evaluate_triples
    from fusion.video.temporal import consecutive_runs, evaluate_sequences

    per_image, mean = evaluate_triples([FileSet(i, fused_dir / f"{i}.png", dataset.sources(i)) for i in ids],
                                       workers=2)
    by_scene: dict = {}
    for i in ids:
        by_scene.setdefault(dataset.scene_of(i), []).append(i)
    runs = [[(fused_dir / f"{i}.png", dataset.path(i, "ir"), dataset.path(i, "vis")) for i in run]
            for scene in by_scene.values() for run in consecutive_runs(scene)]
    scored = [run for run in runs if len(run) >= 2]
    return {"metrics": mean, "per_image": per_image,
            "temporal": {"mean": evaluate_sequences(runs), "n_runs": len(scored), "n_frames": sum(map(len, scored))}}


def test_decoding_once_keeps_a_threads_decodes_for_the_block(tmp_path, decodes):
    path = tmp_path / "a.png"
    write_image(path, np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 251)
    with decoding_once():
        first, again = read_ir(path), read_gray_reference(path)
        with pytest.raises(ValueError, match="read-only"):
            data.io._imread(path, cv2.IMREAD_COLOR)[0, 0] = 1  # a caller cannot change what the next one reads
    assert decodes[path] == 1 and np.array_equal(first, again)
    read_ir(path)
    assert decodes[path] == 2  # outside the block every read decodes


@pytest.mark.parametrize("image", [np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(3, 0),
                                   np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)],
                         ids=["grey", "colour"])
def test_an_image_in_memory_is_scored_as_its_file_reads_back(tmp_path, image):
    write_image(tmp_path / "f.png", image)
    assert np.array_equal(gray_reference_of(image), read_gray_reference(tmp_path / "f.png"))


def test_fusing_reads_each_source_once_and_scoring_then_reads_nothing(tmp_path, runs_root, decodes):
    cfg = PipelineConfig(out=tmp_path / "out", data=runs_root, preset="tiny", progress=False)
    dataset, store = load_m3fd(runs_root), KeyedStore(tmp_path / "out" / "state")
    candidate = Candidate(CandidateSpec(name="max", kind="baseline", fuser="max"))
    ids, eval_ids = used_ids(cfg, dataset), sorted(dataset.splits[cfg.eval_split])
    assert len(score_plan(cfg, dataset).runs) >= 2

    _reset(decodes)  # loading the dataset checked every image
    fused = stage_fuse(cfg, candidate, dataset, store)
    sources = [p for i in ids for p in dataset.sources(i).values()]
    assert decodes == Counter(dict.fromkeys(sources, 1)), "each source once per image, no fused image read back"
    assert decodes.raw["n"] == len(sources)
    assert set(fused.scored.per_image) == set(eval_ids)

    _reset(decodes)
    scores = stage_score(cfg, candidate, dataset, fused, store)
    assert decodes.raw["n"] == 0, "the score stage decoded what the fuse stage had in memory"
    assert vars(scores) == _old_scores(dataset, Path(fused.dir), eval_ids)  # ==: bit for bit

    # The fused folder reused with its score record gone: each evaluation file read once, for both kinds of metric.
    (tmp_path / "out" / "state" / "max" / "score.json").unlink()
    reused = stage_fuse(cfg, candidate, dataset, store)
    assert reused.cached and reused.scored is None
    _reset(decodes)
    again = stage_score(cfg, candidate, dataset, reused, store)
    fused_files = [Path(fused.dir) / f"{i}.png" for i in eval_ids]
    assert decodes == Counter(dict.fromkeys(fused_files + [p for i in eval_ids for p in dataset.sources(i).values()],
                                            1))
    assert decodes.raw["n"] == len(fused_files) * 3
    assert vars(again) == vars(scores)


def test_a_score_record_already_there_is_not_scored_while_fusing(tmp_path, synthetic_root):
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False)
    dataset, store = load_m3fd(synthetic_root), KeyedStore(tmp_path / "out" / "state")
    candidate = Candidate(CandidateSpec(name="max", kind="baseline", fuser="max"))
    first = stage_fuse(cfg, candidate, dataset, store)
    stage_score(cfg, candidate, dataset, first, store)
    clear_dir(Path(first.dir))  # the fused folder lost, its score record kept
    assert stage_fuse(cfg, candidate, dataset, store).scored is None


@pytest.mark.parametrize("modality", ["ir", "vis"])
def test_a_single_modality_candidate_decodes_its_own_sources_and_only_the_others_it_scores(tmp_path, runs_root,
                                                                                          decodes, modality):
    """Its one modality read of every sample (72 -> 45 decodes here), the others only for the evaluation images'
    metrics; its images those of reading every source, bit for bit."""
    cfg = PipelineConfig(out=tmp_path / "out", data=runs_root, preset="tiny", progress=False)
    dataset, store = load_m3fd(runs_root), KeyedStore(tmp_path / "out" / "state")
    candidate = Candidate(CandidateSpec(name=modality, kind="baseline", fuser=modality))
    ids, eval_ids = used_ids(cfg, dataset), sorted(dataset.splits[cfg.eval_split])

    _reset(decodes)
    fused = stage_fuse(cfg, candidate, dataset, store)
    own = [dataset.path(i, modality) for i in ids]
    scored_only = [p for i in eval_ids for m, p in dataset.sources(i).items() if m != modality]
    assert decodes == Counter(dict.fromkeys(own + scored_only, 1))
    assert decodes.raw["n"] == len(ids) + len(eval_ids) < 2 * len(ids)

    _reset(decodes)
    scores = stage_score(cfg, candidate, dataset, fused, store)
    assert decodes.raw["n"] == 0
    assert vars(scores) == _old_scores(dataset, Path(fused.dir), eval_ids)
    fuser = candidate.source(cfg)
    for pair in dataset.pairs():
        if pair.stem in set(ids):
            every_source = read_sources(pair.sources, pair.colour)  # what the passthrough read before
            written = cv2.imread(str(Path(fused.dir) / f"{pair.stem}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(written, fuse_images(fuser, *every_source, pair.colour)), pair.stem


class _TwoBand:
    """A fuser declaring the two bands it takes (as a two-band DAE-Fuse does)."""

    name, modalities, keeps_visible_chroma = "two_band", ("ir", "vis"), True

    def fuse(self, images):
        return np.maximum(images["ir"], images["vis"])

    def cache_key(self) -> str:
        return "test:two_band"


def test_fuse_folder_decodes_only_the_modalities_a_fuser_reads(tmp_path, decodes):
    """Three-band samples: a fuser declaring its modalities decodes those, one taking any set decodes all; the
    ``on_fused`` hook runs while the sample's decodes are kept, so reading every source there adds only the rest."""
    root = generate_synthetic_m3fd(tmp_path / "m3fd", num_scenes=3, frames_per_scene=1, size=(64, 64), nir=True)
    samples = [SourceSet(p.stem, {m: root / folder / p.name for m, folder in (("ir", "Ir"), ("vis", "Vis"),
                                                                               ("nir", "Nir"))})
               for p in sorted((root / "Ir").iterdir())]
    for fuser, read in ((create_fuser("passthrough", modality="nir"), ("nir",)), (_TwoBand(), ("ir", "vis")),
                        (create_fuser("max"), ("ir", "vis", "nir"))):
        _reset(decodes)
        fuse_folder(fuser, samples, tmp_path / fuser.name, progress=False)
        assert decodes == Counter({s.sources[m]: 1 for s in samples for m in read}), fuser.name
        assert decodes.raw["n"] == len(read) * len(samples)

    seen = {}

    def on_fused(sample, image):
        seen[sample.stem] = image
        for path in sample.sources.values():
            read_gray_reference(path)

    _reset(decodes)
    report = fuse_folder(create_fuser("passthrough", modality="nir"), samples, tmp_path / "hook", progress=False,
                         on_fused=on_fused)
    assert decodes == Counter({path: 1 for s in samples for path in s.sources.values()})
    assert list(seen) == report["written"] == [s.stem for s in samples]
    assert all(np.array_equal(image, cv2.imread(str(tmp_path / "hook" / f"{stem}.png"), cv2.IMREAD_UNCHANGED))
               for stem, image in seen.items())


class _Cluster(LocalExecutor):
    """A distributed executor (the fuse stage shards for it) that runs its tasks here, one after another."""

    distributed = True

    def __init__(self):
        super().__init__(None)


def test_shards_score_their_images_and_whole_runs_on_the_workers(tmp_path, runs_root, monkeypatch, decodes):
    """Fused in shards of 4 (a task each): each shard scores its images and the runs wholly inside it; a run cut
    by a shard boundary is read back by the score stage, and every number is the same as a local run's."""
    monkeypatch.setattr(fuse_stage, "SHARD_IMAGES", 4)
    cfg = PipelineConfig(out=tmp_path / "out", data=runs_root, preset="tiny", progress=False)
    dataset = load_m3fd(runs_root)
    candidate = Candidate(CandidateSpec(name="max", kind="baseline", fuser="max"))
    _reset(decodes)
    fused = stage_fuse(cfg, candidate, dataset, KeyedStore(tmp_path / "out" / "state"), _Cluster())
    plan = score_plan(cfg, dataset)
    assert set(fused.scored.per_image) == set(plan.ids)
    cut = [run for run in plan.runs if run[0] not in fused.scored.runs]
    assert cut and len(cut) < len(plan.runs)  # the layout this test is about
    assert decodes.raw["n"] == sum(len(dataset.sources(i)) for i in used_ids(cfg, dataset))

    _reset(decodes)
    scores = stage_score(cfg, candidate, dataset, fused, KeyedStore(tmp_path / "out" / "state"))
    assert decodes.raw["n"] == 3 * sum(map(len, cut))  # fused, ir and vis of each frame of a cut run
    assert vars(scores) == _old_scores(dataset, Path(fused.dir), list(plan.ids))


def test_what_cannot_be_scored_while_fusing_is_read_back(tmp_path, runs_root):
    """Frames out of time order and an image that fails to score are left to the files, which give the same
    numbers; reading the files, the same failures raise."""
    cfg = PipelineConfig(out=tmp_path / "out", data=runs_root, preset="tiny", progress=False)
    dataset = load_m3fd(runs_root)
    candidate = Candidate(CandidateSpec(name="max", kind="baseline", fuser="max"))
    fused = stage_fuse(cfg, candidate, dataset, KeyedStore(tmp_path / "out" / "state"))
    plan, folder = score_plan(cfg, dataset), Path(fused.dir)
    with EvalScorer(plan, workers=2, strict=False) as scorer:
        scorer.add(plan.ids[-1], np.zeros((10, 10), np.uint8))  # not the size of its sources: fails to score
        for stem in reversed(plan.ids[:-1]):
            scorer.add(stem, folder / f"{stem}.png")
    assert set(scorer.done.per_image) == set(plan.ids[:-1]) and scorer.done.runs == {}
    assert vars(score_fused(plan, folder, scorer.done)) == _old_scores(dataset, folder, list(plan.ids))
    with pytest.raises(ValueError, match="out of time order"), EvalScorer(plan) as strict:
        for stem in reversed(plan.runs[0]):
            strict.add(stem, folder / f"{stem}.png")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_exports_read_sizes_from_headers_and_stack_each_source_from_one_decode(tmp_path, runs_root, decodes,
                                                                               monkeypatch):
    cfg = PipelineConfig(out=tmp_path / "out", data=runs_root, preset="tiny", progress=False)
    dataset, store = load_m3fd(runs_root), KeyedStore(tmp_path / "out" / "state")
    candidate = Candidate(CandidateSpec(name="max", kind="baseline", fuser="max"))
    candidate.record.fuse = stage_fuse(cfg, candidate, dataset, store)
    used = sorted({i for ids in detector_splits(cfg, dataset)[0].values() for i in ids})
    sources = [p for i in used for p in dataset.sources(i).values()]

    _reset(decodes)
    fused = export_fused(cfg, candidate, dataset, store)
    assert decodes.raw["n"] == 0, "the fused export links its images: their sizes come from the headers"
    stacked = export_stack(cfg, dataset, store)
    assert decodes == Counter(dict.fromkeys(sources, 1)) and decodes.raw["n"] == len(sources)
    written = {ds.root: _files(ds.root) for ds in (fused, stacked)}

    # Built again with the sizes decoded (the probe the exports used before): the same files, byte for byte.
    monkeypatch.setattr(export_module, "probe_sizes", probe_images)
    forced = KeyedStore(tmp_path / "out" / "state", force=True)
    _reset(decodes)
    assert export_fused(cfg, candidate, dataset, forced) == fused
    assert decodes.raw["n"] == len(used)
    assert export_stack(cfg, dataset, forced) == stacked
    assert decodes.raw["n"] == len(used) + 2 * len(sources)
    assert {ds.root: _files(ds.root) for ds in (fused, stacked)} == written
