"""The inference copy of DAE-Fuse (fusion.models.inference): the same outputs as the trained model, less memory
traffic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from fusion.fusers.fuse import CheckpointFuser
from fusion.models.dae_fuse import ShallowEncoder, create_model
from fusion.models.inference import ShallowEncoderForInference, fold_batch_norms, for_inference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_looking(name: str = "dae_fuse_t", **overrides) -> nn.Module:
    """A model whose BN statistics and affine terms are far from their defaults (so folding them is not a no-op)
    and whose zero-initialised layers (residual BNs, fusion gates) are not zero."""
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.3, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for name_, param in model.named_parameters():
            if "gate" in name_ or "merge" in name_:
                param.normal_(0, 0.3)
    return model.eval()


def images(n: int = 2, h: int = 48, w: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


@pytest.mark.parametrize("overrides", [{}, {"cnn_norm": "groupnorm"}, {"encoder": "transformer"},
                                       {"fusion": "concat", "skip_fusion": "max"}])
def test_inference_copy_fuses_and_reconstructs_like_the_model(overrides):
    model = trained_looking(**overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = for_inference(model)
    ir, vis = images(h=50, w=70)  # not a multiple of the token stride: padding and cropping included
    with torch.inference_mode():
        expected, got = model(ir, vis), fast(ir, vis)
        recon_expected, recon_got = model.reconstruct(ir, vis), fast.reconstruct(ir, vis)
    assert got.shape == expected.shape == (2, 1, 50, 70)
    assert (got - expected).abs().max().item() < 1e-5
    assert all((a - b).abs().max().item() < 1e-5 for a, b in zip(recon_got, recon_expected))
    # the trained model is untouched: same weights, its BNs and shallow encoder still there
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(model.encoder.shallow, ShallowEncoder)
    assert not any(p.requires_grad for p in fast.parameters())


def test_every_batch_norm_after_a_conv_is_folded():
    model = trained_looking()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fast = for_inference(model)
    assert norms > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    # GroupNorm has per-sample statistics: nothing to fold, and nothing is
    grouped = trained_looking(cnn_norm="groupnorm")
    assert fold_batch_norms(grouped) == 0
    assert any(isinstance(m, nn.GroupNorm) for m in grouped.modules())


def test_shallow_encoder_without_the_concatenation_keeps_the_image_exactly():
    torch.manual_seed(0)
    shallow = ShallowEncoder(1, 8, 16).eval()
    fast = ShallowEncoderForInference(shallow)
    x = torch.rand(2, 1, 24, 40)
    with torch.inference_mode():
        (full, half), (full_fast, half_fast) = shallow(x), fast(x)
    assert torch.equal(full_fast[:, -1:], x)  # the image rides through the identity channel bit for bit
    assert (full_fast - full).abs().max().item() < 1e-6 and (half_fast - half).abs().max().item() < 1e-6


def test_cpu_fuser_runs_a_frame_per_forward_with_the_whole_batch_result(tmp_path, monkeypatch):
    model = trained_looking()
    path = tmp_path / "ckpt.pt"
    torch.save({"architecture": "dae_fuse", "model": model.state_dict(), "model_config": model.cfg.to_dict()}, path)
    fuser = CheckpointFuser(path, allow_unfused=True)
    ir, vis = images(n=3)
    frames = [a[0].numpy() * 255 for a in ir], [b[0].numpy() * 255 for b in vis]

    sizes = []
    forward = fuser.inference_model.forward
    monkeypatch.setattr(fuser.inference_model, "forward", lambda a, b: sizes.append(a.shape[0]) or forward(a, b))
    chunked = fuser.fuse_luma_batch(*frames)
    assert sizes == [1, 1, 1]
    monkeypatch.setitem(fuser.FRAMES_PER_FORWARD, "cpu", None)
    whole = fuser.fuse_luma_batch(*frames)
    assert sizes == [1, 1, 1, 3]
    with torch.inference_mode():
        reference = model(ir, vis)[:, 0].numpy() * 255
    assert chunked.shape == (3, 48, 80)
    assert np.abs(chunked - whole).max() < 1e-2 and np.abs(chunked - reference).max() < 1e-2


KEEP_FREED_MEMORY_SCRIPT = """
import platform, torch
from fusion.models.dae_fuse import create_model
from fusion.models.inference import for_inference, keep_freed_memory
torch.manual_seed(0)
model = for_inference(create_model("dae_fuse_t").eval())
ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)
with torch.inference_mode():
    before = model(ir, vis)
    kept = keep_freed_memory()
    after = model(ir, vis)
assert kept == (platform.libc_ver()[0] == "glibc"), (kept, platform.libc_ver())
assert torch.equal(before, after)
print("ok", kept)
"""


def test_keeping_freed_memory_is_set_on_glibc_and_leaves_outputs_bit_identical():
    """A process-wide allocator setting: run in its own interpreter so the test session keeps glibc's default."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY_SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
