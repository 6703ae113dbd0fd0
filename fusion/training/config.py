"""DAE-Fuse training configuration as data: frozen dataclasses, YAML presets, ``key=value`` overrides.

Resolution order: the dataclass defaults (the paper recipe) <- a preset (``fusion/configs/<name>.yaml``) <- a YAML
file (``--config``) <- ``key=value`` overrides (``optim.lr_g=2e-4``, ``phases=[{name: recon, epochs: 2}]``).
Every key is type-checked and unknown keys are errors that list the known ones; so are the names that point
elsewhere (``model.name`` and ``model.args``, checked against ``fusion.models.dae_fuse``; ``best_metric``, against
``fusion.metrics.image``), at load time rather than when training starts. The trainer saves the resolved
configuration as ``args.yaml`` in the run folder; ``load_train_config(that file)`` gives the same config back.

Where each default comes from is documented beside it in ``fusion/configs/paper.yaml``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.config import ConfigError, from_dict, merge, nest, parse_override, read_yaml, to_dict  # noqa: F401

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # fusion/configs
PRESETS: tuple[str, ...] = ("paper", "quick", "tiny", "release_cpu", "blackout_finetune", "triband")


@dataclass(frozen=True)
class ModelConfig:
    """Which generator: a variant of ``fusion.models.dae_fuse.MODELS`` and overrides of its ``DAEFuseConfig`` fields."""

    name: str = "dae_fuse_s"
    args: dict[str, Any] = field(default_factory=dict)
    # Fine-tuning: a DAE-Fuse checkpoint (training or released) whose generator weights start the run instead of
    # a fresh initialisation; its architecture must be the one ``name`` + ``args`` build. Optimisers start fresh.
    init: str | None = None
    # Warm start from a checkpoint of other modalities (``fusion.models.dae_fuse.expand_modalities``): each modality of
    # this model -> the checkpoint's modality whose weights it starts from, e.g. {vis: vis, nir: vis, lwir: ir}.
    # Empty: ``init`` must be of this very architecture.
    init_map: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The two PatchGAN discriminators (one per source modality)."""

    channels: int = 32
    num_layers: int = 3
    spectral_norm: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Training data: folders, random crops, augmentation, loader, validation subset."""

    ir_dir: str | None = None
    vis_dir: str | None = None
    # A data.datasets reader (m3fd, llvip, folder, synthetic, package.module:function) to read each root through,
    # with its options (e.g. {modalities: "ir,vis,nir"}); None: an M3FD-layout root, else a paired folder.
    dataset: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 128
    crops_per_image: int = 8
    batch_size: int = 8
    hflip: bool = True
    vflip: bool = False
    num_workers: int = 0
    cache_images: bool = False
    val_fraction: float = 0.1
    val_max_pairs: int = 4
    val_max_side: int = 320
    # Blackout augmentation (ours): with this probability a crop gets 1-3 rectangles, each 20-60 % of the crop side,
    # set to black in both images (albumentations CoarseDropout, fill 0). Driving scenes never show both sources
    # black, so without it a model learns a grey floor where they are (medical backgrounds, masked sensor areas);
    # the fusion loss's target there is max(ir, vis) = 0. 0 = off (the paper has no such augmentation).
    blackout_prob: float = 0.0
    # N modalities (a model whose modalities are not ('ir', 'vis')): modality -> sub-folder names to look for in
    # each root, first found wins; unset modalities use fusion.training.data.DEFAULT_MODALITY_DIRS.
    modality_dirs: dict[str, Any] = field(default_factory=dict)
    # Modality dropout (N modalities, ours): with this probability a crop with three or more present modalities
    # loses one, drawn at random, so that the model learns to fuse any subset of at least two. 0 = off.
    modality_dropout: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and forms (see ``fusion.training.losses``)."""

    recon_ssim: float = 5.0
    recon_mse: float = 1.0
    recon_grad: float = 5.0
    ssim_loss: str = "kornia"
    recon_grad_targets: tuple[str, ...] = ("vis",)
    recon_sobel_normalized: bool = True
    fuse_intensity: float = 1.0
    fuse_grad: float = 10.0
    adv_recon: float = 0.1
    adv_fuse: float = 0.1
    gan: str = "lsgan"
    ssim_window: int = 11


