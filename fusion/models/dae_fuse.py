"""DAE-Fuse: an adaptive discriminative autoencoder for multi-modality image fusion (Guo et al., arXiv 2409.10080).

Architecture (luminance in, luminance out; every image (B, 1, H, W) in [0, 1]). The sources are the modalities the
configuration declares (``DAEFuseConfig.modalities``, by name, in that order; ('ir', 'vis') by default, which is
the released model): the same architecture fuses any N >= 2 of them.

* **Shallow encoder** (shared by every modality): one 3x3 conv at full resolution with few channels, then a
  strided conv to H/2. These are the only encoder layers at full or half resolution.
* **Two deep encoders** in parallel on the H/2 features:
  - a *low-frequency* transformer branch: ViT blocks (timm ``Block``: LayerNorm, multi-head self-attention through
    ``F.scaled_dot_product_attention``, ``Mlp``, ``DropPath``) over patch tokens, one token per
    ``token_stride`` x ``token_stride`` pixels, with a depthwise-conv positional encoding (CPVT's PEG) so that any
    image size works without interpolating position tables;
  - a *high-frequency* CNN branch: ResNet18-style stages of timm ``BasicBlock`` (layers 2-2-2-2), narrow channels,
    a strided pyramid at H/4 .. H/token_stride (the last stage dilated, as ``output_stride`` does in timm).
* **Embedding**: the two branches' token-grid features concatenated and projected (1x1 conv) to ``embed_dim``.
* **Decoder**: U-Net-like, upsampling x2 per stage with skip connections from the CNN pyramid and the shallow
  encoder; only its last stage (sub-pixel conv, then one 3x3 conv to the output) runs at full resolution, with
  ``shallow_chans`` channels. Sigmoid output in [0, 1].
* **Phase 1 (reconstruction)**: each modality is encoded and decoded back to itself.
* **Phase 2 (fusion)**: a cross-modality attention module in which each modality's tokens attend to the tokens of
  all the others (queries from one, keys/values from the concatenation of the rest; with two modalities: IR to
  visible and visible to IR), merged into one embedding; the skip features are merged by a gated per-pixel,
  per-channel selection (see ``GatedSkipFusion``); the same decoder then produces the fused image.
* **Discriminators** (``PatchDiscriminator``, one per source modality) exist only for training; the trainer builds
  them with ``build_discriminators`` (and not at all when adversarial training is off). Inference never does.

**N modalities.** What is shared and why: the shallow encoder, both deep branches and the decoder are ONE set of
weights applied to every modality (stacked on the batch axis). Their job is modality-agnostic (turn a grey image
into features and back, phase 1), sharing keeps the parameter count independent of N, puts every modality in one
feature space (so that the fusion rules compare like with like) and lets a new band start from the weights a
two-band model learned. What is per modality: one cross-attention block per modality (its queries are that
modality's tokens), one slot of the merge, one gate logit per skip channel, one discriminator. Cost: the encoder
runs N times; the cross-attention is N blocks of T queries over (N - 1) T keys, O(N (N - 1) T^2 C) with T tokens
(T = H W / token_stride^2: 3072 at 1024x768, C = embed_dim = 128), so 2 -> 3 modalities triples the attention
(2 x 1 -> 3 x 2 query-key products). Measured at 1024x768 on one CPU core: attention 0.13 -> 0.39 s, the whole
inference copy 0.95 -> 1.77 s for 2 -> 3 modalities (``benchmarks/bench_fuse.py --modalities 2 3``;
``benchmarks/results/triband.md``). With two modalities every operation
is the one of the released two-band model, in the same order (its checkpoint loads and fuses bit for bit).

**Any subset.** ``forward(*sources, present=mask)`` fuses the modalities a (B, N) boolean mask marks present (at
least two per sample): a missing modality's image is ignored (zeroed), its features are replaced by the mean of the
present modalities' (so the merge and the gate see nothing of it), it is masked out of every attention's keys and
gets no weight in the skip gates. A camera that failed or is blinded is passed as missing; which frames are blinded
is the caller's call (``present``), not the model's.

The paper's ablations are configuration (``DAEFuseConfig``), each part looked up in its registry and built without
the weights of the parts it replaces: ``encoder`` (``ENCODERS``: 'dual', 'cnn' or 'transformer' branches),
``fusion`` (``FUSIONS``: 'cross_attention', 'concat' or 'average' for the embeddings) and ``skip_fusion``
(``SKIP_FUSIONS``: 'gated', 'average' or 'max' for the skip features). The defaults are the full model.

Speed is a design constraint (issue 3): the transformer works on H/16 tokens, the CNN on its strided pyramid, and
full resolution is touched by three cheap convolutions only, so a 1024x768 pair fuses in well under 2 s on two CPU
cores. Fusing runs an inference copy (``fusion.models.inference.for_inference``: BN folded, fewer full-resolution
passes, channels-last on CPU) with the same outputs. ``benchmarks/bench_fuse.py`` measures both.

Variants are small builders in the ``MODELS`` registry (``dae_fuse_t``, ``dae_fuse_s``, ``dae_fuse_b``); build one
with ``create_model(name, **overrides)``; ``model_config(name, **overrides)`` gives a variant's configuration without
building it (the training config checks ``model.args`` with it at load time).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timm.layers import Mlp, trunc_normal_
from timm.models.resnet import BasicBlock, make_blocks
from timm.models.vision_transformer import Block

from data.registry import Registry

# name -> builder(**overrides) -> DAEFuse
MODELS: Registry = Registry("fusion model")
# The ablation switches of DAEFuseConfig, filled below where their modules are defined:
# encoder name -> builder(cfg) -> encoder (``forward_features``, ``skip_chans``, ``skip_levels``)
ENCODERS: Registry = Registry("encoder")
# fusion name -> builder(cfg) -> module(*embeds, present=None) -> fused embedding, with ``init_average()``
FUSIONS: Registry = Registry("embedding fusion")
# skip_fusion name -> builder(channels, num_modalities) -> module(*skips, present=None) -> fused skip, with
# ``init_average()``
SKIP_FUSIONS: Registry = Registry("skip fusion")

ARCHITECTURE = "dae_fuse"  # stored in checkpoints; a checkpoint of another architecture is refused on loading

GROUP_NORM_GROUPS = 32  # the usual group count (Wu & He 2018); narrower layers use the largest divisor of it that fits


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` built from the channel count alone (as timm's blocks call a norm layer): the number of
    groups is the largest divisor of ``GROUP_NORM_GROUPS`` that divides the channels, so the narrow variants
    (``dae_fuse_t``'s 8 channels) work too."""

    def __init__(self, num_channels: int, **kwargs: Any):
        super().__init__(math.gcd(GROUP_NORM_GROUPS, num_channels), num_channels, **kwargs)


