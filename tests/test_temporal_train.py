"""Temporal fine-tuning (fusion.training.temporal_train): warping, the temporal loss, the config, a tiny run and its
resume."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fusion.models.checkpoint import read_generator_checkpoint
from fusion.training.temporal_train import TemporalTrainConfig, prepare_pairs, temporal_loss, train, warp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_warp_follows_the_flow():
    image = torch.arange(48.0).reshape(1, 1, 6, 8)
    assert torch.allclose(warp(image, torch.zeros(1, 2, 6, 8)), image, atol=1e-4)
    shifted = warp(image, torch.cat([torch.ones(1, 1, 6, 8), torch.zeros(1, 1, 6, 8)], dim=1))
    assert torch.allclose(shifted[..., :-1], image[..., 1:], atol=1e-4)  # image(x + 1)


def test_temporal_loss_zero_for_motion_followed_and_positive_for_flicker():
    rng = torch.Generator().manual_seed(0)
    scene = torch.rand(1, 1, 20, 30, generator=rng)
    before, now = scene[..., :, 2:26], scene[..., :, 0:24]  # the scene moved 2 px right: now(x) = before(x - 2)
    flow = torch.cat([torch.full((1, 1, 20, 24), -2.0), torch.zeros(1, 1, 20, 24)], dim=1)
    mask = torch.ones(1, 1, 20, 24)
    assert temporal_loss(before, now, flow, mask) < 1e-6
    assert temporal_loss(before, now + 0.1, flow, mask) == pytest.approx(0.1, abs=1e-5)
    assert temporal_loss(before, now + 0.1, flow, torch.zeros_like(mask)) == 0  # all occluded: nothing to compare


def test_config_lists_every_problem(tmp_path):
    with pytest.raises(ValueError) as err:
        TemporalTrainConfig(crop=100, steps=0, temporal_weight=-1.0)
    for piece in ("crop must be a multiple of 16", "steps must be positive", "temporal_weight must be >= 0"):
        assert piece in str(err.value)
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\nbogus: 1\n")
    with pytest.raises(ValueError, match="unknown key.*bogus"):
        TemporalTrainConfig.from_yaml(path)
    path.write_text("steps: 3\n")
    with pytest.raises(ValueError, match="steps: expected an integer"):  # typed, through data.config
        TemporalTrainConfig.from_yaml(path, ["steps=many"])
    assert TemporalTrainConfig.from_yaml(path, ["temporal_weight=200"]).temporal_weight == 200.0


def clip(tmp_path, frames: int = 5):
    """Two tiny lossless videos of a view sliding 1 px per frame along a texture (infrared: its inverse)."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (48, 64 + frames)).astype(np.float32), (5, 5), 1.5)
    paths = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    writers = [cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"FFV1"), 30.0, (64, 48), True) for p in paths]
    for i in range(frames):
        view = np.clip(texture[:, i:i + 64], 0, 255).astype(np.uint8)
        writers[0].write(cv2.cvtColor(255 - view, cv2.COLOR_GRAY2BGR))
        writers[1].write(cv2.cvtColor(view, cv2.COLOR_GRAY2BGR))
    for w in writers:
        w.release()
    return paths


def test_pairs_flow_and_mask(tmp_path):
    ir, vis = clip(tmp_path)
    data = prepare_pairs(TemporalTrainConfig(ir_video=str(ir), vis_video=str(vis), frame_stride=2, crop=32))
    assert data.ir.shape == (2, 1, 48, 64) and data.flow.shape == (2, 2, 48, 64)
    inner = data.mask[..., 8:-8, 8:-8].bool()
    # the view slides 1 px along the texture, so frame t+1 at x shows frame t at x + 1: the flow t+1 -> t is (1, 0)
    assert inner.float().mean() > 0.5
    assert torch.allclose(data.flow[:, 0:1][..., 8:-8, 8:-8][inner], torch.tensor(1.0), atol=0.3)


def test_tiny_run_writes_a_release_and_resumes(tmp_path):
    ir, vis = clip(tmp_path)
    cfg = TemporalTrainConfig(ir_video=str(ir), vis_video=str(vis), frame_stride=2, crop=32, batch_pairs=1,
                              steps=2, checkpoint_every=1, threads=1)
    final = train(cfg, tmp_path / "run", log=lambda _: None)
    _, state = read_generator_checkpoint(final)
    assert state["temporal_finetune"]["steps"] == 2 and state["model_name"] == "dae_fuse_temporal"
    assert next(iter(state["model"].values())).dtype == torch.bfloat16
    lines = []
    train(cfg, tmp_path / "run", log=lines.append)  # the finished run resumes at its last step and trains no more
    assert any("resumed at step 2" in line for line in lines)
    with pytest.raises(ValueError, match="another config"):
        train(TemporalTrainConfig(**{**cfg.__dict__, "lr": 1e-3}), tmp_path / "run", log=lambda _: None)
