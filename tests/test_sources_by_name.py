"""Sources by modality name through the fusing plumbing: the rules with N sources, the passthroughs, the value
domain fusers receive, the colour modality, plug-ins (old and new interface, --device, failing factories, cache
keys), the fusing CLI with three sources and its errors, and pre-fused folders with named sources."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.errors import DatasetError
from data.io import luma, read_ir, read_visible, restore_colour
from fusion.fusers.fuse import fuse_folder, main
from fusion.fusers.base import (
    FuserInputError,
    SourceSet,
    fuse_arrays,
    fuse_images,
    fuse_pair,
)
from fusion.fusers.catalog import create_fuser, factory_arguments
from fusion.fusers.prefused import PrefusedFolder

PLUGINS = '''
import numpy as np

SEEN = []


class Recorder:
    """A new-interface fuser that records what it receives and returns the per-pixel mean."""

    def __init__(self, device=None, repo=None):
        self.device = device
        self.name = f"recorder@{device}"

    def fuse(self, images):
        SEEN.append({k: v.copy() for k, v in images.items()})
        return sum(images.values()) / len(images)


def make_recorder(device=None, repo=None):
    return Recorder(device, repo)


def make_with_kwargs(**kwargs):
    return Recorder(kwargs.get("device"))


class OldMax:
    def fuse_luma(self, ir, vis_y):
        SEEN.append({"ir": ir.copy(), "vis": vis_y.copy()})
        return np.maximum(ir, vis_y)


def make_old(gain=1.0):
    return OldMax()


def make_broken(weights="none.pth"):
    raise RuntimeError(f"cannot open {weights}: no such file")
'''


@pytest.fixture()
def plugins(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "named_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(folder))
    import named_plugins

    yield named_plugins
    sys.modules.pop("named_plugins", None)


def grey(seed: int, shape=(6, 7)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def colour(seed: int, shape=(6, 7)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Rules and passthroughs
# ---------------------------------------------------------------------------------------------------------------

def test_rules_over_three_sources_by_hand():
    images = {"vis": np.array([[10, 200]], np.float32), "nir": np.array([[40, 50]], np.float32),
              "lwir": np.array([[100, 20]], np.float32)}
    assert create_fuser("max").fuse(images).tolist() == [[100, 200]]
    assert create_fuser("mean").fuse(images).tolist() == [[50, 90]]  # (10+40+100)/3, (200+50+20)/3
    reordered = dict(reversed(list(images.items())))
    assert np.array_equal(create_fuser("mean").fuse(reordered), create_fuser("mean").fuse(images))
    with pytest.raises(FuserInputError, match="two or more modalities"):
        fuse_images(create_fuser("max"), {"vis": images["vis"]})


def test_two_source_rules_are_the_former_formulas_bit_for_bit():
    rng = np.random.default_rng(1)
    ir, vis = (rng.integers(0, 256, (9, 11)).astype(np.float32) for _ in range(2))
    assert np.array_equal(create_fuser("mean").fuse({"ir": ir, "vis": vis}), (ir + vis) * 0.5)
    assert np.array_equal(create_fuser("mean").fuse_luma(ir, vis), (ir + vis) * 0.5)  # the kept entry point
    assert np.array_equal(create_fuser("max").fuse({"vis": vis, "ir": ir}), np.maximum(ir, vis))


def test_one_passthrough_per_modality_colour_only_for_the_colour_one():
    nir, lwir, vis_bgr = grey(1), grey(2), colour(3)
    images = {"vis": luma(vis_bgr), "nir": nir, "lwir": lwir}
    for name, expected in (("nir", nir), ("lwir", lwir)):
        out = fuse_images(create_fuser("passthrough", modality=name), images, vis_bgr, "vis")
        assert out.ndim == 2 and np.array_equal(out, expected), name  # grey: nothing borrowed from the colour image
    assert np.array_equal(fuse_images(create_fuser("vis"), images, vis_bgr, "vis"), vis_bgr)  # unchanged
    with pytest.raises(FuserInputError, match="needs a 'ir' image, got vis, nir, lwir"):
        fuse_images(create_fuser("ir"), images, vis_bgr, "vis")


# ---------------------------------------------------------------------------------------------------------------
# Value domain and colour
# ---------------------------------------------------------------------------------------------------------------

def test_fusers_receive_rounded_whole_numbers_and_the_colour_modality_keeps_its_chroma(plugins):
    vis_bgr, nir = colour(4, (8, 9)), grey(5, (8, 9))
    vis_y = luma(vis_bgr)
    assert not np.array_equal(vis_y, np.round(vis_y))  # the visible luma arrives with fractions
    fuser = create_fuser("named_plugins:make_recorder")
    out = fuse_images(fuser, {"vis": vis_y, "nir": nir}, vis_bgr, "vis")
    seen = plugins.SEEN[-1]
    assert list(seen) == ["vis", "nir"]
    assert all(a.dtype == np.float32 and np.array_equal(a, np.round(a)) for a in seen.values())
    np.testing.assert_array_equal(seen["vis"], np.round(vis_y))
    np.testing.assert_array_equal(out, restore_colour((np.round(vis_y) + nir) / 2, vis_bgr))
    # The colour modality is the caller's: named "rgb" it is restored the same way; with none, the result is grey.
    assert np.array_equal(fuse_images(fuser, {"rgb": vis_y, "nir": nir}, vis_bgr, "rgb"), out)
    assert fuse_images(fuser, {"vis": vis_y, "nir": nir}, None, None).ndim == 2


def test_an_old_fuse_luma_plugin_fuses_ir_and_vis_and_refuses_other_sets(plugins, tmp_path):
    fuser = create_fuser("named_plugins:make_old", gain=2.0)
    ir, vis_bgr = grey(6), colour(7)
    y = luma(vis_bgr)
    out = fuse_arrays(fuser, ir.astype(np.float32), y, vis_bgr)  # the kept two-band entry point
    np.testing.assert_array_equal(plugins.SEEN[-1]["vis"], np.round(y))  # rounded on this path too
    np.testing.assert_array_equal(out, restore_colour(np.maximum(ir, np.round(y)), vis_bgr))
    with pytest.raises(FuserInputError) as err:
        fuse_images(fuser, {"vis": y, "nir": ir, "lwir": ir})
    assert "fuses exactly {ir, vis}" in str(err.value) and "missing ir" in str(err.value)
    assert "not taken: nir, lwir" in str(err.value)


def test_sizes_that_differ_name_every_image():
    with pytest.raises(FuserInputError) as err:
        fuse_images(create_fuser("max"), {"vis": grey(1, (6, 7)), "nir": grey(2, (6, 8)), "lwir": grey(3, (5, 7))})
    assert "vis 7x6, nir 8x6, lwir 7x5" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Factories: --device, failures, cache keys
# ---------------------------------------------------------------------------------------------------------------

def test_device_reaches_every_factory_that_takes_one(plugins):
    assert create_fuser("named_plugins:make_recorder", device="cuda:1").inner.device == "cuda:1"
    assert create_fuser("named_plugins:make_with_kwargs", device="cuda").inner.device == "cuda"  # via **kwargs
    assert create_fuser("named_plugins:make_old", device="cuda", gain=1.0).modalities == ("ir", "vis")  # not given
    assert create_fuser("max", device="cuda").name == "max"  # the rules take it too (and run on the CPU)
    # An argument that names the device itself wins over --device.
    assert factory_arguments(plugins.make_recorder, {"device": "cpu"}, "cuda") == {"device": "cpu"}
    # The device a factory was given is part of its derived key: it may change the images (precision).
    assert (create_fuser("named_plugins:make_recorder", device="cpu").cache_key()
            != create_fuser("named_plugins:make_recorder", device="cuda").cache_key())


def test_the_derived_cache_key_follows_a_folder_argument(plugins, tmp_path):
    repo = tmp_path / "repo"
    (repo / "weights").mkdir(parents=True)
    (repo / "weights" / "w.pth").write_bytes(b"one")
    key = create_fuser("named_plugins:make_recorder", repo=str(repo)).cache_key()
    assert create_fuser("named_plugins:make_recorder", repo=str(repo)).cache_key() == key
    (repo / "__pycache__").mkdir()
    (repo / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"bytecode")  # importing from the repo is no change
    (repo / ".git").mkdir()
    (repo / ".git" / "index").write_bytes(b"x")
    assert create_fuser("named_plugins:make_recorder", repo=str(repo)).cache_key() == key
    (repo / "weights" / "w.pth").write_bytes(b"retrained")
    assert create_fuser("named_plugins:make_recorder", repo=str(repo)).cache_key() != key


def test_cli_device_reaches_a_plugin_and_a_failing_factory_is_one_line(plugins, tmp_path, capsys):
    dirs = write_sources(tmp_path, ("vis", "nir"))
    out = tmp_path / "out"
    args = ["--src", f"vis={dirs['vis']}", "--src", f"nir={dirs['nir']}", "--no-progress"]
    assert main(["--fuser", "named_plugins:make_recorder", *args, "--out", str(out), "--device", "meta"]) == 0
    assert (out / "a.png").is_file()
    capsys.readouterr()
    assert main(["--fuser", "named_plugins:make_broken", "weights=w.pth", *args, "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: fuser named_plugins:make_broken failed to build: RuntimeError: cannot open w.pth: "
                   "no such file\n")
    assert not (tmp_path / "o2").exists()


# ---------------------------------------------------------------------------------------------------------------
# The fusing CLI with three sources
# ---------------------------------------------------------------------------------------------------------------

def write_sources(root: Path, names=("vis", "nir", "lwir"), stems=("a", "b"), shape=(10, 12)) -> dict[str, Path]:
    """One folder per modality: vis in colour (JPEG-free PNG, so exact), the others grey."""
    dirs = {}
    for k, name in enumerate(names):
        dirs[name] = root / name
        dirs[name].mkdir(parents=True)
        for i, stem in enumerate(stems):
            image = colour(10 * k + i, shape) if name == "vis" else grey(10 * k + i, shape)
            cv2.imwrite(str(dirs[name] / f"{stem}.png"), image)
    return dirs


def test_three_sources_flow_through_the_fusing_cli(tmp_path):
    dirs = write_sources(tmp_path)
    out = tmp_path / "fused"
    assert main(["--baseline", "max", *(f"--src={n}={d}" for n, d in dirs.items()), "--out", str(out),
                 "--no-progress"]) == 0
    for stem in ("a", "b"):
        y, bgr = read_visible(dirs["vis"] / f"{stem}.png")
        nir, lwir = read_ir(dirs["nir"] / f"{stem}.png"), read_ir(dirs["lwir"] / f"{stem}.png")
        expected = restore_colour(np.maximum.reduce([np.round(y), nir.astype(np.float32), lwir]), bgr)
        np.testing.assert_array_equal(cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED), expected)
    # --colour names the colour source; none of them colour: a grey result.
    assert main(["--baseline", "mean", *(f"--src={n}={d}" for n, d in dirs.items() if n != "vis"),
                 "--out", str(tmp_path / "grey"), "--no-progress"]) == 0
    assert cv2.imread(str(tmp_path / "grey" / "a.png"), cv2.IMREAD_UNCHANGED).ndim == 2


def test_the_two_band_flags_mix_with_named_sources(tmp_path):
    dirs = write_sources(tmp_path, ("ir", "vis", "nir"))
    out = tmp_path / "fused"
    assert main(["--baseline", "mean", "--ir", str(dirs["ir"]), "--vis", str(dirs["vis"]), "--src",
                 f"nir={dirs['nir']}", "--out", str(out), "--no-progress"]) == 0
    sample = SourceSet("a", {n: d / "a.png" for n, d in dirs.items()})
    np.testing.assert_array_equal(cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED),
                                  fuse_pair(create_fuser("mean"), sample))


def test_a_missing_and_a_mis_sized_source_are_one_clear_error(tmp_path, capsys):
    dirs = write_sources(tmp_path, stems=("a", "b", "c"))
    (dirs["nir"] / "b.png").unlink()
    cv2.imwrite(str(dirs["lwir"] / "c.png"), grey(9, (10, 13)))
    out = tmp_path / "fused"
    assert main(["--baseline", "max", *(f"--src={n}={d}" for n, d in dirs.items()), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sources vis=") and "2 problem(s)" in err
    assert "vis/b.png has no partner in" in err and "(nir)" in err
    assert "size mismatch for 'c'" in err and "lwir/c.png is 13x10" in err
    assert not out.exists()  # nothing fused


def test_source_options_are_checked_together(tmp_path, capsys):
    dirs = write_sources(tmp_path, ("vis", "nir"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--baseline", "max", "--src", f"vis={dirs['vis']}", "--vis", str(dirs["vis"]), "--src", "nir",
              "--colour", "rgb", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'nir' is not NAME=DIR" in err and "--vis and --src vis" in err and "--colour rgb is not among" in err


def test_a_set_the_fuser_does_not_take_is_refused_before_anything_is_written(plugins, tmp_path, capsys):
    dirs = write_sources(tmp_path)
    out = tmp_path / "fused"
    assert main(["--fuser", "named_plugins:make_old", *(f"--src={n}={d}" for n, d in dirs.items()),
                 "--out", str(out), "--no-progress"]) == 2
    assert "fuses exactly {ir, vis}" in capsys.readouterr().err
    assert not any(out.glob("*.png"))
    samples = [SourceSet("a", {n: d / "a.png" for n, d in dirs.items()})]
    with pytest.raises(FuserInputError, match="passthrough 'ir' needs a 'ir' image"):
        fuse_folder(create_fuser("ir"), samples, tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()  # refused before the folder was made


# ---------------------------------------------------------------------------------------------------------------
# Pre-fused folders with named sources
# ---------------------------------------------------------------------------------------------------------------

def test_a_prefused_folder_serves_samples_with_named_sources(tmp_path):
    dirs = write_sources(tmp_path)
    samples = [SourceSet(stem, {n: d / f"{stem}.png" for n, d in dirs.items()}) for stem in ("a", "b")]
    fused = tmp_path / "method"
    fused.mkdir()
    for sample in samples:
        cv2.imwrite(str(fused / f"{sample.stem}.png"), fuse_pair(create_fuser("max"), sample))
    sizes = {s.stem: (12, 10) for s in samples}
    folder = PrefusedFolder.from_pairs(fused, samples, sizes, modalities=("vis", "nir", "lwir"))
    report = fuse_folder(folder, samples, tmp_path / "copy", progress=False)
    assert report["written"] == ["a", "b"]
    assert np.array_equal(cv2.imread(str(tmp_path / "copy" / "a.png"), cv2.IMREAD_UNCHANGED),
                          fuse_pair(create_fuser("max"), samples[0]))
    with pytest.raises(DatasetError, match="without exactly the sources ir, vis"):
        PrefusedFolder.from_pairs(fused, samples, sizes, modalities=("ir", "vis"))
    assert folder.check_sources(["ir", "vis"]) and not folder.check_sources(["lwir", "nir", "vis"])