# cnn_norm name -> norm layer class for the CNN branch (called as ``layer(channels, **kwargs)``, as timm's blocks do)
CNN_NORMS: dict[str, type[nn.Module]] = {"batchnorm": nn.BatchNorm2d, "groupnorm": GroupNorm, "identity": nn.Identity}


@dataclass(frozen=True)
class DAEFuseConfig:
    """Architecture hyper-parameters. The paper gives the structure, not the widths: widths are chosen for speed
    (issue 3: <= 2 s per 1024x768 pair on 2 CPU cores, <= 70 ms bf16 on an H100) and documented per field.

    Args:
        in_chans: channels of each source image (1: luminance).
        shallow_chans: channels of the full-resolution shallow features (and of the decoder's full-resolution stage).
        stem_chans: channels of the H/2 shallow features that feed both deep branches.
        cnn_channels: widths of the four ResNet18-style stages (ResNet18 itself: 64, 128, 256, 512).
        cnn_layers: BasicBlocks per stage; (2, 2, 2, 2) is ResNet18.
        cnn_norm: norm layer of the CNN branch (``CNN_NORMS``): 'batchnorm' as in ResNet18, 'groupnorm' (up to 32
            groups, fewer where the channels need it) or 'identity' (none).
        token_stride: pixels per transformer token side (8, 16 or 32); also the CNN branch's output stride.
        vit_dim: transformer width.
        vit_depth: number of transformer blocks.
        vit_heads: attention heads of the transformer blocks.
        mlp_ratio: hidden width of the transformer and cross-attention MLPs, relative to their width.
        embed_dim: width of the concatenated-then-projected embedding (and of the cross-attention module).
        fusion_heads: attention heads of the cross-modality attention.
        decoder_channels: widths of the decoder stages from token_stride/2 down to H/2 (log2(token_stride) - 1
            entries); the full-resolution stage has ``shallow_chans`` channels.
        drop_path_rate: stochastic depth of the transformer and CNN blocks (0 = off).
        encoder: deep branches (``ENCODERS``): 'dual' (transformer + CNN, the paper's), 'cnn' or 'transformer'
            only (ablations; without the CNN the decoder gets no skips between H/2 and the token grid).
        fusion: phase-2 fusion of the embeddings (``FUSIONS``): 'cross_attention' (both directions, the paper's),
            'concat' (concatenate and project, no attention) or 'average' (no weights).
        skip_fusion: fusion of the skip features (``SKIP_FUSIONS``): 'gated' (a learned per-pixel selection, ours:
            the paper describes none), 'average' or 'max' (no weights).
        modalities: the source modalities by name, in the order ``forward`` takes them (at least two, distinct,
            each a Python identifier without '_': they name the attention blocks and discriminators). ('ir', 'vis')
            is the released two-band model; e.g. ('vis', 'nir', 'lwir') for visible + near-infrared + thermal.
    """

    in_chans: int = 1
    shallow_chans: int = 8
    stem_chans: int = 16
    cnn_channels: tuple[int, ...] = (32, 64, 96, 128)
    cnn_layers: tuple[int, ...] = (2, 2, 2, 2)
    cnn_norm: str = "batchnorm"
    token_stride: int = 16
    vit_dim: int = 64
    vit_depth: int = 2
    vit_heads: int = 2
    mlp_ratio: float = 2.0
    embed_dim: int = 128
    fusion_heads: int = 2
    decoder_channels: tuple[int, ...] = (64, 32, 16)
    drop_path_rate: float = 0.0
    encoder: str = "dual"
    fusion: str = "cross_attention"
    skip_fusion: str = "gated"
    modalities: tuple[str, ...] = ("ir", "vis")

    def __post_init__(self) -> None:
        problems = []
        names = self.modalities
        if len(names) < 2 or len(set(names)) != len(names):
            problems.append(f"modalities must name at least two distinct modalities, got {list(names)}")
        bad = [m for m in names if not (isinstance(m, str) and m.isidentifier() and "_" not in m)]
        if bad:
            problems.append(f"modality names must be identifiers without '_', got {bad}")
        for name, registry in (("encoder", ENCODERS), ("fusion", FUSIONS), ("skip_fusion", SKIP_FUSIONS)):
            if getattr(self, name) not in registry:
                problems.append(f"{name} must be one of {', '.join(registry)}, got {getattr(self, name)!r}")
        if self.token_stride not in (8, 16, 32):
            problems.append(f"token_stride must be 8, 16 or 32, got {self.token_stride}")
        elif len(self.decoder_channels) != int(math.log2(self.token_stride)) - 1:
            problems.append(
                f"decoder_channels needs log2(token_stride) - 1 = {int(math.log2(self.token_stride)) - 1} entries "
                f"(one per stage from H/{self.token_stride // 2} to H/2), got {len(self.decoder_channels)}"
            )
        if len(self.cnn_channels) != 4 or len(self.cnn_layers) != 4:
            problems.append("cnn_channels and cnn_layers need 4 entries (the four ResNet18 stages)")
        if self.vit_dim % self.vit_heads:
            problems.append(f"vit_dim {self.vit_dim} is not divisible by vit_heads {self.vit_heads}")
        if self.embed_dim % self.fusion_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by fusion_heads {self.fusion_heads}")
        if self.cnn_norm not in CNN_NORMS:
            problems.append(f"cnn_norm must be one of {', '.join(CNN_NORMS)}, got {self.cnn_norm!r}")
        if problems:
            raise ValueError("invalid DAEFuseConfig: " + "; ".join(problems))

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (the token grid must tile the image)."""
        return self.token_stride

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DAEFuseConfig:
        """Build from a plain dict (as stored in a checkpoint); lists become tuples, unknown keys are an error.

        Fields a dict lacks keep their defaults, which are what a checkpoint saved before the field existed built.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DAEFuseConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _conv3x3(in_chans: int, out_chans: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1)