@dataclass(frozen=True)
class OptimConfig:
    """Adam for the generator, RMSProp for the discriminators, one step-decay schedule for all."""

    lr_g: float = 1e-4
    betas_g: tuple[float, float] = (0.9, 0.999)
    weight_decay_g: float = 0.0
    lr_d: float = 1e-4
    alpha_d: float = 0.99
    lr_step: int = 20
    lr_gamma: float = 0.5
    lr_min: float = 1e-6
    grad_clip_g: float | None = 0.01
    grad_clip_d: float | None = None
    grad_clip_per_module: bool = True
    fusion_lr_restart: bool = True


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase: 'recon' (phase 1, reconstruction) or 'fuse' (phase 2, fusion), for some epochs."""

    name: str
    epochs: int


@dataclass(frozen=True)
class FusionTrainConfig:
    """Everything a DAE-Fuse training run depends on (saved in every checkpoint and as ``args.yaml``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    phases: tuple[PhaseConfig, ...] = (PhaseConfig("recon", 40), PhaseConfig("fuse", 80))
    seed: int = 0
    amp: str = "bf16"
    best_metric: str = "Qabf"
    num_samples: int = 2
    adversarial: bool = True
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.phases:
            problems.append("phases is empty")
        for p in self.phases:
            if p.epochs < 0:
                problems.append(f"phase '{p.name}' has {p.epochs} epochs")
        if self.amp not in ("bf16", "fp16", "none"):
            problems.append(f"amp must be bf16, fp16 or none, got '{self.amp}'")
        if self.seed < 0:
            problems.append(f"seed must be non-negative, got {self.seed}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            problems.append(f"max_minutes must be positive (or null: no budget), got {self.max_minutes}")
        if not self.loss.recon_grad_targets:  # that they are the model's modalities: check_references
            problems.append("loss.recon_grad_targets must name at least one modality")
        d = self.data
        for name in ("crop_size", "crops_per_image", "batch_size", "val_max_pairs", "val_max_side"):
            if getattr(d, name) < 1:
                problems.append(f"data.{name} must be at least 1, got {getattr(d, name)}")
        if not 0 <= d.blackout_prob <= 1:
            problems.append(f"data.blackout_prob must be in [0, 1], got {d.blackout_prob}")
        if not 0 <= d.modality_dropout <= 1:
            problems.append(f"data.modality_dropout must be in [0, 1], got {d.modality_dropout}")
        if d.num_workers < 0 or not 0 <= d.val_fraction < 1:
            problems.append(f"need data.num_workers >= 0 and 0 <= data.val_fraction < 1, got {d.num_workers}, "
                            f"{d.val_fraction}")
        if problems:
            raise ValueError("invalid FusionTrainConfig: " + "; ".join(problems))

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase_at(self, epoch: int) -> PhaseConfig:
        """The phase that global epoch ``epoch`` (0-based) belongs to."""
        return self.phases[self.phase_index(epoch)]

    def phase_index(self, epoch: int) -> int:
        """The index in ``phases`` of the phase that global epoch ``epoch`` (0-based) belongs to."""
        end = 0
        for i, phase in enumerate(self.phases):
            end += phase.epochs
            if epoch < end:
                return i
        raise IndexError(f"epoch {epoch} is past the schedule ({self.total_epochs} epochs)")

    def phase_end(self, epoch: int) -> int:
        """The first epoch after the phase that epoch ``epoch`` belongs to."""
        return sum(p.epochs for p in self.phases[: self.phase_index(epoch) + 1])


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
    return CONFIG_DIR / f"{name}.yaml"


BEST_METRIC_LOSS = "fusion_loss"  # the one best_metric that is minimised; every fusion.metrics.image name is maximised


def best_metric_names() -> list[str]:
    """What ``best_metric`` may name: a ``fusion.metrics.image`` metric or the validation fusion loss."""
    from fusion.metrics.image import metric_names  # imported here: the config module stays free of the metric code

    return [*metric_names(), BEST_METRIC_LOSS]


def check_references(cfg: FusionTrainConfig) -> None:
    """Check what the dataclasses cannot type-check: the model variant and its ``model.args`` (names and values,
    through ``fusion.models.dae_fuse.model_config``) and ``best_metric``. One ConfigError lists every problem."""
    from fusion.models.dae_fuse import model_config  # imported here: building a config needs no torch until it is used

    problems = []
    modalities: tuple[str, ...] | None = None
    try:
        modalities = model_config(cfg.model.name, **cfg.model.args).modalities
    except KeyError as err:
        problems.append(f"model.name: {err.args[0]}")
    except (TypeError, ValueError) as err:
        problems.append(f"model.args: {err}")
    if modalities is not None:
        unknown = sorted(set(cfg.loss.recon_grad_targets) - set(modalities))
        if unknown:
            problems.append(f"loss.recon_grad_targets: {unknown} are not modalities of the model {list(modalities)}")
        if cfg.model.init_map:
            if set(cfg.model.init_map) != set(modalities):
                problems.append(f"model.init_map must map each of {list(modalities)}, got {cfg.model.init_map}")
            if not cfg.model.init:
                problems.append("model.init_map needs model.init (the checkpoint it maps from)")
        for m in cfg.data.modality_dirs:
            if m not in modalities:
                problems.append(f"data.modality_dirs: '{m}' is not a modality of the model {list(modalities)}")
    from .losses import SSIM_LOSSES

    if cfg.loss.ssim_loss not in SSIM_LOSSES:
        problems.append(f"loss.ssim_loss: unknown '{cfg.loss.ssim_loss}'; known: {', '.join(SSIM_LOSSES)}")
    known = best_metric_names()
    if cfg.best_metric not in known:
        problems.append(f"best_metric: unknown metric '{cfg.best_metric}'; known: {', '.join(known)}")
    if problems:
        raise ConfigError("; ".join(problems))


def load_train_config(
    path: str | Path | None = None, *, preset: str | None = None, overrides: Sequence[str] = ()
) -> FusionTrainConfig:
    """Resolve a training config: defaults <- preset <- YAML file <- ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if preset is not None:
        data = merge(data, read_yaml(preset_path(preset)))
    if path is not None:
        data = merge(data, read_yaml(Path(path)))
    for text in overrides:
        data = merge(data, parse_override(text))
    try:
        cfg = from_dict(FusionTrainConfig, data)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from err
    check_references(cfg)
    return cfg


# What a configuration saved before a key existed computed with, where that differs from the key's default (the
# defaults follow CDDFuse's effective terms; the recipe before them differed in these). Any other missing key means
# its default.
LEGACY_VALUES: dict[str, Any] = {
    "loss.ssim_loss": "one_minus",
    "loss.recon_grad_targets": ["ir", "vis"],
    "loss.recon_sobel_normalized": False,
    "optim.grad_clip_per_module": False,
    "optim.fusion_lr_restart": False,
}


def complete_saved_config(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved configuration (``to_dict`` form, e.g. a checkpoint's ``cfg``) with every key it predates filled in
    with what it computed with: ``LEGACY_VALUES``, else the default. Keys it has are kept as they are."""
    base = to_dict(FusionTrainConfig())
    for key, value in LEGACY_VALUES.items():
        base = merge(base, nest(key, value))
    return merge(base, saved)


def dump_config(cfg: FusionTrainConfig) -> str:
    """The resolved config as YAML text (what ``args.yaml`` holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace_config(cfg: FusionTrainConfig, *overrides: str) -> FusionTrainConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied (type-checked like the CLI's)."""
    data = to_dict(cfg)
    for text in overrides:
        data = merge(data, parse_override(text))
    cfg = from_dict(FusionTrainConfig, data)
    check_references(cfg)
    return cfg
