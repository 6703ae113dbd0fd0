"""DAE-Fuse model: shapes at any size, phase gradients, fusion-rule initialisation, losses.

The fixtures shared with the trainer and inference tests (synthetic M3FD-layout folder, one torch thread, the tiny
config) live in conftest.py.
"""
from __future__ import annotations


import pytest
import torch

from fusion.models.dae_fuse import (
    MODELS,
    DAEFuse,
    DAEFuseConfig,
    PatchDiscriminator,
    build_discriminators,
    create_model,
    pad_to_multiple,
)
from fusion.training.losses import (
    GAN_LOSSES,
    SSIM,
    SSIM_LOSSES,
    FusionLoss,
    ReconstructionLoss,
    Sobel,
    discriminator_loss,
)
from fusion.training.train import PHASES, Losses
from tests.conftest import assert_phase_gradients, tiny_config


# -- shared fixtures -------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand_pair(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


# -- model -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(37, 53), (5, 7), (64, 48)])
def test_any_size_fuses_and_reconstructs_at_that_size(size):
    model = create_model("dae_fuse_t").eval()
    ir, vis = _rand_pair(2, *size)
    with torch.no_grad():
        fused = model(ir, vis)
        ir_hat, vis_hat = model.reconstruct(ir, vis)
    for out in (fused, ir_hat, vis_hat):
        assert out.shape == (2, 1, *size)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("token_stride, decoder", [(8, (16, 8)), (32, (16, 16, 8, 8))])
def test_other_token_strides_build_and_run(token_stride, decoder):
    model = create_model("dae_fuse_t", token_stride=token_stride, decoder_channels=decoder).eval()
    ir, vis = _rand_pair(1, 37, 53)
    with torch.no_grad():
        assert model(ir, vis).shape == (1, 1, 37, 53)


def test_default_variant_on_an_odd_size():
    model = create_model("dae_fuse_s").eval()
    ir, vis = _rand_pair(1, 37, 53)
    with torch.no_grad():
        assert model(ir, vis).shape == (1, 1, 37, 53)


def test_registry_and_config_errors():
    assert {"dae_fuse_t", "dae_fuse_s", "dae_fuse_b"} <= set(MODELS.names())
    with pytest.raises(KeyError, match="dae_fuse_s"):
        create_model("dae_fuse_xl")
    with pytest.raises(ValueError, match="decoder_channels needs .* = 3 entries"):
        DAEFuseConfig(decoder_channels=(8, 8))
    with pytest.raises(ValueError, match="unknown DAEFuseConfig field"):
        DAEFuseConfig.from_dict({"width": 3})
    cfg = create_model("dae_fuse_t").cfg
    assert DAEFuseConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm", "identity"])
def test_every_cnn_norm_builds_and_trains(norm):
    """Every documented cnn_norm works on the narrowest variant: group norm picks a group count that divides the
    channels (dae_fuse_t has 8 and 24), 'identity' is no norm at all."""
    model = create_model("dae_fuse_t", cnn_norm=norm)
    ir, vis = _rand_pair(2, 32, 32)
    model(ir, vis).mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    group_norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert bool(group_norms) == (norm == "groupnorm")
    assert all(m.num_channels % m.num_groups == 0 and m.num_groups <= 32 for m in group_norms)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) or norm == "batchnorm"


def test_unknown_cnn_norm_is_a_config_error():
    with pytest.raises(ValueError, match="cnn_norm must be one of batchnorm, groupnorm, identity, got 'layernorm'"):
        DAEFuseConfig(cnn_norm="layernorm")


def test_padding_reflects_and_crops_back():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded, size = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4) and size == (3, 4)
    assert torch.equal(padded[..., 3, :], x[..., 1, :])  # reflection of row 1 about row 2


def test_fusion_rules_start_as_the_average():
    """With the cross-attention branches silenced, the merge of the two embeddings is their average, and every
    skip gate is 0.5: the untrained fusion is the average fusion, a neutral start for phase 2."""
    model = create_model("dae_fuse_t").eval()
    ir_f, vis_f = model.encode(*_rand_pair(1, 32, 32))
    for rule, a, b in zip(model.skip_fusion, ir_f.skips, vis_f.skips):
        torch.testing.assert_close(rule(a, b), (a + b) / 2)
    merged = model.fusion.merge(torch.cat([torch.ones(1, 4, 32), 3 * torch.ones(1, 4, 32)], dim=-1))
    torch.testing.assert_close(merged, 2 * torch.ones(1, 4, 32))


def _ones_for_norm_weights(model: DAEFuse) -> None:
    # timm zero-initialises the last norm of each residual block, which zeroes the gradient of the conv before it
    # at step 0; give those norms weight 1 so a zero gradient below means "not connected", not "not yet".
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)