class LeakyReLU(nn.LeakyReLU):
    """In-place LeakyReLU(0.2): the activation of the convolutional layers at high resolution, where a GELU's cost
    is not negligible (every element of a full-resolution feature map)."""

    def __init__(self) -> None:
        super().__init__(0.2, inplace=True)


class ShallowEncoder(nn.Module):
    """Full-resolution features (few channels) and their strided H/2 version, shared by both modalities.

    The full-resolution features are ``shallow_chans - in_chans`` conv channels *plus the image itself*: this skip
    reaches the decoder's output conv, so the fused image can keep a source's intensities exactly wherever the
    skip fusion rule selects that source (fusion metrics such as VIF and SSIM reward that fidelity), instead of
    re-synthesising them from features.
    """

    def __init__(self, in_chans: int, shallow_chans: int, stem_chans: int, act_layer: type[nn.Module] = LeakyReLU):
        super().__init__()
        assert shallow_chans > in_chans, f"shallow_chans ({shallow_chans}) must exceed in_chans ({in_chans})"
        self.conv_full = _conv3x3(in_chans, shallow_chans - in_chans)
        self.act_full = act_layer()
        self.conv_half = _conv3x3(shallow_chans, stem_chans, stride=2)
        self.act_half = act_layer()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, in_chans, H, W) -> ((B, shallow_chans, H, W), (B, stem_chans, H/2, W/2))."""
        full = torch.cat([self.act_full(self.conv_full(x)), x], dim=1)
        return full, self.act_half(self.conv_half(full))


class CNNBranch(nn.Module):
    """High-frequency encoder: a ResNet18-style pyramid of timm BasicBlocks on the H/2 shallow features.

    A strided 3x3 stem takes H/2 to H/4 (ResNet's 7x7 stem and max-pool are replaced: the shallow encoder already
    did the first reduction), then timm's ``make_blocks`` builds the four stages at H/4, H/8, H/16, H/32; with
    ``output_stride`` = token_stride the stages past it are dilated instead of strided, so the last stage lands on
    the transformer's token grid.
    """

    def __init__(
        self,
        in_chans: int,
        channels: tuple[int, ...],
        layers: tuple[int, ...],
        output_stride: int,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            _conv3x3(in_chans, channels[0], stride=2), norm_layer(channels[0]), nn.ReLU(inplace=True)
        )
        stages, self.feature_info = make_blocks(
            (BasicBlock,) * len(channels),
            channels,
            layers,
            inplanes=channels[0],
            output_stride=output_stride,
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            act_layer=nn.ReLU,
        )
        self.stages = nn.ModuleList(stage for _, stage in stages)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(B, in_chans, H/2, W/2) -> one feature map per stage, at the reductions of ``feature_info`` (of H)."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class PositionalEncodingGenerator(nn.Module):
    """Conditional positional encoding (Chu et al., CPVT 2021): x + depthwise 3x3 conv over the token grid.

    Works for any grid size, unlike a learned absolute table.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, h, w)
        return x + self.proj(x)


