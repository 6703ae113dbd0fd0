"""Paired-folder reader (data/paired.py): pairing by stem, role folders, and every bad input in one error."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data.errors import DatasetError
from data.paired import find_pairs, resolve_pair_dirs
from tests.conftest import shared_path


def write_image(path: Path, shape=(24, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(path.suffix, np.zeros(shape, np.uint8))[1].tobytes())


def test_pairs_by_stem_across_extensions(tmp_path):
    for stem in ("b", "a", "c"):
        write_image(tmp_path / "ir" / f"{stem}.png")
        write_image(tmp_path / "vi" / f"{stem}.jpg", (24, 32, 3))
    (tmp_path / "vi" / "notes.txt").write_text("ignored")
    pairs = find_pairs(tmp_path / "ir", tmp_path / "vi")
    assert [p.stem for p in pairs] == ["a", "b", "c"]
    assert pairs[0].ir == tmp_path / "ir" / "a.png" and pairs[0].vis == tmp_path / "vi" / "a.jpg"


def test_every_bad_pair_is_named_in_one_error(tmp_path):
    for stem in ("ok", "lonely_ir", "bad", "big", "dup"):
        write_image(tmp_path / "ir" / f"{stem}.png")
    for stem in ("ok", "lonely_vis", "bad", "dup"):
        write_image(tmp_path / "vi" / f"{stem}.png")
    write_image(tmp_path / "vi" / "big.png", (30, 32))
    write_image(tmp_path / "vi" / "dup.jpg")
    (tmp_path / "ir" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as info:
        find_pairs(tmp_path / "ir", tmp_path / "vi")
    message = str(info.value)
    assert "5 problem(s)" in message
    assert "lonely_ir.png has no partner" in message and "lonely_vis.png has no partner" in message
    assert "two images share the stem 'dup'" in message
    assert "unreadable image" in message and "bad.png" in message
    assert "size mismatch for 'big'" in message and "32x30" in message
    # Without decoding, only the structural problems remain.
    with pytest.raises(DatasetError) as info:
        find_pairs(tmp_path / "ir", tmp_path / "vi", check_images=False)
    assert "3 problem(s)" in str(info.value)


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="folder does not exist"):
        find_pairs(tmp_path / "ir", tmp_path / "vi")
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    with pytest.raises(DatasetError, match="no image pairs"):
        find_pairs(tmp_path / "ir", tmp_path / "vi")


def test_resolve_pair_dirs_roles(tmp_path):
    for name in ("MRI", "CT"):
        (tmp_path / "med" / name).mkdir(parents=True)
    assert resolve_pair_dirs(tmp_path / "med") == (tmp_path / "med" / "CT", tmp_path / "med" / "MRI")
    (tmp_path / "tno" / "ir").mkdir(parents=True)
    (tmp_path / "tno" / "vi").mkdir()
    assert resolve_pair_dirs(tmp_path / "tno") == (tmp_path / "tno" / "ir", tmp_path / "tno" / "vi")
    assert resolve_pair_dirs(tmp_path / "x", "thermal", "rgb") == (tmp_path / "x" / "thermal", tmp_path / "x" / "rgb")
    (tmp_path / "half" / "ir").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no visible folder"):
        resolve_pair_dirs(tmp_path / "half")
    (tmp_path / "pet" / "MRI").mkdir(parents=True)
    (tmp_path / "pet" / "PET").mkdir()
    assert resolve_pair_dirs(tmp_path / "pet") == (tmp_path / "pet" / "MRI", tmp_path / "pet" / "PET")  # colour: vis
    (tmp_path / "mri" / "MRI").mkdir(parents=True)
    with pytest.raises(DatasetError, match="would play both the infrared and the visible role"):
        resolve_pair_dirs(tmp_path / "mri")


@pytest.mark.parametrize(
    "name, count, ir_name", [("TNO", 25, "ir"), ("RoadScene", 50, "ir"), ("MSRS", 8, "ir"), ("MRI_CT", 21, "CT"), ("MRI_PET", 42, "MRI")]
)
def test_real_fusion_benchmarks(name, count, ir_name):
    ir_dir, vis_dir = resolve_pair_dirs(shared_path("fusion_benchmarks", name))
    assert ir_dir.name == ir_name
    pairs = find_pairs(ir_dir, vis_dir)
    assert len(pairs) == count and all(p.ir.stem == p.vis.stem for p in pairs)
