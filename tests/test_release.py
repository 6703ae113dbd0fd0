"""The released DAE-Fuse (issue 13): the tracked weights load with weights_only and fuse, the release tool writes
a generator-only half-precision file that fuses as its training checkpoint does, and the pipeline ranks it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.fusers.fuse import CheckpointError, load_fuser_checkpoint
from fusion.models.checkpoint import RELEASE_FORMAT, load_checkpoint, main as checkpoint_main
from fusion.training.train import train
from fusion.weights import RELEASED_CHECKPOINT, RELEASED_NAME
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_released_weights_load_and_fuse():
    if not RELEASED_CHECKPOINT.is_file():  # only a checkout without the tracked file; never main
        pytest.skip(f"{RELEASED_CHECKPOINT} is absent")
    assert RELEASED_CHECKPOINT.stat().st_size <= 8 * 1024 * 1024
    _, state = load_checkpoint(RELEASED_CHECKPOINT)
    assert state["format"] == RELEASE_FORMAT and "discriminators" not in state and "optimizers" not in state
    assert all(v.dtype == torch.bfloat16 for v in state["model"].values() if v.is_floating_point())
    fuser = load_fuser_checkpoint(RELEASED_CHECKPOINT)
    rng = np.random.default_rng(0)
    ir = rng.uniform(0, 255, (64, 80)).astype(np.float32)
    vis = rng.uniform(0, 255, (64, 80)).astype(np.float32)
    fused = fuser.fuse_luma(ir, vis)
    assert fused.shape == (64, 80) and np.isfinite(fused).all() and 0 < fused.mean() < 255
    # what the fused image follows depends on both sources: it is a fusion, not a copy of one
    assert not np.allclose(fused, fuser.fuse_luma(ir, np.zeros_like(vis)), atol=1)
    assert not np.allclose(fused, fuser.fuse_luma(np.zeros_like(ir), vis), atol=1)


def test_release_tool_keeps_the_generator_in_half_precision(tmp_path, synthetic_root):
    run = train(tiny_config("phases=[{name: fuse, epochs: 1}]"), synthetic_root, tmp_path / "run", progress=False)
    out = tmp_path / "released.pt"
    assert checkpoint_main(["release", str(run.last_checkpoint), str(out)]) == 0
    assert out.stat().st_size < run.last_checkpoint.stat().st_size / 2
    trained, released = load_fuser_checkpoint(run.last_checkpoint), load_fuser_checkpoint(out)
    rng = np.random.default_rng(1)
    ir, vis = (rng.uniform(0, 255, (48, 64)).astype(np.float32) for _ in range(2))
    # bfloat16 storage moves the output by a few grey levels at most
    assert np.abs(trained.fuse_luma(ir, vis) - released.fuse_luma(ir, vis)).max() < 4.0
    assert released.cache_key() != trained.cache_key()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert checkpoint_main(["release", str(tmp_path / "junk.pt"), str(tmp_path / "x.pt")]) == 2
    with pytest.raises(CheckpointError):
        load_fuser_checkpoint(tmp_path / "x.pt")


def test_every_preset_but_tiny_ranks_the_release():
    from pipelines.engine import PipelineConfig, candidate_specs, load_pipeline_preset

    for preset in ("quick", "standard", "paper"):
        specs = candidate_specs(PipelineConfig(preset=preset), load_pipeline_preset(preset))
        released = [s for s in specs if s.kind == "released"]
        assert [s.name for s in released] == [RELEASED_NAME] and released[0].args["checkpoint"] == RELEASED_CHECKPOINT
    assert not any(s.kind == "released" for s in candidate_specs(PipelineConfig(preset="tiny"),
                                                                 load_pipeline_preset("tiny")))
    off = PipelineConfig(preset="quick", released_dae_fuse=False)
    assert not any(s.kind == "released" for s in candidate_specs(off, load_pipeline_preset("quick")))


def test_the_pipeline_fuses_and_ranks_the_release(tmp_path, synthetic_root):
    from pipelines.engine import PipelineConfig, run_pipeline

    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", progress=False, baselines=[],
                         released_dae_fuse=True, train_dae_fuse=False, bootstrap_resamples=0)
    rows = {r["name"]: r for r in run_pipeline(cfg)["candidates"]}
    assert set(rows) == {"ir", "vis", RELEASED_NAME}
    release = rows[RELEASED_NAME]
    assert release["error"] is None and release["kind"] == "released" and release["detection"]
    assert "released DAE-Fuse" in release["origin"] and release["fuse_seconds_per_image"] > 0


def test_the_three_band_weights_load_and_fuse_any_two_or_three_bands():
    from fusion.weights import TRIBAND_CHECKPOINT

    if not TRIBAND_CHECKPOINT.is_file():
        pytest.skip(f"{TRIBAND_CHECKPOINT} is absent")
    assert TRIBAND_CHECKPOINT.stat().st_size <= 8 * 1024 * 1024
    _, state = load_checkpoint(TRIBAND_CHECKPOINT)
    assert state["format"] == RELEASE_FORMAT and tuple(state["model_config"]["modalities"]) == ("vis", "nir", "lwir")
    fuser = load_fuser_checkpoint(TRIBAND_CHECKPOINT)
    assert fuser.modalities == ("vis", "nir", "lwir")
    rng = np.random.default_rng(2)
    images = {m: rng.uniform(0, 255, (64, 80)).astype(np.float32) for m in fuser.modalities}
    fused = fuser.fuse(images)
    assert fused.shape == (64, 80) and np.isfinite(fused).all() and 0 < fused.mean() < 255
    # every band reaches the fused image
    for m in fuser.modalities:
        assert not np.allclose(fused, fuser.fuse({**images, m: np.zeros_like(images[m])}), atol=1)
    # a blinded band declared missing: the model fuses the other two, whatever the blinded one shows
    model = fuser.model
    x = [torch.from_numpy(images[m] / 255.0)[None, None].float() for m in model.modalities]
    present = torch.tensor([[False, True, True]])
    with torch.inference_mode():
        a = model(*x, present=present)
        b = model(torch.ones_like(x[0]), *x[1:], present=present)
    assert torch.equal(a, b)
