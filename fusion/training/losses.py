"""DAE-Fuse training losses. Every loss returns a dict of named terms (weighted) with their sum under 'total'.

Images are (B, 1, H, W) in [0, 1]. Numbers (weights, window) come from the training config; their sources are
documented there (``fusion/configs/paper.yaml``). The recipes follow CDDFuse (Zhao et al., CVPR 2023,
``train.py`` and ``utils/loss.py`` at commit fd8da1f), where the DAE-Fuse paper is silent:

* reconstruction (phase 1), per modality: ``w_ssim * L_ssim + w_mse * MSE``, plus ``w_grad * L1(grad, grad_hat)``
  for the modalities in ``grad_targets``. CDDFuse's own terms are the defaults: ``L_ssim`` is kornia 0.2.0's SSIM
  loss, ``mean(clamp(1 - SSIM map, 0, 1) / 2)`` (``SSIM_LOSSES['kornia']``, so CDDFuse's ``5 * Loss_ssim`` is about
  ``2.5 * (1 - SSIM)``), and the gradient term is ``kornia.filters.SpatialGradient()``'s normalised Sobel (kernel
  / 8) on the visible image only; ``'one_minus'`` (``1 - SSIM``), the raw Sobel and both modalities are options;
* fusion (phase 2): ``w_int * L1(F, max(ir, vis)) + w_grad * L1(|Sobel F|, max(|Sobel ir|, |Sobel vis|))`` - the
  max-intensity term is what keeps IR's warm targets at full contrast, the max-gradient term adds the texture of
  whichever source is sharper; with N sources both maxima run over all of them (``FusionLoss.n_sources``; a missing
  source is zeros, which neither maximum sees since images and gradient magnitudes are >= 0);
* adversarial terms: a registry of GAN objectives (``GAN_LOSSES``); the default is least squares (LSGAN).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from data.registry import Registry

LossDict = dict[str, Tensor]


def gaussian_kernel1d(size: int, sigma: float) -> Tensor:
    """1-D Gaussian of ``size`` taps, summing to 1."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


class SSIM(nn.Module):
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window, for images in [0, 1].

    Window 11 / sigma 1.5 / K1 0.01 / K2 0.03 are the paper's and kornia's defaults (CDDFuse uses
    ``kornia.losses.SSIM(11)``). The five local moments are blurred in one separable pass (two 1-D convolutions
    over the stacked maps, 2 x 11 taps instead of 121). Reflection padding keeps the input's size.
    """

    def __init__(self, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel1d(window_size, sigma), persistent=False)
        self.pad = window_size // 2
        self.c1, self.c2 = k1**2, k2**2

    def _blur(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad,) * 4, mode="reflect")
        x = F.conv2d(x, self.kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return F.conv2d(x, self.kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)

    def ssim_map(self, x: Tensor, y: Tensor) -> Tensor:
        """Two (B, C, H, W) images in [0, 1] -> the local SSIM of every pixel, (B, C, H, W)."""
        mu_x, mu_y, xx, yy, xy = self._blur(torch.cat([x, y, x * x, y * y, x * y], dim=1)).chunk(5, dim=1)
        var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
        num = (2 * mu_x * mu_y + self.c1) * (2 * cov + self.c2)
        den = (mu_x**2 + mu_y**2 + self.c1) * (var_x + var_y + self.c2)
        return num / den

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Two (B, C, H, W) images in [0, 1] -> scalar mean SSIM (1 for identical images)."""
        return self.ssim_map(x, y).mean()


# name -> f(SSIM map) -> scalar loss, 0 for identical images
SSIM_LOSSES: Registry[Callable[[Tensor], Tensor]] = Registry("SSIM loss")


@SSIM_LOSSES.register("kornia")
def kornia_ssim_loss(ssim_map: Tensor) -> Tensor:
    """kornia 0.2.0's ``losses.SSIM`` (what CDDFuse trains with): ``mean(clamp(1 - map, 0, 1) / 2)``, in [0, 1].

    Half of ``1 - SSIM`` wherever the local SSIM is non-negative, so a weight w on it weighs ``1 - SSIM`` by w / 2.
    """
    return ((1 - ssim_map).clamp(0, 1) / 2).mean()


@SSIM_LOSSES.register("one_minus")
def one_minus_ssim_loss(ssim_map: Tensor) -> Tensor:
    """``1 - mean SSIM``, in [0, 2]: the textbook form, twice kornia's wherever the local SSIM is non-negative."""
    return 1 - ssim_map.mean()


