"""Simple fusers (two-band forms) and the shared colour rule (fuse Y, keep the visible Cb/Cr); their N-source
forms are in test_sources_by_name.py."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data.io import luma, read_visible, restore_colour, write_image
from data.types import Pair
from fusion.fusers.base import FUSERS, fuse_arrays, fuse_pair
from fusion.fusers.catalog import create_fuser


@pytest.fixture
def pair_arrays():
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (12, 17)).astype(np.float32)
    vis_bgr = rng.integers(0, 256, (12, 17, 3)).astype(np.uint8)
    return ir, vis_bgr


def test_registry_has_the_four_baselines():
    create_fuser("ir")  # triggers registration
    assert {"ir", "vis", "mean", "max"} <= set(FUSERS.names())
    with pytest.raises(KeyError, match="known: .*mean"):
        create_fuser("median")


@pytest.mark.parametrize("name, rule", [("ir", lambda a, b: a), ("vis", lambda a, b: b),
                                        ("mean", lambda a, b: (a + b) / 2), ("max", np.maximum)])
def test_grey_fusion_follows_the_rule(name, rule, pair_arrays):
    ir, vis_bgr = pair_arrays
    vis = vis_bgr[..., 0].astype(np.float32)
    fused = fuse_arrays(create_fuser(name), ir, vis, None)
    assert fused.dtype == np.uint8 and fused.shape == ir.shape
    np.testing.assert_array_equal(fused, np.clip(np.round(rule(ir, vis)), 0, 255).astype(np.uint8))


def test_colour_visible_keeps_its_chroma(pair_arrays):
    ir, vis_bgr = pair_arrays
    vis_y = luma(vis_bgr)
    assert np.array_equal(fuse_arrays(create_fuser("vis"), ir, vis_y, vis_bgr), vis_bgr)
    fused = fuse_arrays(create_fuser("mean"), ir, vis_y, vis_bgr)
    assert fused.shape == vis_bgr.shape
    # Luma is the fused rule; chroma (Cr, Cb) is the visible one wherever no channel saturated.
    ok = (fused > 0).all(-1) & (fused < 255).all(-1)
    np.testing.assert_allclose(luma(fused)[ok], ((ir + vis_y) / 2)[ok], atol=0.6)
    ycc_f = cv2.cvtColor(fused, cv2.COLOR_BGR2YCrCb).astype(int)
    ycc_v = cv2.cvtColor(vis_bgr, cv2.COLOR_BGR2YCrCb).astype(int)
    assert np.abs(ycc_f[ok][:, 1:] - ycc_v[ok][:, 1:]).max() <= 1


def test_fused_values_are_clipped_not_stretched():
    out = restore_colour(np.array([[-20.0, 0.4, 127.5, 300.0]], np.float32), None)
    np.testing.assert_array_equal(out, [[0, 0, 128, 255]])


def test_fuse_pair_reads_files(tmp_path, pair_arrays):
    ir, vis_bgr = pair_arrays
    write_image(tmp_path / "a_ir.png", ir.astype(np.uint8))
    write_image(tmp_path / "a_vis.png", vis_bgr)
    fused = fuse_pair(create_fuser("max"), Pair("a", tmp_path / "a_ir.png", tmp_path / "a_vis.png"))
    y, bgr = read_visible(tmp_path / "a_vis.png")
    assert bgr is not None
    expected = restore_colour(np.maximum(ir, np.round(y)), bgr)  # the fuser receives the rounded luma
    np.testing.assert_array_equal(fused, expected)
    mean = fuse_pair(create_fuser("mean"), Pair("a", tmp_path / "a_ir.png", tmp_path / "a_vis.png"))
    np.testing.assert_array_equal(mean, restore_colour((ir + np.round(y)) / 2, bgr))


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    import os
    import stat

    from data.io import atomic_write_text

    atomic_write_text(tmp_path / "x.txt", "hello")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # no temporary file left behind


def test_replace_dir_puts_the_old_tree_back_when_the_swap_fails(tmp_path, monkeypatch):
    import os

    from data import io

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "new.txt").write_text("new")
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        io.replace_dir(tmp_path / "new", tmp_path / "out")
    assert (tmp_path / "out" / "old.txt").read_text() == "old"  # the previous result survives
    assert not (tmp_path / ".out.old").exists()


def test_ir_only_borrows_nothing_from_the_visible_image(pair_arrays):
    ir, vis_bgr = pair_arrays
    fused = fuse_arrays(create_fuser("ir"), ir, luma(vis_bgr), vis_bgr)
    assert fused.ndim == 2  # grey: no visible chroma
    np.testing.assert_array_equal(fused, ir.astype(np.uint8))


def test_a_killed_writers_temporaries_are_hidden_and_swept(tmp_path):
    import subprocess
    import sys

    from data.io import atomic_dir, atomic_path, remove_stale_temps
    from data.paired import images_by_stem

    # A writer killed with SIGKILL runs no cleanup: make one, with temporaries named the way data.io names them.
    code = ("import os, sys; from data.io import atomic_path, atomic_dir; from pathlib import Path; d = Path(sys.argv[1]); "
            "a = atomic_path(d / 'x.png'); a.__enter__().write_bytes(b'half'); "
            "b = atomic_dir(d / 'export'); b.__enter__(); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=Path(__file__).resolve().parents[1])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(name.startswith((".x.png.", ".export.")) for name in left), left
    assert images_by_stem(tmp_path, []) == {}  # a half-written hidden file is no image of the set
    with atomic_path(tmp_path / "live.txt") as tmp:  # a live writer's temporary is never swept
        tmp.write_text("writing")
        with atomic_dir(tmp_path / "export") as built:  # the next build of the same folder sweeps its dead twin
            (built / "ok").write_text("ok")
        assert sorted(p.name for p in remove_stale_temps(tmp_path)) == [n for n in left if n.startswith(".x.png.")]
        assert tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "live.txt"]
