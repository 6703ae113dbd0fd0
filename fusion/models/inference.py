"""An inference copy of a trained DAE-Fuse generator: the same function, fewer passes over memory.

On a 2-core CPU most of a DAE-Fuse forward at 1024x768 is not arithmetic but moving full-resolution feature maps
(few channels, every pixel): concatenations, normalisation and element-wise layers each read and write the whole
map. ``for_inference(model)`` returns a copy with the same outputs (up to float rounding, tested) and less of
that traffic:

* every ``BatchNorm2d`` that directly follows a convolution (the CNN branch: its stem, the timm ``BasicBlock``s
  and their downsample paths) is folded into that convolution's weights and bias (the eval-mode affine map
  ``gamma * (x - mean) / sqrt(var + eps) + beta`` is linear, so conv-then-BN is one conv;
  ``torch.nn.utils.fusion.fuse_conv_bn_eval``);
* the shallow encoder's full-resolution concatenation ``[act(conv(x)), x]`` becomes one convolution with
  ``in_chans`` extra identity outputs (a centre-tap kernel of weight 1, bias 0): LeakyReLU is the identity on
  the non-negative inputs the model takes ([0, 1]), so the extra channels are ``x`` exactly;
* weights in channels-last layout (where it is faster: ``CHANNELS_LAST_DEVICES``).

The copy is for ``torch.inference_mode`` use only (no training: the folded BN statistics are frozen). The trained
model is left untouched, so a checkpoint's state dict stays the training layout.

``keep_freed_memory()`` is the process-wide half (an application calls it, as it would ``torch.set_num_threads``):
glibc hands every freed block above its mmap threshold back to the operating system, so each full-resolution map
of each forward (25 MB at 1024x768 with 8 channels) comes back as fresh pages that fault in one by one. Keeping
freed memory in the process (the reason PyTorch's CPU tuning guide suggests jemalloc or tcmalloc) made the
release's forward 13 % faster at 640x480 and 17 % at 1024x768 on the 2-core CPU (84 against 98 ms and 273
against 332 ms, ``benchmarks/results/video_speed.md``), with bit-identical outputs.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import itertools

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .dae_fuse import DAEFuse, ShallowEncoder

# Devices whose inference copy has channels-last weights: on the 2-core CPU a dae_fuse_s forward took 10-25 % less
# time per frame at 640x512 and 1024x768 that way (interleaved runs, batches of 1 and 2); on CUDA it is
# unmeasured, so off until benchmarks/gpu_check.sh's "cuda bf16 cl" row says otherwise.
CHANNELS_LAST_DEVICES: tuple[str, ...] = ("cpu",)


# glibc's mallopt parameters (malloc.h): freed blocks above M_TRIM_THRESHOLD at the top of the heap go back to the
# OS; allocations above M_MMAP_THRESHOLD get their own mapping, unmapped when freed.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# The largest value both take: every allocation then comes from the heap, and the heap is never trimmed.
KEEP_ALL = 2**31 - 1


def keep_freed_memory() -> bool:
    """Keep memory freed by torch in this process for its next tensors instead of returning it to the OS (glibc
    only; see the module docstring). The process's resident size stays at its peak. Returns whether it was set
    (False where the C library is not glibc: nothing is changed)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_ALL)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_ALL))


def _fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d | None:
    """The conv with an eval-mode BatchNorm2d folded in, or None when ``norm`` is not one that can be folded."""
    if type(norm) is not nn.BatchNorm2d or norm.running_mean is None or type(conv) is not nn.Conv2d:
        return None
    return fuse_conv_bn_eval(conv.eval(), norm.eval())


def fold_batch_norms(module: nn.Module) -> int:
    """Fold, in place, each BatchNorm2d that directly follows a conv: in an ``nn.Sequential`` (consecutive
    children) and in timm's ``BasicBlock`` (conv1/bn1, conv2/bn2: between them only identity layers at eval).
    The BN becomes ``nn.Identity``. Returns how many were folded."""
    folded = 0
    for parent in module.modules():
        pairs: list[tuple[str, str]] = []
        if isinstance(parent, BasicBlock):
            pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        elif isinstance(parent, nn.Sequential):
            names = [name for name, _ in parent.named_children()]
            pairs = list(itertools.pairwise(names))
        for conv_name, norm_name in pairs:
            fused = _fold(getattr(parent, conv_name), getattr(parent, norm_name))
            if fused is not None:
                setattr(parent, conv_name, fused)
                setattr(parent, norm_name, nn.Identity())
                folded += 1
    return folded


class ShallowEncoderForInference(nn.Module):
    """``ShallowEncoder`` with its concatenation folded into the full-resolution conv (see the module docstring).

    Valid for inputs >= 0 only (DAE-Fuse takes images in [0, 1]); the outputs equal the original's there.
    """

    def __init__(self, shallow: ShallowEncoder):
        super().__init__()
        conv, in_chans = shallow.conv_full, shallow.conv_full.in_channels
        self.conv_full = nn.Conv2d(in_chans, conv.out_channels + in_chans, conv.kernel_size, conv.stride,
                                   conv.padding, bias=True).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            identity = torch.zeros_like(self.conv_full.weight[conv.out_channels:])
            kh, kw = conv.kernel_size
            identity[torch.arange(in_chans), torch.arange(in_chans), kh // 2, kw // 2] = 1.0
            self.conv_full.weight.copy_(torch.cat([conv.weight, identity]))
            bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
            self.conv_full.bias.copy_(torch.cat([bias, bias.new_zeros(in_chans)]))
        self.act_full, self.conv_half, self.act_half = shallow.act_full, shallow.conv_half, shallow.act_half

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        full = self.act_full(self.conv_full(x))
        return full, self.act_half(self.conv_half(full))


# Activations that are the identity on non-negative inputs (what lets the image ride through the shallow conv)
IDENTITY_ON_NONNEGATIVE: tuple[type[nn.Module], ...] = (nn.LeakyReLU, nn.ReLU)


def for_inference(model: DAEFuse, device: torch.device | str | None = None, channels_last: bool | None = None
                  ) -> DAEFuse:
    """An eval-mode copy of ``model`` on ``device`` (default: the model's) with the rewrites of the module docstring;
    ``channels_last`` None follows ``CHANNELS_LAST_DEVICES``. The model itself is unchanged."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    fast = copy.deepcopy(model).to(device).eval()
    fold_batch_norms(fast)
    shallow = getattr(fast.encoder, "shallow", None)
    if isinstance(shallow, ShallowEncoder) and isinstance(shallow.act_full, IDENTITY_ON_NONNEGATIVE):
        fast.encoder.shallow = ShallowEncoderForInference(shallow)
    if device.type in CHANNELS_LAST_DEVICES if channels_last is None else channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    return fast