class Sobel(nn.Module):
    """Sobel derivatives as a device-agnostic buffer: ``forward`` gives (B, 2C, H, W) = (d/dx, d/dy) per channel.

    ``normalized``: the kernel divided by the sum of its absolute values (8), as ``kornia.filters.SpatialGradient``
    does by default; replicate padding is kornia's too.
    """

    def __init__(self, normalized: bool = False) -> None:
        super().__init__()
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        if normalized:
            kx = kx / kx.abs().sum()
        self.register_buffer("kernel", torch.stack([kx, kx.t()])[:, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.kernel.repeat(c, 1, 1, 1), groups=c)

    def magnitude(self, x: Tensor) -> Tensor:
        """|d/dx| + |d/dy| (CDDFuse's ``Sobelxy``), (B, C, H, W)."""
        gx, gy = self(x).abs().chunk(2, dim=1)
        return gx + gy


class ReconstructionLoss(nn.Module):
    """Phase 1: how well each modality is rebuilt from its own embedding.

    Args:
        ssim_weight, mse_weight, grad_weight: weights of the SSIM, MSE and gradient terms.
        ssim_window: Gaussian SSIM window.
        ssim_loss: ``SSIM_LOSSES`` name: 'kornia' (CDDFuse's) or 'one_minus'.
        grad_targets: the modalities that get a gradient term (CDDFuse: the visible one only).
        sobel_normalized: Sobel kernel / 8 (kornia's ``SpatialGradient``, CDDFuse's) or the raw kernel.
    """

    def __init__(
        self,
        ssim_weight: float,
        mse_weight: float,
        grad_weight: float,
        ssim_window: int = 11,
        *,
        ssim_loss: str = "one_minus",
        grad_targets: tuple[str, ...] = ("ir", "vis"),
        sobel_normalized: bool = False,
    ):
        super().__init__()
        self.weights = {"ssim": ssim_weight, "mse": mse_weight, "grad": grad_weight}
        self.ssim = SSIM(ssim_window)
        self.ssim_loss = SSIM_LOSSES.get(ssim_loss)
        self.grad_targets = frozenset(grad_targets)
        self.sobel = Sobel(sobel_normalized)

    def forward(self, real: dict[str, Tensor], recon: dict[str, Tensor], present: Tensor | None = None) -> LossDict:
        """``real`` and ``recon`` map modality ('ir', 'vis', ...) to images; terms are named '<modality>_<term>'.

        ``present`` (B, N) bool, columns in ``real``'s order: each modality is judged on the samples that have it
        only (a modality no sample of the batch has gets no terms)."""
        terms: LossDict = {}
        for i, (m, x) in enumerate(real.items()):
            x_hat = recon[m]
            if present is not None:
                if not bool(present[:, i].any()):
                    continue
                x, x_hat = x[present[:, i]], x_hat[present[:, i]]
            raw = {"ssim": self.ssim_loss(self.ssim.ssim_map(x_hat, x)), "mse": F.mse_loss(x_hat, x)}
            if m in self.grad_targets:
                raw["grad"] = F.l1_loss(self.sobel(x_hat), self.sobel(x))
            terms.update({f"{m}_{k}": self.weights[k] * v for k, v in raw.items()})
        terms["total"] = sum(terms.values())
        return terms


class FusionLoss(nn.Module):
    """Phase 2: the fused image should hold the brighter intensity and the stronger gradient of the sources."""

    def __init__(self, intensity_weight: float, grad_weight: float):
        super().__init__()
        self.intensity_weight = intensity_weight
        self.grad_weight = grad_weight
        self.sobel = Sobel()

    def forward(self, ir: Tensor, vis: Tensor, fused: Tensor) -> LossDict:
        return self.n_sources([ir, vis], fused)

    def n_sources(self, sources: list[Tensor] | tuple[Tensor, ...], fused: Tensor) -> LossDict:
        """The same loss for N >= 2 sources: the maxima over all of them (two: exactly ``forward``'s)."""
        target = torch.maximum(sources[0], sources[1])
        grad_target = torch.maximum(self.sobel.magnitude(sources[0]), self.sobel.magnitude(sources[1]))
        for x in sources[2:]:
            target = torch.maximum(target, x)
            grad_target = torch.maximum(grad_target, self.sobel.magnitude(x))
        intensity = F.l1_loss(fused, target)
        grad = F.l1_loss(self.sobel.magnitude(fused), grad_target)
        terms = {"intensity": self.intensity_weight * intensity, "grad": self.grad_weight * grad}
        terms["total"] = terms["intensity"] + terms["grad"]
        return terms


# name -> f(scores, target_is_real) -> scalar loss. The generator calls it with target_is_real=True on its fakes.
GANLoss = Callable[[Tensor, bool], Tensor]
GAN_LOSSES: Registry[GANLoss] = Registry("GAN loss")


@GAN_LOSSES.register("lsgan")
def lsgan_loss(scores: Tensor, target_is_real: bool) -> Tensor:
    """Least squares (Mao et al., LSGAN 2017): MSE of the scores to 1 (real) or 0 (fake).

    Chosen as default because its gradient does not vanish for confidently classified fakes and does not explode
    either (it is linear in the score), which keeps a small generator/discriminator pair stable; the IR-visible GAN
    fusion line (FusionGAN, Ma et al. 2019; DDcGAN, Ma et al. 2020) trains with it.
    """
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if target_is_real else 0.0))


@GAN_LOSSES.register("vanilla")
def vanilla_gan_loss(scores: Tensor, target_is_real: bool) -> Tensor:
    """Non-saturating GAN (Goodfellow et al. 2014): binary cross-entropy on logits."""
    return F.binary_cross_entropy_with_logits(scores, torch.full_like(scores, 1.0 if target_is_real else 0.0))


def discriminator_loss(gan_loss: GANLoss, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Half the sum of the real and fake terms (pix2pix / BasicSR convention, so D learns at half G's pace)."""
    return 0.5 * (gan_loss(real_scores, True) + gan_loss(fake_scores, False))
