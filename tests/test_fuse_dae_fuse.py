"""DAE-Fuse inference: the checkpoint fuser, checkpoint validation, folder fusion and the fuse CLI."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fusion.dae_fuse
from data.io import read_ir, read_visible
from data.m3fd import load_m3fd
from fusion.fuse import CheckpointError, CheckpointFuser, fuse_folder, load_fuser_checkpoint, main
from fusion.fusers import create_fuser
from fusion.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_root) -> Path:
    out = tmp_path_factory.mktemp("fuse_run")
    return train(tiny_config("phases=[{name: fuse, epochs: 1}]"), synthetic_root, out, progress=False).last_checkpoint


@pytest.fixture()
def pair_dirs(synthetic_root) -> tuple[Path, Path]:
    return synthetic_root / "Ir", synthetic_root / "Vis"


def test_create_fuser_builds_the_generator_only(checkpoint, monkeypatch):
    def no_discriminators(*args, **kwargs):
        raise AssertionError("inference built the discriminators")

    monkeypatch.setattr(fusion.dae_fuse.PatchDiscriminator, "__init__", no_discriminators)
    fuser = create_fuser("dae_fuse", checkpoint=checkpoint)
    assert isinstance(fuser, CheckpointFuser) and fuser.name == "dae_fuse"
    assert not fuser.model.training


def test_cache_key_follows_the_checkpoint_bytes(checkpoint, tmp_path):
    key = load_fuser_checkpoint(checkpoint).cache_key()
    assert key == load_fuser_checkpoint(checkpoint).cache_key() and key.startswith("dae_fuse:")
    state = torch.load(checkpoint, weights_only=False)
    state["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "other.pt")
    assert load_fuser_checkpoint(tmp_path / "other.pt").cache_key() != key


def test_checkpoint_errors_are_clear(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_fuser_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_fuser_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": 1}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_fuser_checkpoint(tmp_path / "dict.pt")

    state = torch.load(checkpoint, weights_only=False)
    torch.save({**state, "architecture": "cddfuse"}, tmp_path / "other_arch.pt")
    with pytest.raises(CheckpointError, match="architecture 'cddfuse', expected 'dae_fuse'"):
        load_fuser_checkpoint(tmp_path / "other_arch.pt")
    torch.save({**state, "model_config": {**state["model_config"], "vit_dim": 32}}, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match the DAE-Fuse architecture"):
        load_fuser_checkpoint(tmp_path / "mismatch.pt")


def test_fuse_folder_writes_every_pair_and_resumes(checkpoint, synthetic_root, tmp_path):
    pairs = load_m3fd(synthetic_root).pairs()
    fuser = load_fuser_checkpoint(checkpoint)
    (tmp_path / "out").mkdir()
    cv2.imwrite(str(tmp_path / "out" / f"{pairs[0].stem}.png"), np.zeros((4, 4), np.uint8))
    report = fuse_folder(fuser, pairs, tmp_path / "out", progress=False, skip_existing=True)
    assert report["skipped"] == [pairs[0].stem]
    assert report["written"] == [p.stem for p in pairs[1:]] and set(report["per_image"]) == set(report["written"])
    assert report["total_seconds"] >= sum(report["per_image"].values())
    report = fuse_folder(fuser, pairs, tmp_path / "out", progress=False)
    assert len(report["written"]) == len(pairs) and not report["skipped"]
    for pair in pairs:
        out = cv2.imread(str(tmp_path / "out" / f"{pair.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert out.dtype == np.uint8 and out.shape == (64, 80, 3)  # colour visible: its chroma is kept


def test_colour_is_the_visible_chroma(checkpoint, synthetic_root):
    """Only the luma is fused: the fused colour image differs from the visible one by the same amount in B, G, R."""
    from fusion.fusers import fuse_pair

    pair = load_m3fd(synthetic_root).pairs()[0]
    out = fuse_pair(load_fuser_checkpoint(checkpoint), pair).astype(np.float32)
    _, vis_bgr = read_visible(pair.vis)
    delta = out - vis_bgr.astype(np.float32)
    unclipped = (out > 0).all(axis=2) & (out < 255).all(axis=2)
    assert np.abs(delta[..., 0] - delta[..., 1])[unclipped].max() <= 1
    assert np.abs(delta[..., 1] - delta[..., 2])[unclipped].max() <= 1


def test_fuse_cli_checkpoint_and_baseline(checkpoint, pair_dirs, tmp_path, capsys):
    ir_dir, vis_dir = pair_dirs
    assert main(["--checkpoint", str(checkpoint), "--ir", str(ir_dir), "--vis", str(vis_dir), "--out",
                 str(tmp_path / "dae"), "--no-progress"]) == 0
    assert main(["--baseline", "max", "--ir", str(ir_dir), "--vis", str(vis_dir), "--out", str(tmp_path / "max"),
                 "--no-progress"]) == 0
    stems = sorted(p.stem for p in ir_dir.glob("*.png"))
    assert sorted(p.stem for p in (tmp_path / "dae").glob("*.png")) == stems
    stem = stems[0]
    ir = read_ir(ir_dir / f"{stem}.png").astype(np.float32)
    vis_y, vis_bgr = read_visible(vis_dir / f"{stem}.png")
    max_out = cv2.imread(str(tmp_path / "max" / f"{stem}.png"))
    expected = np.clip(np.round(vis_bgr + (np.maximum(ir, vis_y) - vis_y)[..., None]), 0, 255)
    assert np.abs(max_out.astype(np.float32) - expected).max() <= 1

    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--ir", str(ir_dir), "--vis", str(vis_dir), "--out",
                 str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
