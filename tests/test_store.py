"""``data.store``: the one owner of "is this folder finished for this key", of work in progress (a partial folder
and its progress record) and of ``--force`` (redo once per run)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from data.io import write_record
from data.store import (
    PROGRESS_NAME,
    RECORD_NAME,
    FolderClaimedError,
    KeyedStore,
    claim_folder,
    finished,
    read_progress,
    save_progress,
)


def _builder(calls: list[Path], files: dict[str, str] | None = None):
    def build(tmp: Path) -> dict:
        calls.append(tmp)
        for name, text in (files or {"a.txt": "a"}).items():
            (tmp / name).write_text(text)
        return {"n": len(calls)}

    return build


def test_a_finished_folder_is_reused_and_a_forced_run_builds_it_again_once(tmp_path):
    calls: list[Path] = []
    path = tmp_path / "cache" / "x"
    assert KeyedStore(tmp_path).folder(path, "k1", _builder(calls)) == ({"n": 1}, False)
    assert finished(path, "k1") == {"n": 1} and finished(path) == {"n": 1} and finished(path, "k2") is None
    assert KeyedStore(tmp_path).folder(path, "k1", _builder(calls)) == ({"n": 1}, True)
    assert len(calls) == 1

    forced = KeyedStore(tmp_path, force=True)
    assert forced.folder(path, "k1", _builder(calls)) == ({"n": 2}, False)
    assert forced.folder(path, "k1", _builder(calls)) == ({"n": 2}, True)  # once per run, not per ask
    assert len(calls) == 2 and sorted(p.name for p in path.parent.iterdir()) == ["x"]  # no temporary left

    # another key: built again, replacing the folder whole
    assert KeyedStore(tmp_path).folder(path, "k2", _builder(calls, {"b.txt": "b"})) == ({"n": 3}, False)
    assert sorted(p.name for p in path.iterdir()) == [RECORD_NAME, "b.txt"]


def test_a_record_of_its_own_name_and_a_record_the_caller_cannot_use(tmp_path):
    calls: list[Path] = []
    path = tmp_path / "export"
    KeyedStore(tmp_path).folder(path, "k", _builder(calls), record="manifest.json")
    assert (path / "manifest.json").is_file() and not (path / RECORD_NAME).exists()
    assert finished(path, "k", record="manifest.json") == {"n": 1}
    assert KeyedStore(tmp_path).folder(path, "k", _builder(calls), record="manifest.json")[1]
    # e.g. a result written before a field its reader needs: built again
    assert KeyedStore(tmp_path).folder(path, "k", _builder(calls), record="manifest.json",
                                       accept=lambda record: "field" in record) == ({"n": 2}, False)


def test_a_resumable_build_keeps_its_partial_folder_and_resumes_it_for_the_same_key_only(tmp_path):
    path = tmp_path / "fused"
    partial = tmp_path / "fused.partial"

    def killed(tmp: Path) -> dict:
        assert tmp == partial
        save_progress(tmp, "k1", {"done": ["a"]})
        (tmp / "a.png").write_text("a")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        KeyedStore(tmp_path).folder(path, "k1", killed, resumable=True)
    assert not path.exists() and read_progress(partial, "k1") == {"done": ["a"]}

    seen = []

    def resume(tmp: Path) -> dict:
        seen.append((read_progress(tmp, "k1"), sorted(p.name for p in tmp.iterdir() if p.name != PROGRESS_NAME)))
        (tmp / "b.png").write_text("b")
        return {"images": 2}

    assert KeyedStore(tmp_path).folder(path, "k1", resume, resumable=True) == ({"images": 2}, False)
    assert seen == [({"done": ["a"]}, ["a.png"])]
    assert sorted(p.name for p in path.iterdir()) == [RECORD_NAME, "a.png", "b.png"]  # no progress record left
    assert not partial.exists()

    # A partial folder of another key is cleared; one without a progress record (an older version's) is taken.
    (partial / "stale.png").parent.mkdir()
    (partial / "stale.png").write_text("x")
    save_progress(partial, "other", {"done": ["stale"]})
    KeyedStore(tmp_path).folder(path, "k2", lambda tmp: {"files": sorted(p.name for p in tmp.iterdir())},
                                resumable=True)
    assert finished(path, "k2") == {"files": [PROGRESS_NAME]}
    partial.mkdir()
    (partial / "kept.png").write_text("x")
    KeyedStore(tmp_path).folder(path, "k3", lambda tmp: {"files": sorted(p.name for p in tmp.iterdir())},
                                resumable=True)
    assert finished(path, "k3") == {"files": [PROGRESS_NAME, "kept.png"]}


def test_a_forced_resumable_build_starts_from_an_empty_partial_folder(tmp_path):
    path, partial = tmp_path / "run", tmp_path / "run.partial"
    partial.mkdir()
    (partial / "last.pt").write_text("an interrupted run of the same key")
    save_progress(partial, "k", {"trained": False})
    forced = KeyedStore(tmp_path, force=True)
    record, cached = forced.folder(path, "k", lambda tmp: {"files": sorted(p.name for p in tmp.iterdir())},
                                   resumable=True)
    assert record == {"files": [PROGRESS_NAME]} and not cached


def test_a_claimed_folder_is_refused_kept_or_cleared_for_another_key(tmp_path):
    folder = tmp_path / "out"
    assert claim_folder(folder, "max", record=".fuser.json", start={"fuser": "max"}) == {"fuser": "max"}
    (folder / "0001.png").write_text("max's image")
    with pytest.raises(FolderClaimedError) as info:
        claim_folder(folder, "mean", record=".fuser.json", other="refuse")
    assert (info.value.held, info.value.wanted) == ("max", "mean") and isinstance(info.value, ValueError)
    assert (folder / "0001.png").is_file()
    assert claim_folder(folder, "max", record=".fuser.json", other="refuse") == {"fuser": "max"}  # same: resumed
    assert claim_folder(folder, "mean", record=".fuser.json", other="keep", start={"fuser": "mean"}) == {
        "fuser": "mean"}
    assert (folder / "0001.png").is_file()
    assert claim_folder(folder, "min", record=".fuser.json") == {}  # "clear"
    assert sorted(p.name for p in folder.iterdir()) == [".fuser.json"]


def test_claiming_a_folder_sweeps_dead_writers_temporaries_inside(tmp_path):
    child = subprocess.Popen(["true"])
    child.wait()
    folder = tmp_path / "partial"
    folder.mkdir()
    dead = folder / f".0001.png.{child.pid}.ab12cd34.tmp.png"
    dead.write_bytes(b"half an image")
    write_record(folder / PROGRESS_NAME, "k", {})
    claim_folder(folder, "k")
    assert not dead.exists()


def test_fuse_folder_claims_its_folder_for_its_fuser(tmp_path, synthetic_root):
    """The fuser marker is the folder's claim: resuming another fuser's folder is refused, touching nothing; fusing
    without skip_existing takes it over; a dead writer's half image is swept."""
    from data.m3fd import load_m3fd
    from fusion.fusers.fuse import FUSER_MARKER, fuse_folder
    from fusion.fusers.catalog import create_fuser

    pairs = load_m3fd(synthetic_root).pairs()[:2]
    out = tmp_path / "fused"
    maximum, mean = create_fuser("max"), create_fuser("mean")
    fuse_folder(maximum, pairs, out, progress=False)
    assert read_progress(out, maximum.cache_key(), record=FUSER_MARKER) == {"fuser": "max"}
    images = {p.name: p.read_bytes() for p in out.glob("*.png")}
    with pytest.raises(ValueError, match=r"holds images of another fuser \(baseline:max:"):
        fuse_folder(mean, pairs, out, progress=False, skip_existing=True)
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == images

    child = subprocess.Popen(["true"])
    child.wait()
    half = out / f".{pairs[0].stem}.png.{child.pid}.ab12cd34.tmp.png"
    half.write_bytes(b"half an image")
    assert fuse_folder(maximum, pairs, out, progress=False, skip_existing=True)["skipped"] == [p.stem for p in pairs]
    assert not half.exists()
    assert len(fuse_folder(mean, pairs, out, progress=False)["written"]) == 2  # taken over, every image rewritten
    assert read_progress(out, mean.cache_key(), record=FUSER_MARKER) == {"fuser": "mean"}