@pytest.mark.parametrize("phase", ["recon", "fuse"])
def test_gradient_reaches_every_parameter_in_both_phases(phase):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = create_model("dae_fuse_t")
    _ones_for_norm_weights(model)
    discriminators = build_discriminators(channels=4)
    losses, gan = Losses(cfg), GAN_LOSSES.get("lsgan")
    ir, vis = _rand_pair(2, 32, 32)

    # Generator step: discriminators frozen; every parameter the phase trains gets a non-zero gradient.
    discriminators.requires_grad_(False)
    content, fakes = PHASES.get(phase).generate(model, losses, ir, vis)
    (content["total"] + sum(gan(discriminators[m](fakes[m]), True) for m in ("ir", "vis"))).backward()
    assert_phase_gradients(model, phase)
    assert all(p.grad is None for p in discriminators.parameters())

    # Discriminator step: every discriminator parameter gets a gradient from real vs detached fake.
    discriminators.requires_grad_(True)
    real = {"ir": ir, "vis": vis}
    sum(
        discriminator_loss(gan, discriminators[m](real[m]), discriminators[m](fakes[m].detach())) for m in ("ir", "vis")
    ).backward()
    for name, p in discriminators.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{phase}: no gradient at discriminator {name}"


def test_phase_two_trains_every_generator_parameter():
    model = create_model("dae_fuse_t")
    assert len(model.phase_parameters("fuse")) == len(list(model.parameters()))
    assert len(model.phase_parameters("recon")) < len(model.phase_parameters("fuse"))


def test_discriminator_output_is_a_patch_map():
    d = PatchDiscriminator(channels=8, num_layers=3)
    assert d(torch.rand(2, 1, 64, 48)).shape == (2, 1, 8, 6)


# -- losses ----------------------------------------------------------------------------------------------------


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    x, y = _rand_pair(2, 40, 40)
    ssim = SSIM()
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, y)) < 0.2


def test_fusion_loss_prefers_the_max_to_the_mean():
    """The fusion objective (CDDFuse) rewards keeping the brighter source: a warm IR target on a flat visible
    background must not be averaged away."""
    ir = torch.zeros(1, 1, 32, 32)
    ir[..., 10:20, 10:20] = 1.0
    vis = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.3
    loss = FusionLoss(1.0, 10.0)
    assert float(loss(ir, vis, torch.maximum(ir, vis))["intensity"]) == 0.0
    assert float(loss(ir, vis, torch.maximum(ir, vis))["total"]) < float(loss(ir, vis, (ir + vis) / 2)["total"])


def test_kornia_ssim_loss_is_half_of_one_minus_ssim_where_the_map_is_not_negative():
    """CDDFuse's 5 * kornia SSIM loss is 2.5 * (1 - SSIM) on similar images; dissimilar pixels are clamped."""
    x, noise = _rand_pair(2, 40, 40)
    ssim, kornia = SSIM(), SSIM_LOSSES.get("kornia")
    close = (x + 0.05 * (noise - 0.5)).clamp(0, 1)
    assert ssim.ssim_map(x, close).min() >= 0
    assert float(kornia(ssim.ssim_map(x, close))) == pytest.approx(float(1 - ssim(x, close)) / 2, rel=1e-4)
    assert float(SSIM_LOSSES.get("one_minus")(ssim.ssim_map(x, close))) == pytest.approx(float(1 - ssim(x, close)))
    far = ssim.ssim_map(x, noise)
    assert far.min() < 0 and float(kornia(far)) == pytest.approx(float(((1 - far).clamp(0, 1) / 2).mean()))
    assert float(kornia(far)) < float(1 - far.mean()) / 2


def test_reconstruction_gradient_term_follows_cddfuse_options():
    """The normalised Sobel is the raw one / 8 (kornia SpatialGradient); grad_targets picks the modalities."""
    x, y = _rand_pair(1, 32, 32)
    torch.testing.assert_close(Sobel(normalized=True)(x), Sobel()(x) / 8)
    real, recon = {"ir": x, "vis": y}, {"ir": y, "vis": x}
    cddfuse = ReconstructionLoss(5.0, 1.0, 5.0, ssim_loss="kornia", grad_targets=("vis",), sobel_normalized=True)(
        real, recon)
    both = ReconstructionLoss(5.0, 1.0, 5.0)(real, recon)
    assert set(cddfuse) == {"ir_ssim", "ir_mse", "vis_ssim", "vis_mse", "vis_grad", "total"}
    assert set(both) == set(cddfuse) | {"ir_grad"}
    torch.testing.assert_close(cddfuse["vis_grad"], both["vis_grad"] / 8)
    torch.testing.assert_close(cddfuse["total"], sum(v for k, v in cddfuse.items() if k != "total"))