class TransformerBranch(nn.Module):
    """Low-frequency encoder: ViT blocks over non-overlapping patch tokens of the H/2 shallow features."""

    def __init__(
        self,
        in_chans: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.pos = PositionalEncodingGenerator(dim)
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
        self.blocks = nn.Sequential(
            *(
                Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=norm_layer)
                for r in rates
            )
        )
        self.norm = norm_layer(dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H/2, W/2) -> (B, dim, H/2/patch, W/2/patch) token grid."""
        x = self.pos(self.patch_embed(x))
        b, c, h, w = x.shape
        tokens = self.norm(self.blocks(x.flatten(2).transpose(1, 2)))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class EncoderFeatures(NamedTuple):
    """What the encoder gives the decoder for one batch of images.

    ``embed``: (B, embed_dim, H/s, W/s) with s = token_stride. ``skips``: features from fine to coarse at the
    encoder's ``skip_levels``: H, H/2 and, with a CNN branch, H/4 .. H/(s/2) (one per decoder stage).
    """

    embed: Tensor
    skips: tuple[Tensor, ...]


class BranchEncoder(nn.Module):
    """Shallow encoder -> (transformer branch || CNN branch) -> concatenated embedding, plus the skip pyramid.

    ``ENCODERS`` builds it with both branches ('dual', the paper's) or one ('cnn', 'transformer': the ablations);
    a branch left out is not built. ``skip_chans`` / ``skip_levels``: channels and reductions (of H) of the skips
    ``forward_features`` returns, fine to coarse: H and H/2 from the shallow encoder, then H/4 .. H/(s/2) from the
    CNN pyramid when there is one.
    """

    def __init__(self, cfg: DAEFuseConfig, *, cnn: bool = True, vit: bool = True):
        super().__init__()
        assert cnn or vit, "an encoder needs at least one deep branch"
        norm_layer = CNN_NORMS[cfg.cnn_norm]
        self.shallow = ShallowEncoder(cfg.in_chans, cfg.shallow_chans, cfg.stem_chans)
        self.cnn = CNNBranch(
            cfg.stem_chans, cfg.cnn_channels, cfg.cnn_layers, cfg.token_stride, norm_layer, cfg.drop_path_rate
        ) if cnn else None
        self.vit = TransformerBranch(
            cfg.stem_chans, cfg.token_stride // 2, cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, cfg.mlp_ratio,
            cfg.drop_path_rate,
        ) if vit else None
        width = (cfg.vit_dim if vit else 0) + (cfg.cnn_channels[-1] if cnn else 0)
        self.embed = nn.Sequential(nn.Conv2d(width, cfg.embed_dim, 1), LeakyReLU())
        # For each stride below the token stride, the CNN stage that produced it last. make_blocks counts strides
        # from a /4 stem, which is where our stem leaves the image, so its reductions are relative to the input.
        strides = tuple(2 ** k for k in range(2, int(math.log2(cfg.token_stride)))) if cnn else ()
        cnn_strides = [info["reduction"] for info in self.cnn.feature_info] if cnn else []
        self.skip_stages = tuple(max(i for i, s in enumerate(cnn_strides) if s == stride) for stride in strides)
        self.skip_chans = (cfg.shallow_chans, cfg.stem_chans) + tuple(cfg.cnn_channels[i] for i in self.skip_stages)
        self.skip_levels = (1, 2) + strides

    def forward_features(self, x: Tensor) -> EncoderFeatures:
        """(B, in_chans, H, W) with H, W multiples of token_stride -> EncoderFeatures."""
        full, half = self.shallow(x)
        pyramid = self.cnn.forward_features(half) if self.cnn is not None else []
        tokens = ([self.vit.forward_features(half)] if self.vit is not None else []) + pyramid[-1:]
        embed = self.embed(torch.cat(tokens, dim=1))
        return EncoderFeatures(embed, (full, half) + tuple(pyramid[i] for i in self.skip_stages))


DualBranchEncoder = partial(BranchEncoder, cnn=True, vit=True)  # the paper's encoder
ENCODERS.register("dual")(DualBranchEncoder)
ENCODERS.register("cnn")(partial(BranchEncoder, cnn=True, vit=False))
ENCODERS.register("transformer")(partial(BranchEncoder, cnn=False, vit=True))


class CrossAttention(nn.Module):
    """Multi-head attention with queries from ``x`` and keys/values from ``context`` (timm ``Attention`` layout).

    Attention runs through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels), so the N x M
    attention matrix is never materialised.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} should be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, N, C) queries, context (B, M, C) keys/values, mask (B, M) bool: True = a key to attend to (None:
        all; each sample needs at least one) -> (B, N, C)."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if mask is None else mask[:, None, None, :]
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block whose attention looks at another modality: x + CA(x, ctx); x + MLP(x)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 2.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.norm_q = norm_layer(dim)
        self.norm_kv = norm_layer(dim)
        self.attn = CrossAttention(dim, num_heads, norm_layer=norm_layer)
        self.norm_mlp = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context), mask)
        return x + self.mlp(self.norm_mlp(x))


