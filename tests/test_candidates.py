"""Any fusion method as a candidate: pre-fused folders, plug-in factories, installed entry points (issue 11)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.errors import DatasetError
from data.m3fd import load_m3fd
from fusion.fusers.base import FuserSpecError, fuse_pair
from fusion.fusers.catalog import create_fuser, fuser_names
from fusion.fusers.prefused import PrefusedFolder, check_prefused_folder
from pipelines.candidates import CandidateError, parse_fused, parse_fuser
from pipelines.engine import OptionsError, PipelineConfig, build_candidates, run_pipeline
from pipelines.run_m3fd import parse_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A toy "learned method" in its own file, as a user would wrap CDDFuse: the per-pixel max, so its rows must equal
# the built-in max rule's.
TOY_MODULE = '''
import numpy as np


class ToyMax:
    def __init__(self, gain=1.0):
        self.gain = gain

    def fuse_luma(self, ir, vis_y):
        return np.maximum(ir, vis_y) * self.gain


def make(gain=1.0):
    return ToyMax(gain)


def not_a_fuser():
    return "nothing to fuse with"
'''


@pytest.fixture()
def toy_module(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_fusers.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield folder / "toy_fusers.py"
    sys.modules.pop("toy_fusers", None)  # the next test's copy lives in another folder


@pytest.fixture(scope="module")
def dataset(synthetic_root):
    return load_m3fd(synthetic_root)


def pair_sizes(dataset):
    return {i: (dataset.annotation(i).width, dataset.annotation(i).height) for i in dataset.ids}


def write_max_folder(dataset, folder: Path, suffix_of=lambda i: ".png") -> Path:
    """The built-in max rule's images, as another method's release would hold them (lossless formats)."""
    folder.mkdir(parents=True, exist_ok=True)
    fuser = create_fuser("max")
    for pair in dataset.pairs():
        ok, buf = cv2.imencode(suffix_of(pair.stem), fuse_pair(fuser, pair))
        assert ok
        (folder / f"{pair.stem}{suffix_of(pair.stem)}").write_bytes(buf.tobytes())
    return folder


# -- pre-fused folders ---------------------------------------------------------------------------------------------

def test_a_complete_folder_reads_back_as_the_rule_wrote_it(tmp_path, dataset):
    folder = write_max_folder(dataset, tmp_path / "max", lambda i: ".bmp" if int(i) % 2 else ".png")
    source = PrefusedFolder.from_pairs(folder, dataset.pairs(), pair_sizes(dataset))
    for pair in dataset.pairs():
        assert np.array_equal(source.image_for(pair), fuse_pair(create_fuser("max"), pair))


@pytest.mark.parametrize("damage, expected", [
    ("missing", r"2 id\(s\) without a fused image: 00001, 00002"),
    ("size", r"1 fused image\(s\) of another size than their pair: 00003.png is 40x32, its pair 80x64"),
    ("unreadable", r"1 fused image\(s\) that do not decode: 00004.png"),
    ("name", r"(?s)1 id\(s\) without a fused image: 00005.*1 image file\(s\) named by no id.*00005_fused.png"),
    ("twice", r"1 id\(s\) with more than one image file: 00006 \(00006.jpg, 00006.png\)"),
])
def test_each_bad_folder_is_refused_with_what_is_wrong(tmp_path, dataset, damage, expected):
    folder = write_max_folder(dataset, tmp_path / "max")
    if damage == "missing":
        (folder / "00001.png").unlink()
        (folder / "00002.png").unlink()
    elif damage == "size":
        cv2.imwrite(str(folder / "00003.png"), np.zeros((32, 40), np.uint8))
    elif damage == "unreadable":
        (folder / "00004.png").write_bytes(b"not an image")
    elif damage == "name":
        (folder / "00005.png").rename(folder / "00005_fused.png")
    else:
        shutil.copy(folder / "00006.png", folder / "00006.jpg")
    with pytest.raises(DatasetError, match=expected):
        check_prefused_folder(folder, pair_sizes(dataset))


def test_every_problem_in_one_error_with_counts_first_for_thousands(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    cv2.imwrite(str(folder / "00007.png"), np.zeros((10, 10), np.uint8))  # wrong size, beside 4,000 missing ids
    sizes = {f"{i:05d}": (20, 10) for i in range(1, 4001)}
    with pytest.raises(DatasetError) as err:
        check_prefused_folder(folder, sizes)
    message = str(err.value)
    assert "3999 id(s) without a fused image: 00001, 00002" in message and "(3979 more)" in message
    assert "00007.png is 10x10, its pair 20x10" in message
    assert len(message.splitlines()) < 10  # counts and a bounded list, not one line per id


def test_the_folder_cache_key_follows_its_content(tmp_path, dataset):
    folder = write_max_folder(dataset, tmp_path / "max")
    sizes = pair_sizes(dataset)
    key = PrefusedFolder.from_pairs(folder, dataset.pairs(), sizes).cache_key()
    assert PrefusedFolder.from_pairs(folder, dataset.pairs(), sizes).cache_key() == key  # nothing changed
    target = folder / "00002.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten (same size, later time)
    assert PrefusedFolder.from_pairs(folder, dataset.pairs(), sizes).cache_key() != key


# -- plug-ins -------------------------------------------------------------------------------------------------------

def test_a_factory_path_builds_a_fuser_whose_key_follows_its_source_and_arguments(toy_module, dataset):
    pair = dataset.pairs()[0]
    fuser = create_fuser("toy_fusers:make")
    assert np.array_equal(fuse_pair(fuser, pair), fuse_pair(create_fuser("max"), pair))
    assert fuser.keeps_visible_chroma and fuser.name == "toy_fusers.make"
    key = fuser.cache_key()
    assert create_fuser("toy_fusers:make", gain=0.5).cache_key() != key  # other arguments, other images
    toy_module.write_text(TOY_MODULE + "\n# the wrapper changed\n")
    assert create_fuser("toy_fusers:make").cache_key() != key  # a changed wrapper is fused again


@pytest.mark.parametrize("target, expected", [
    ("toy_fusers:", "not a factory path"),
    ("toy_fusers.make", "unknown fuser .*package.module:factory"),
    ("no_such_module_xyz:make", "does not import: ModuleNotFoundError"),
    ("toy_fusers:missing", "does not import: AttributeError"),
    ("toy_fusers:not_a_fuser", "returned str, which has no fuse_luma"),
    ("median", "unknown fuser 'median'"),
])
def test_a_bad_plugin_is_named(toy_module, target, expected):
    with pytest.raises(FuserSpecError, match=expected):
        create_fuser(target)


def test_an_installed_entry_point_is_a_registered_fuser(toy_module):
    dist = toy_module.parent / "toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fusebench.fusers]\ntoy_entry_max = toy_fusers:make\n")
    assert "toy_entry_max" in fuser_names()
    fuser = create_fuser("toy_entry_max", gain=1.0)
    ir, vis = np.array([[10.0, 200.0]], np.float32), np.array([[50.0, 20.0]], np.float32)
    assert fuser.fuse_luma(ir, vis).tolist() == [[50.0, 200.0]]


def test_fuse_cli_takes_a_plugin(toy_module, dataset, tmp_path):
    from fusion.fusers.fuse import main

    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vis_dir.mkdir()
    for pair in dataset.pairs()[:2]:
        shutil.copy(pair.ir, ir_dir / pair.ir.name)
        shutil.copy(pair.vis, vis_dir / pair.vis.name)
    out = tmp_path / "out"
    assert main(["--fuser", "toy_fusers:make", "gain=1.0", "--ir", str(ir_dir), "--vis", str(vis_dir),
                 "--out", str(out), "--no-progress"]) == 0
    for pair in dataset.pairs()[:2]:
        assert np.array_equal(cv2.imread(str(out / f"{pair.stem}.png"), cv2.IMREAD_UNCHANGED),
                              fuse_pair(create_fuser("max"), pair))
    assert main(["--fuser", "toy_fusers:not_a_fuser", "--ir", str(ir_dir), "--vis", str(vis_dir),
                 "--out", str(tmp_path / "out2")]) == 2


# -- the command line and the pipeline ----------------------------------------------------------------------------

def test_command_line_forms():
    cfg = parse_args(["--fused", "cdd=/x/fused", "--fuser", "toy=toy_fusers:make", "gain=0.5", "path=a.pth",
                      "--fuser", "other=pkg.mod:f"])
    assert cfg.fused == ["cdd=/x/fused"] and cfg.plugins == [["toy=toy_fusers:make", "gain=0.5", "path=a.pth"],
                                                             ["other=pkg.mod:f"]]
    spec = parse_fuser(cfg.plugins[0])
    assert spec.fuser == "toy_fusers:make" and spec.args == {"gain": 0.5, "path": "a.pth"}
    assert parse_fused("cdd=/x/fused").folder == Path("/x/fused")
    for bad in ("cdd", "=dir", "a/b=dir"):
        with pytest.raises(CandidateError):
            parse_fused(bad)
    with pytest.raises(CandidateError, match="not key=value"):
        parse_fuser(["toy=toy_fusers:make", "gain"])


def test_bad_candidates_refuse_the_run_in_one_error(tmp_path, synthetic_root, dataset, toy_module):
    folder = write_max_folder(dataset, tmp_path / "max")
    (folder / "00001.png").unlink()
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny",
                         fused=[f"cdd={folder}"], plugins=[["toy=toy_fusers:not_a_fuser"]])
    with pytest.raises(OptionsError) as err:
        build_candidates(cfg, dataset)
    assert "candidate 'cdd'" in str(err.value) and "00001" in str(err.value)
    assert "candidate 'toy'" in str(err.value) and "no fuse_luma" in str(err.value)
    with pytest.raises(OptionsError, match="two candidates are named 'max'"):
        build_candidates(PipelineConfig(out=tmp_path / "o", fused=[f"max={folder}"]), dataset)


def test_a_folder_and_a_plugin_rank_exactly_as_the_same_builtin_rule(tmp_path, synthetic_root, dataset, toy_module):
    """The same images, however they arrive, give the same fusion metrics and the same detector."""
    folder = write_max_folder(dataset, tmp_path / "released_max", lambda i: ".bmp" if int(i) % 2 else ".png")
    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False,
                         baselines=["max"], fused=[f"maxfolder={folder}"], plugins=[["toymax=toy_fusers:make"]],
                         checkpoints=[tmp_path / "absent.pt"])  # a failed row instead of a DAE-Fuse trained here
    results = run_pipeline(cfg)
    rows = {r["name"]: r for r in results["candidates"]}
    for name in ("maxfolder", "toymax"):
        assert rows[name]["fusion"] == rows["max"]["fusion"]
        assert rows[name]["detection"]["map50"] == rows["max"]["detection"]["map50"]
        assert rows[name]["detection"]["ap50"] == rows["max"]["detection"]["ap50"]
        assert rows[name]["gain_map50"] == rows["max"]["gain_map50"]
    assert rows["maxfolder"]["kind"] == "folder" and str(folder) in rows["maxfolder"]["origin"]
    assert rows["maxfolder"]["fuse_seconds_per_image"] is None  # not fused here: no time to report
    assert rows["toymax"]["kind"] == "plugin" and "toy_fusers:make" in rows["toymax"]["origin"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"- `maxfolder`: fused images from {folder}" in md and "- `toymax`: plug-in toy_fusers:make" in md
    # A second run reuses everything, the folder's images included; touching one of them fuses that row again.
    again = run_pipeline(cfg)
    assert {r["name"]: r["fused_dir"] for r in again["candidates"]} == {n: r["fused_dir"] for n, r in rows.items()}
    stat = (folder / "00002.png").stat()
    os.utime(folder / "00002.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = {r["name"]: r for r in run_pipeline(cfg)["candidates"]}
    assert third["maxfolder"]["fused_dir"] != rows["maxfolder"]["fused_dir"]
    assert third["max"]["fused_dir"] == rows["max"]["fused_dir"]