class CrossModalityFusion(nn.Module):
    """Phase-2 fusion of the N embeddings: each modality attends to all the others, then a linear merge.

    One ``CrossAttentionBlock`` per modality, named ``<m>_from_<others>`` (two modalities: ``ir_from_vis`` and
    ``vis_from_ir``, the released model's names): queries from modality m, keys/values from the concatenated
    tokens of every other modality. All blocks read the *input* tokens (they run in parallel, not one after the
    other). The merge is a linear map of the concatenation, initialised to the average of the attended embeddings.
    With a ``present`` mask, missing modalities are masked out of the keys and their attended embedding is the mean
    of the present ones' (``impute_missing``) before the merge.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 2.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        modalities: tuple[str, ...] = ("ir", "vis"),
    ):
        super().__init__()
        self.modalities = tuple(modalities)
        self.block_names = tuple(
            f"{m}_from_{'_'.join(o for o in self.modalities if o != m)}" for m in self.modalities
        )
        for name in self.block_names:
            self.add_module(name, CrossAttentionBlock(dim, num_heads, mlp_ratio, norm_layer))
        self.merge = nn.Linear(len(self.modalities) * dim, dim)

    def init_average(self) -> None:
        dim, n = self.merge.out_features, len(self.modalities)
        with torch.no_grad():
            eye = torch.eye(dim) / n
            self.merge.weight.copy_(torch.cat([eye] * n, dim=1))
            self.merge.bias.zero_()

    def forward(self, *embeds: Tensor, present: Tensor | None = None) -> Tensor:
        """N (B, C, h, w) embeddings (``modalities`` order), optional (B, N) bool mask -> fused (B, C, h, w)."""
        b, c, h, w = embeds[0].shape
        tokens = [e.flatten(2).transpose(1, 2) for e in embeds]
        attended = []
        for i, name in enumerate(self.block_names):
            others = [t for j, t in enumerate(tokens) if j != i]
            context = others[0] if len(others) == 1 else torch.cat(others, dim=1)
            mask = None
            if present is not None:  # each other modality's T tokens are keys only where it is present
                mask = torch.cat(
                    [present[:, j, None].expand(b, tokens[j].shape[1]) for j in range(len(tokens)) if j != i], dim=1
                )
            attended.append(getattr(self, name)(tokens[i], context, mask))
        if present is not None:
            attended = impute_missing(attended, present)
        fused = self.merge(torch.cat(attended, dim=-1))
        return fused.transpose(1, 2).reshape(b, c, h, w)


def impute_missing(xs: list[Tensor] | tuple[Tensor, ...], present: Tensor) -> list[Tensor]:
    """Each missing modality's tensor replaced by the mean of the present ones', per sample.

    ``xs``: N tensors (B, ...); ``present``: (B, N) bool with at least one True per row. Why the mean: the learned
    rules after it (merge, gate, concatenation) then see the present modalities only, in the proportions they
    already have, and nothing of what the missing sensor delivered (a blinded frame, zeros).
    """
    weights = present.to(xs[0].dtype)
    shape = (-1,) + (1,) * (xs[0].dim() - 1)
    mean = sum(x * weights[:, i].view(shape) for i, x in enumerate(xs)) / weights.sum(1).view(shape)
    return [torch.where(present[:, i].view(shape), x, mean) for i, x in enumerate(xs)]


class ConcatFusion(nn.Module):
    """Ablation of the cross-attention: the N embeddings concatenated and projected (a 1x1 conv), no attention.

    The projection starts as the average, as the cross-attention's merge does, so the two differ only by the
    attention blocks. Missing modalities arrive already imputed (``DAEFuse.fuse_features``).
    """

    def __init__(self, dim: int, num_modalities: int = 2):
        super().__init__()
        self.merge = nn.Conv2d(num_modalities * dim, dim, 1)

    def init_average(self) -> None:
        dim = self.merge.out_channels
        n = self.merge.in_channels // dim
        with torch.no_grad():
            eye = torch.eye(dim) / n
            self.merge.weight.copy_(torch.cat([eye] * n, dim=1)[..., None, None])
            self.merge.bias.zero_()

    def forward(self, *xs: Tensor, present: Tensor | None = None) -> Tensor:
        return self.merge(torch.cat(xs, dim=1))


class AverageFusion(nn.Module):
    """The mean of the inputs, no weights: the ablation floor of either fusion route."""

    def init_average(self) -> None:
        pass

    def forward(self, *xs: Tensor, present: Tensor | None = None) -> Tensor:
        # (a + b) / 2 for two, as before N modalities (the same rounding); missing inputs arrive imputed
        return (xs[0] + xs[1]) / 2 if len(xs) == 2 else sum(xs) / len(xs)


class MaxFusion(nn.Module):
    """The element-wise maximum of the inputs, no weights (the max-fusion rule, on features)."""

    def init_average(self) -> None:
        pass

    def forward(self, *xs: Tensor, present: Tensor | None = None) -> Tensor:
        out = torch.maximum(xs[0], xs[1])
        for x in xs[2:]:
            out = torch.maximum(out, x)
        return out


FUSIONS.register("cross_attention")(lambda cfg: CrossModalityFusion(
    cfg.embed_dim, cfg.fusion_heads, cfg.mlp_ratio, modalities=cfg.modalities))
FUSIONS.register("concat")(lambda cfg: ConcatFusion(cfg.embed_dim, len(cfg.modalities)))
FUSIONS.register("average")(lambda cfg: AverageFusion())


class GatedSkipFusion(nn.Module):
    """Fusion rule for the skip features. Two modalities: ``vis + g * (ir - vis)`` with
    ``g = sigmoid(1x1 conv([ir, vis]))``; N: ``sum_m softmax_m(1x1 conv([x_1 .. x_N]))_m * x_m``, one logit per
    modality and channel (with two, the sigmoid form is the softmax of the logits (a, 0), computed as before).

    Why a gate rather than a plain learned 1x1 conv over the concatenation: both start as the average (the gate conv
    is zero-initialised, so g = 0.5 / each weight 1/N), but a linear map can only ever mix the modalities with fixed
    weights, while the gate selects per pixel and channel. That is what keeps a warm IR target's full contrast where
    the visible image is flat (a max-like choice) and takes the visible texture elsewhere, which the fusion loss
    (max intensity, max gradient) asks for. A missing modality (``present``) gets a logit of -inf: no weight.
    """

    def __init__(self, chans: int, num_modalities: int = 2):
        super().__init__()
        self.num_modalities = num_modalities
        # two modalities: one logit per channel (the sigmoid's), as the released model has
        self.gate = nn.Conv2d(num_modalities * chans, (1 if num_modalities == 2 else num_modalities) * chans, 1)

    def init_average(self) -> None:
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, *xs: Tensor, present: Tensor | None = None) -> Tensor:
        if self.num_modalities == 2:  # at least two present: with two modalities both always are
            ir, vis = xs
            gate = torch.sigmoid(self.gate(torch.cat([ir, vis], dim=1)))
            return torch.lerp(vis, ir, gate)  # vis + gate * (ir - vis) in one pass over the (full-resolution) maps
        # The softmax over the modalities written out on channel slices (max, exp, weighted sum): on the
        # channels-last inference copy's full-resolution maps a 5-D view with a softmax over its second axis took
        # 0.73 s of a 1024x768 three-band fusion on one core, a (B, H, W, N, C) view 0.40 s, this 0.26 s.
        logits = list(self.gate(torch.cat(xs, dim=1)).split(xs[0].shape[1], dim=1))
        if present is not None:
            logits = [lg.masked_fill(~present[:, i, None, None, None], float("-inf")) for i, lg in enumerate(logits)]
        top = logits[0]
        for lg in logits[1:]:
            top = torch.maximum(top, lg)
        weights = [torch.exp(lg - top) for lg in logits]
        num = weights[0] * xs[0]
        den = weights[0].clone()
        for e, x in zip(weights[1:], xs[1:]):
            num = num.addcmul(e, x)
            den = den + e
        return num / den


# name -> builder(channels, num_modalities)
SKIP_FUSIONS.register("gated")(GatedSkipFusion)
SKIP_FUSIONS.register("average")(lambda chans, num_modalities=2: AverageFusion())
SKIP_FUSIONS.register("max")(lambda chans, num_modalities=2: MaxFusion())


class UpStage(nn.Module):
    """x2 bilinear upsampling, concatenation with the skip (if the encoder gives one at this level), two 3x3 conv
    + activation."""

    def __init__(self, in_chans: int, skip_chans: int, out_chans: int, act_layer: type[nn.Module] = LeakyReLU):
        super().__init__()
        self.conv1 = _conv3x3(in_chans + skip_chans, out_chans)
        self.conv2 = _conv3x3(out_chans, out_chans)
        self.act = act_layer()

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        if skip is None:  # sizes are multiples of the token stride, so x2 lands exactly on the next level
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], dim=1)
        return self.act(self.conv2(self.act(self.conv1(x))))


class Decoder(nn.Module):
    """U-Net-like decoder: token grid -> H/2 through ``UpStage``s, then a sub-pixel step to full resolution.

    The full-resolution stage is deliberately thin: a 3x3 conv at H/2 to 4 * shallow_chans channels, a pixel
    shuffle (Shi et al., ESPCN 2016) to shallow_chans channels at H, plus the full-resolution skip, then one 3x3
    conv to the output. Sigmoid output in [0, 1].
    """

    def __init__(
        self,
        embed_dim: int,
        skip_chans: tuple[int, ...],
        channels: tuple[int, ...],
        out_chans: int = 1,
        act_layer: type[nn.Module] = LeakyReLU,
        skip_levels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        # skip_chans runs fine -> coarse at skip_levels (by default every level H, H/2, ... H/(s/2)); the stages run
        # coarse -> fine down to H/2, stage i ending at H/2**(len(channels) - i). A level without a skip (the
        # transformer-only encoder has none below H/2) gets a stage without one.
        skip_levels = skip_levels or tuple(2**i for i in range(len(skip_chans)))
        assert skip_levels[:2] == (1, 2) and len(skip_levels) == len(skip_chans), "need the H and H/2 skips"
        by_level = dict(zip(skip_levels, skip_chans))
        stage_levels = tuple(2 ** (len(channels) - i) for i in range(len(channels)))
        self.stage_has_skip = tuple(level in by_level for level in stage_levels)
        ins = (embed_dim,) + tuple(channels[:-1])
        self.stages = nn.ModuleList(
            UpStage(i, by_level.get(level, 0), o, act_layer) for i, level, o in zip(ins, stage_levels, channels)
        )
        full_chans = skip_chans[0]
        self.to_full = nn.Sequential(_conv3x3(channels[-1], 4 * full_chans), nn.PixelShuffle(2))
        self.act = act_layer()
        self.head = _conv3x3(full_chans, out_chans)

    def forward(self, embed: Tensor, skips: tuple[Tensor, ...]) -> Tensor:
        """embed (B, embed_dim, H/s, W/s), skips fine -> coarse -> image (B, out_chans, H, W) in [0, 1]."""
        x = embed
        coarse_first = iter(skips[:0:-1])
        for stage, has_skip in zip(self.stages, self.stage_has_skip):
            x = stage(x, next(coarse_first) if has_skip else None)
        x = self.to_full(x)
        x += skips[0]  # in place: the full-resolution stage is memory-bound (pixel_shuffle's output is a new tensor)
        x = self.act(x)
        return torch.sigmoid(self.head(x))


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) on the bottom/right to multiples of ``multiple``; returns the padded tensor and (H, W).

    Reflection padding (no artificial edge); replication where the image is smaller than the padding needs
    (reflection cannot pad by more than the size - 1).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (h, w)


class DAEFuse(nn.Module):
    """The DAE-Fuse generator: shared encoder (``cfg.encoder``), phase-2 fusion rules (``cfg.fusion`` for the
    embeddings, ``cfg.skip_fusion`` for the skips) and decoder, for the modalities ``cfg.modalities``.

    ``forward(*sources, present=None)`` fuses (phase 2 and inference; two modalities: ``forward(ir, vis)``);
    ``reconstruct(*sources)`` returns every reconstruction (phase 1). Sources in ``cfg.modalities`` order, each
    (B, 1, H, W) in [0, 1], all one size; they are padded to ``cfg.size_multiple`` and the output is cropped back.
    """

    def __init__(self, cfg: DAEFuseConfig):
        super().__init__()
        self.cfg = cfg
        self.modalities = cfg.modalities
        n = len(cfg.modalities)
        self.encoder = ENCODERS.get(cfg.encoder)(cfg)
        self.fusion = FUSIONS.get(cfg.fusion)(cfg)
        self.skip_fusion = nn.ModuleList(SKIP_FUSIONS.get(cfg.skip_fusion)(c, n) for c in self.encoder.skip_chans)
        self.decoder = Decoder(
            cfg.embed_dim, self.encoder.skip_chans, cfg.decoder_channels, cfg.in_chans,
            skip_levels=self.encoder.skip_levels,
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise for a stable start.

        * convs: Kaiming fan-in for the LeakyReLU(0.2) they feed (variance-preserving in the forward pass: the
          decoder has no normalisation layers, so fan-out scaling would grow activations stage after stage);
        * linears: truncated normal, std 0.02 (timm ViT);
        * the last norm of each residual block zeroed (timm ResNet ``zero_init_last``);
        * the output conv at 1/10 scale and zero bias, so the first images are mid-grey with small variations
          instead of a saturated sigmoid (whose vanishing gradient stalls the first epochs);
        * both learned fusion rules start as the average of the two modalities.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if hasattr(module, "zero_init_last"):
                module.zero_init_last()
        with torch.no_grad():
            self.decoder.head.weight.mul_(0.1)
        self.fusion.init_average()
        for gate in self.skip_fusion:
            gate.init_average()

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """Parameters a phase trains: 'recon' the encoder and decoder, 'fuse' everything (with the weight-free
        fusion ablations, that is the encoder and decoder too)."""
        if phase == "recon":
            return [*self.encoder.parameters(), *self.decoder.parameters()]
        return list(self.parameters())

    def encode(self, *sources: Tensor) -> list[EncoderFeatures]:
        """Encode every modality in one pass of the shared encoder (they are stacked on the batch axis)."""
        feats = self.encoder.forward_features(torch.cat(sources, dim=0))
        b = sources[0].shape[0]
        split = lambda t: [t[i * b:(i + 1) * b] for i in range(len(sources))]  # noqa: E731
        embeds, skips = split(feats.embed), [split(s) for s in feats.skips]
        return [EncoderFeatures(embeds[i], tuple(s[i] for s in skips)) for i in range(len(sources))]

    def fuse_features(self, *feats: EncoderFeatures, present: Tensor | None = None) -> EncoderFeatures:
        """Phase-2 fusion rules: ``cfg.fusion`` for the embedding, ``cfg.skip_fusion`` for the skips. With a
        ``present`` mask, a missing modality's features are first replaced by the mean of the present ones'."""
        embeds = [f.embed for f in feats]
        levels = list(zip(*(f.skips for f in feats)))  # per skip level, one map per modality
        if present is not None:
            embeds = impute_missing(embeds, present)
            levels = [impute_missing(list(level), present) for level in levels]
        skips = tuple(rule(*level, present=present) for rule, level in zip(self.skip_fusion, levels))
        return EncoderFeatures(self.fusion(*embeds, present=present), skips)

    def reconstruct(self, *sources: Tensor) -> tuple[Tensor, ...]:
        """Phase 1: N (B, 1, H, W) in [0, 1] -> their reconstructions, each (B, 1, H, W) in [0, 1]."""
        padded, (h, w) = self._pad(*sources)
        feats = self.encode(*padded)
        out = self.decoder(torch.cat([f.embed for f in feats]), tuple(torch.cat(s) for s in zip(*(f.skips for f in feats))))
        return tuple(out[..., :h, :w].chunk(len(sources), dim=0))

    def forward(self, *sources: Tensor, present: Tensor | None = None) -> Tensor:
        """Fuse: N sources (B, 1, H, W) in [0, 1] in ``cfg.modalities`` order (two: ir, vis luma) and optionally
        ``present`` (B, N) bool (None: all present; else at least two per sample) -> fused (B, 1, H, W) in [0, 1]."""
        padded, (h, w) = self._pad(*sources)
        if present is not None:
            present = self._check_present(present, padded[0].shape[0])
            # what a missing sensor delivered never enters the encoder (NaN * 0 would still be NaN)
            padded = [torch.where(present[:, i, None, None, None], x, torch.zeros_like(x)) for i, x in enumerate(padded)]
        fused = self.decoder(*self.fuse_features(*self.encode(*padded), present=present))
        return fused[..., :h, :w]

    def _check_present(self, present: Tensor, batch: int) -> Tensor:
        n = len(self.modalities)
        if present.shape != (batch, n) or present.dtype != torch.bool:
            raise ValueError(f"present must be a ({batch}, {n}) bool mask over {list(self.modalities)}, got "
                             f"{tuple(present.shape)} {present.dtype}")
        if bool((present.sum(1) < 2).any()):
            raise ValueError(f"every sample needs at least two present modalities of {list(self.modalities)}")
        return present.to(self.decoder.head.weight.device)

    def _pad(self, *sources: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
        n = len(self.modalities)
        if len(sources) != n:
            raise ValueError(f"this model fuses {n} modalities {list(self.modalities)}, got {len(sources)} images")
        shapes = {tuple(x.shape) for x in sources}
        if len(shapes) > 1:
            described = ", ".join(f"{m} {tuple(x.shape)}" for m, x in zip(self.modalities, sources))
            raise ValueError(f"source shapes differ: {described}")
        padded = [pad_to_multiple(x, self.cfg.size_multiple)[0] for x in sources]
        return padded, tuple(sources[0].shape[-2:])


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al., pix2pix 2017): strided 4x4 convs, one score per image patch.

    Spectral normalisation (Miyato et al. 2018) on every conv keeps the discriminator Lipschitz, which with the
    least-squares loss keeps adversarial training stable on small batches. Output (B, 1, h, w) unbounded scores.
    """

    def __init__(self, in_chans: int = 1, channels: int = 32, num_layers: int = 3, spectral_norm: bool = True):
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        chans = in_chans
        for i in range(num_layers):
            out = channels * 2**i
            layers += [wrap(nn.Conv2d(chans, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
            chans = out
        layers.append(wrap(nn.Conv2d(chans, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) in [0, 1] -> (B, 1, H / 2**num_layers, W / 2**num_layers) scores."""
        return self.net(x)


def build_discriminators(
    in_chans: int = 1, channels: int = 32, num_layers: int = 3, spectral_norm: bool = True,
    modalities: tuple[str, ...] = ("ir", "vis"),
) -> nn.ModuleDict:
    """The discriminators of training, one per modality, keyed by the modality whose real images it sees."""
    return nn.ModuleDict(
        {m: PatchDiscriminator(in_chans, channels, num_layers, spectral_norm) for m in modalities}
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# name -> the DAEFuseConfig its MODELS builder starts from (``model_config`` applies the overrides)
VARIANT_CONFIGS: dict[str, DAEFuseConfig] = {
    "dae_fuse_t": DAEFuseConfig(
        shallow_chans=4, stem_chans=8, cnn_channels=(8, 16, 16, 24), cnn_layers=(1, 1, 1, 1), vit_dim=16,
        vit_depth=1, vit_heads=2, embed_dim=32, fusion_heads=2, decoder_channels=(16, 8, 8),
    ),
    "dae_fuse_s": DAEFuseConfig(),
    "dae_fuse_b": DAEFuseConfig(
        shallow_chans=16, stem_chans=48, cnn_channels=(64, 128, 256, 512), vit_dim=192, vit_depth=4, vit_heads=6,
        embed_dim=256, fusion_heads=8, decoder_channels=(128, 64, 32),
    ),
}


def model_config(name: str, **overrides: Any) -> DAEFuseConfig:
    """The configuration ``create_model(name, **overrides)`` builds, without building it.

    An unknown variant is a KeyError, an unknown field or a bad value a ValueError; both list the known values.
    A variant registered in ``MODELS`` without an entry in ``VARIANT_CONFIGS`` starts from the defaults.
    """
    MODELS.get(name)  # the registry's error lists the known variants
    # from_dict checks the field names and turns YAML's lists into the config's tuples
    return DAEFuseConfig.from_dict({**VARIANT_CONFIGS.get(name, DAEFuseConfig()).to_dict(), **overrides})


@MODELS.register("dae_fuse_t")
def dae_fuse_t(**overrides: Any) -> DAEFuse:
    """A toy width for tests and smoke runs (~67 k parameters)."""
    return DAEFuse(model_config("dae_fuse_t", **overrides))


@MODELS.register("dae_fuse_s")
def dae_fuse_s(**overrides: Any) -> DAEFuse:
    """The default: ResNet18 depth at narrow widths, two ViT blocks; sized for the CPU budget of issue 3."""
    return DAEFuse(model_config("dae_fuse_s", **overrides))


@MODELS.register("dae_fuse_b")
def dae_fuse_b(**overrides: Any) -> DAEFuse:
    """Wider for GPU training: ResNet18's own widths, four ViT blocks."""
    return DAEFuse(model_config("dae_fuse_b", **overrides))


def create_model(name: str, **overrides: Any) -> DAEFuse:
    """Build a registered variant, e.g. ``create_model("dae_fuse_s", vit_depth=4)``."""
    return MODELS.get(name)(**overrides)


def expand_modalities(source: DAEFuse, cfg: DAEFuseConfig, mapping: dict[str, str]) -> DAEFuse:
    """A model of ``cfg`` (other modalities, same widths) warm-started from ``source``'s weights.

    ``mapping``: each of ``cfg.modalities`` -> the ``source`` modality whose role it takes (three bands from the
    released two-band model: ``{'vis': 'vis', 'nir': 'vis', 'lwir': 'ir'}``: near-infrared starts as a second
    visible). The shared encoder and decoder are copied as they are (they are modality-agnostic); each new
    modality's attention block is its counterpart's; the merge and the skip gates are split so that k new
    modalities mapped to one source modality share its weight (1/k each; its gate logit minus log k), which makes
    the expanded rules give the source's result whenever those k inputs are equal. Everything else starts where
    ``source`` is; the new model still needs phase-2 training to use what a new band adds.
    """
    problems = [m for m in cfg.modalities if mapping.get(m) not in source.modalities]
    if problems:
        raise ValueError(f"mapping must send each of {list(cfg.modalities)} to one of {list(source.modalities)}; "
                         f"got {mapping}")
    same = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "modalities"}
    theirs = {k: getattr(source.cfg, k) for k in same}
    if same != theirs:
        diffs = ", ".join(f"{k}: {theirs[k]} (source) vs {v}" for k, v in same.items() if theirs[k] != v)
        raise ValueError(f"expand_modalities changes the modalities only; the architectures differ in {diffs}")
    model = DAEFuse(cfg)
    src = source.state_dict()
    state = {k: v.clone() for k, v in src.items() if not k.startswith(("fusion.", "skip_fusion."))}
    s_index = {m: i for i, m in enumerate(source.modalities)}
    groups = [s_index[mapping[m]] for m in cfg.modalities]  # source slot of each new modality
    share = torch.tensor([groups.count(g) for g in groups], dtype=torch.float32)  # k of each new modality

    def split_columns(weight: Tensor, width: int) -> Tensor:
        """(out, N_s * width, ...) -> (out, N_d * width, ...): new slot j = source slot groups[j] / k_j."""
        blocks = weight.split(width, dim=1)
        return torch.cat([blocks[g] / share[j] for j, g in enumerate(groups)], dim=1)

    fusion_src = {k[len("fusion."):]: v for k, v in src.items() if k.startswith("fusion.")}
    if isinstance(model.fusion, CrossModalityFusion):
        for name, m in zip(model.fusion.block_names, cfg.modalities):
            theirs_name = source.fusion.block_names[s_index[mapping[m]]]
            for k, v in fusion_src.items():
                if k.startswith(theirs_name + "."):
                    state[f"fusion.{name}.{k[len(theirs_name) + 1:]}"] = v.clone()
    for k in ("merge.weight", "merge.bias"):
        if k in fusion_src:
            v = fusion_src[k]
            state[f"fusion.{k}"] = split_columns(v, cfg.embed_dim) if k.endswith("weight") else v.clone()
    for level, (rule, theirs_rule) in enumerate(zip(model.skip_fusion, source.skip_fusion)):
        if not isinstance(rule, GatedSkipFusion):
            continue
        w, b = theirs_rule.gate.weight.detach(), theirs_rule.gate.bias.detach()
        c = w.shape[1] // len(source.modalities)
        if len(source.modalities) == 2:  # logits (a, 0): a from the conv, the second modality's fixed at 0
            logit_w, logit_b = [w, torch.zeros_like(w)], [b, torch.zeros_like(b)]
        else:
            logit_w, logit_b = list(w.split(c, dim=0)), list(b.split(c, dim=0))
        if len(cfg.modalities) == 2:
            raise ValueError("expand_modalities builds models of three or more modalities")
        state[f"skip_fusion.{level}.gate.weight"] = torch.cat([split_columns(logit_w[g], c) for g in groups])
        state[f"skip_fusion.{level}.gate.bias"] = torch.cat(
            [logit_b[g] - torch.log(share[j]) for j, g in enumerate(groups)]
        )
    model.load_state_dict(state)
    return model
