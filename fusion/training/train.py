"""DAE-Fuse trainer: two phases, explicit generator and discriminator steps, exact resume, DDP.

Command line (a thin wrapper over ``train``)::

    python -m fusion.training.train --data ROOT --out runs/dae_fuse [--preset {paper,quick,tiny}] [--config FILE.yaml]
                           [--resume] [--device cpu|cuda] [--seed N] [key=value ...]
    torchrun --nproc_per_node 4 -m fusion.training.train --data ROOT --out runs/dae_fuse --device cuda

Each step (``Trainer.train_step``), for the phase the epoch belongs to (``PHASES``; phases are data in the config):

1. generator step: the phase's generator outputs (reconstructions in 'recon', the fused image in 'fuse') and
   its content loss, plus the adversarial term against the discriminators (one per modality), which are frozen
   (``requires_grad_(False)``) for this step;
2. discriminator step: each discriminator sees its modality's real image against the detached generated image
   (phase 1: the reconstruction of that modality; phase 2: the fused image, for every modality, so that the fused
   image leans to no source).

N modalities: the model's ``modalities`` (``model.args.modalities``; ('ir', 'vis') by default) name the sources. Any
other set trains on roots with one folder per modality (``fusion.training.data.resolve_multimodal_roots``); a root may
lack some modalities (real two-band pairs in a three-band run): a batch then carries a ``present`` mask, and each
reconstruction term, each discriminator and the fusion loss see only the samples that have their modality (the fusion
loss's maxima run over the present sources). ``data.modality_dropout`` drops a band from some crops so the model learns
every subset; ``model.init`` + ``model.init_map`` warm-start it from a model of other modalities
(``fusion.models.dae_fuse.expand_modalities``).

With ``adversarial: false`` (an ablation) there are no discriminators, no adversarial terms and no step 2.

Every optimiser step is unscale -> clip -> step -> update -> zero_grad; the generator's gradient norm is clipped
per module (``optim.grad_clip_per_module``, CDDFuse's) or jointly. With ``optim.fusion_lr_restart`` (CDDFuse's)
the parameters only phase 2 trains have their own optimiser ('g_fusion') whose schedule only advances in fusion
epochs, so they start phase 2 at the base learning rate. ``max_minutes`` is a wall-clock budget shared among the
phases in proportion to their epochs: a phase whose share (counted over the epochs recorded, so resuming counts
the same) is spent after an epoch ends there, and the run ends after the epoch that spends the whole budget.

A non-finite loss stops the run with the loss dict in the error, before anything is stepped or saved. ``last.pt``
is written (atomically) at the end of every epoch and ``best.pt`` when the validation metric improves in a fusion
epoch, before ``last.pt``, so that ``last.pt`` never records a best epoch whose ``best.pt`` was not written.
``resume=True`` continues from ``last.pt`` exactly (model, discriminators, optimisers, schedulers, scaler, RNG states;
data order and crops are functions of (seed, epoch)) after checking that it is a readable DAE-Fuse checkpoint of the
same configuration, split and data root (``OPERATIONAL_KEYS`` may differ; a key its config predates counts as the value
it trained with, ``fusion.training.config.complete_saved_config``), and restores a ``best.pt`` that an interruption
under the old write order lost. Side effects (TensorBoard, progress) are callbacks, rank 0 only.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler

from data.errors import DatasetError
from data.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from data.provenance import package_versions
from data.registry import Registry
from fusion.metrics.image import MIN_SIDE, evaluate
from fusion.models.checkpoint import (
    CHECKPOINT_FORMAT,
    RESUME_KEYS,
    CheckpointError,
    build_generator,
    load_checkpoint,
    read_generator_checkpoint,
    save_checkpoint,
)
from fusion.models.dae_fuse import (
    ARCHITECTURE,
    DAEFuse,
    build_discriminators,
    create_model,
    expand_modalities,
    model_config,
)

from .config import (
    PRESETS,
    ConfigError,
    FusionTrainConfig,
    check_references,
    complete_saved_config,
    dump_config,
    load_train_config,
    to_dict,
)
from .data import (
    MultiModalCropDataset,
    PairedCropDataset,
    load_validation_images,
    load_validation_samples,
    resolve_multimodal_roots,
    resolve_training_roots,
)
from .losses import GAN_LOSSES, FusionLoss, LossDict, ReconstructionLoss, discriminator_loss

LOGGER = logging.getLogger(__name__)

MODALITIES = ("ir", "vis")  # the two-band model's, read as pairs (``fusion.training.data.PairedCropDataset``)
# Config keys a resumed run may change: they change how fast it runs or what is logged, never what it computes.
OPERATIONAL_KEYS: tuple[str, ...] = ("data.num_workers", "data.cache_images", "num_samples")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message holds every loss term of that step."""


# ----------------------------------------------------------------------------------------------------------------
# Phases: what the generator produces and which content loss judges it. The trainer is the same for all phases.


@dataclass(frozen=True)
class Phase:
    """A training phase: ``generate(model, losses, *sources, present=None) -> (content loss terms, fakes)``.

    ``sources``: one batch (B, 1, H, W) per modality, in the model's order (two-band: ir, vis); ``present`` is None
    (all present) or the (B, N) bool mask of the modalities each sample has. ``fakes`` maps each discriminator (one per modality)
    to the generated image it judges against its real modality.
    ``adv_weight`` names the ``LossConfig`` field weighting the adversarial term in this phase. ``fuses``: the
    phase trains the fusion path, so its epochs compete for ``best.pt``.
    """

    generate: Callable[..., tuple[LossDict, dict[str, Tensor]]]
    adv_weight: str
    fuses: bool


PHASES: Registry[Phase] = Registry("training phase")


def _fp32(x: Tensor):
    """Losses (SSIM, Sobel) run in fp32 even inside a bf16/fp16 autocast region."""
    return torch.autocast(x.device.type, enabled=False)


def _generate_recon(model: DAEFuse, losses: Losses, *sources: Tensor, present: Tensor | None = None
                    ) -> tuple[LossDict, dict[str, Tensor]]:
    real = dict(zip(model.modalities, sources))
    fakes = dict(zip(model.modalities, model.reconstruct(*sources)))
    with _fp32(sources[0]):
        return losses.recon(real, {m: x.float() for m, x in fakes.items()}, present), fakes


def _generate_fuse(model: DAEFuse, losses: Losses, *sources: Tensor, present: Tensor | None = None
                   ) -> tuple[LossDict, dict[str, Tensor]]:
    fused = model(*sources, present=present)
    with _fp32(sources[0]):
        return losses.fusion.n_sources(sources, fused.float()), {m: fused for m in model.modalities}


PHASES.register("recon")(Phase(_generate_recon, "adv_recon", fuses=False))
PHASES.register("fuse")(Phase(_generate_fuse, "adv_fuse", fuses=True))


class Losses(nn.Module):
    """The content losses of both phases, built once from the config."""

    def __init__(self, cfg: FusionTrainConfig):
        super().__init__()
        c = cfg.loss
        self.recon = ReconstructionLoss(
            c.recon_ssim, c.recon_mse, c.recon_grad, c.ssim_window, ssim_loss=c.ssim_loss,
            grad_targets=c.recon_grad_targets, sobel_normalized=c.recon_sobel_normalized,
        )
        self.fusion = FusionLoss(c.fuse_intensity, c.fuse_grad)


class GeneratorStep(nn.Module):
    """What DDP wraps: the phase's generator pass as ``forward`` (DDP only synchronises work done in forward)."""

    def __init__(self, model: DAEFuse, losses: Losses):
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(self, sources: dict[str, Tensor], present: Tensor | None, phase: str
                ) -> tuple[LossDict, dict[str, Tensor]]:
        return PHASES.get(phase).generate(self.model, self.losses, *sources.values(), present=present)


class StepDecay:
    """Learning-rate factor for LambdaLR: ``gamma ** (epoch // step)``, never below ``lr_min / lr`` (CDDFuse)."""

    def __init__(self, step: int, gamma: float, floor: float):
        self.step, self.gamma, self.floor = step, gamma, floor

    def __call__(self, epoch: int) -> float:
        return max(self.gamma ** (epoch // self.step), self.floor)


# ----------------------------------------------------------------------------------------------------------------
# Distributed context


@dataclass(frozen=True)
class DistContext:
    """Rank and world size; ``enabled`` when started by torchrun (WORLD_SIZE/RANK in the environment)."""

    enabled: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> DistContext:
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            return cls()
        return cls(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ----------------------------------------------------------------------------------------------------------------
# Results, callbacks


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already complete) run leaves behind."""

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None  # None when the schedule has no fusion epoch
    epochs: int
    final_losses: dict[str, float]
    val_metrics: dict[str, float]
    wall_time_s: float  # of this call (a resumed run counts its last part)


Callback = Callable[["Trainer"], None]
EVENTS: tuple[str, ...] = ("on_train_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_train_end")


class TensorBoardLogger:
    """Logs every loss term per step, epoch means, learning rates, validation metrics and sample images."""

    def __init__(self, writer: Any):
        self.writer = writer

    def on_step_end(self, trainer: Trainer) -> None:
        for name, value in trainer.step_losses.items():
            self.writer.add_scalar(f"fusion/train/{trainer.phase}/{name}", value, trainer.global_step)

    def on_epoch_end(self, trainer: Trainer) -> None:
        e = trainer.epoch + 1
        for name, value in trainer.epoch_losses.items():
            self.writer.add_scalar(f"fusion/epoch/{trainer.phase}/{name}", value, e)
        for name, opt in trainer.optimizers.items():
            self.writer.add_scalar(f"fusion/lr/{name}", opt.param_groups[0]["lr"], e)
        for name, value in trainer.val_metrics.items():
            self.writer.add_scalar(f"fusion/val/{name}", value, e)
        for stem, grid in trainer.samples.items():
            self.writer.add_image(f"fusion/samples/{stem}", grid, e, dataformats="HW")
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.flush()


class ProgressBar:
    """A tqdm bar per epoch with the running generator loss."""

    def __init__(self) -> None:
        self.bar = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(trainer.loader), desc=f"epoch {trainer.epoch + 1}/{trainer.cfg.total_epochs} {trainer.phase}",
            leave=False, dynamic_ncols=True,
        )

    def on_step_end(self, trainer: Trainer) -> None:
        self.bar.update(1)
        totals = {k[0]: f"{trainer.step_losses[k]:.4f}" for k in ("g_total", "d_total") if k in trainer.step_losses}
        self.bar.set_postfix(**totals)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.bar.close()


def versions() -> dict[str, str]:
    """Package versions stored in checkpoints."""
    return package_versions(("fusebench", "torch", "timm", "numpy"))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume_identity(cfg: dict[str, Any], split: Any, data_root: Any) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint: the config without ``OPERATIONAL_KEYS``, the split and
    the data root (left out when ``data_root`` is None: a checkpoint that predates recording it)."""
    out = copy.deepcopy(cfg)
    for dotted in OPERATIONAL_KEYS:
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    out["split"] = split
    if data_root is not None:
        out["data_root"] = data_root
    return out


def _config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            diffs.append(f"{prefix}{key}: {va!r} (checkpoint) vs {vb!r} (given)")
    return diffs


# ----------------------------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """One DAE-Fuse training run. ``fit()`` runs it; ``train_step(batch, phase)`` is one G + D update."""

    def __init__(
        self,
        cfg: FusionTrainConfig,
        data_root: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        *,
        device: str = "cpu",
        resume: bool = False,
        tb_writer: Any = None,
        progress: bool = True,
        callbacks: dict[str, Sequence[Callback]] | None = None,
        split: str = "train",
    ):
        check_references(cfg)  # a config built in code has not been through load_train_config's checks
        self.cfg = cfg
        self.split = split
        roots = [data_root] if isinstance(data_root, (str, Path)) else list(data_root)
        self.data_roots = [Path(r) for r in roots]
        self.out_dir = Path(out_dir)
        self.dist = DistContext.from_env()
        self.device = self._setup_device(device)
        self.callbacks: dict[str, list[Callback]] = {e: [] for e in EVENTS}
        for event, fns in (callbacks or {}).items():
            if event not in self.callbacks:
                raise ValueError(f"unknown callback event '{event}'; known: {', '.join(EVENTS)}")
            self.callbacks[event].extend(fns)
        unknown = [p.name for p in cfg.phases if p.name not in PHASES]
        if unknown:
            raise ConfigError(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES.names())}")

        # Data first: a bad dataset fails before any model is built.
        self.modalities: tuple[str, ...] = model_config(cfg.model.name, **cfg.model.args).modalities
        self.multimodal = self.modalities != MODALITIES  # any other set: one folder per modality, a present mask
        if self.multimodal:
            train_samples, val_samples = resolve_multimodal_roots(self.data_roots, self.modalities, cfg.data, split)
            self.dataset = MultiModalCropDataset(
                train_samples, self.modalities, cfg.data.crop_size, cfg.data.crops_per_image, cfg.data.hflip,
                cfg.data.vflip, cfg.seed, cfg.data.cache_images, cfg.data.modality_dropout,
            )
        else:
            train_pairs, val_pairs = resolve_training_roots(self.data_roots, cfg.data, split)
            self.dataset = PairedCropDataset(
                train_pairs, cfg.data.crop_size, cfg.data.crops_per_image, cfg.data.hflip, cfg.data.vflip, cfg.seed,
                cfg.data.cache_images, cfg.data.blackout_prob,
            )
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.seed
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            drop_last=len(self.dataset) >= cfg.data.batch_size * self.dist.world_size,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed),  # leaves the global RNG alone
        )
        self.val_images = []
        if self.dist.is_main:
            d = cfg.data
            self.val_images = (
                load_validation_samples(val_samples, self.modalities, d.val_max_pairs, d.val_max_side)
                if self.multimodal else load_validation_images(val_pairs, d.val_max_pairs, d.val_max_side)
            )

        seed_everything(cfg.seed)
        self.model = create_model(cfg.model.name, **cfg.model.args)
        if cfg.model.init:  # a resumed run then loads its own weights over these
            self._load_initial_weights(Path(cfg.model.init))
        self.model.to(self.device)
        # None when adversarial training is off: nothing of the discriminators is built, stepped or saved.
        self.discriminators: nn.ModuleDict | None = None
        if cfg.adversarial:
            d = cfg.discriminator
            self.discriminators = build_discriminators(
                self.model.cfg.in_chans, d.channels, d.num_layers, d.spectral_norm, self.modalities
            ).to(self.device)
        self.losses = Losses(cfg).to(self.device)
        self.gan_loss = GAN_LOSSES.get(cfg.loss.gan)
        self._setup_optimizers()
        amp_dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
        self.amp_dtype = amp_dtypes[cfg.amp] if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # the epoch being trained (0-based); after it, ``epoch + 1`` epochs are complete
        self.start_epoch = 0
        self.next_epoch = 0  # the epoch after ``epoch`` (set when it ends: the time budget may skip ahead)
        self.global_step = 0
        self.phase = cfg.phases[0].name
        self.step_losses: dict[str, float] = {}
        self.epoch_losses: dict[str, float] = {}
        self.val_metrics: dict[str, float] = {}
        self.samples: dict[str, np.ndarray] = {}
        self.best: dict[str, Any] = {"metric": None, "value": None, "epoch": None}
        self.history: list[dict[str, Any]] = []
        self._warned: set[str] = set()
        if resume:
            self._resume()

        # DDP must be told when a phase leaves parameters without gradients (phase 1 does not use the fusion rules).
        n_params = len(list(self.model.parameters()))
        find_unused = any(len(self.model.phase_parameters(p.name)) < n_params for p in cfg.phases)
        gen = GeneratorStep(self.model, self.losses)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.generator_step: nn.Module = DistributedDataParallel(
                gen, device_ids=ids, find_unused_parameters=find_unused
            )
            self.d_train = None if self.discriminators is None else nn.ModuleDict(
                {m: DistributedDataParallel(self.discriminators[m], device_ids=ids) for m in self.modalities}
            )
        else:
            self.generator_step, self.d_train = gen, self.discriminators

        self.tb_writer = tb_writer
        if self.dist.is_main:
            if self.tb_writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb_writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            self.add_callback(TensorBoardLogger(self.tb_writer))
            if progress:
                self.add_callback(ProgressBar())

    # -- setup ----------------------------------------------------------------------------------------------------
    def _setup_optimizers(self) -> None:
        """Adam for the generator ('g', plus 'g_fusion' for the phase-2-only parameters under
        ``optim.fusion_lr_restart``), RMSProp per discriminator ('d_<modality>'), a step decay for each; and the
        parameter groups whose gradient norms are clipped separately (``clip_groups``)."""
        o = self.cfg.optim
        def adam(params: Any) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=o.lr_g, betas=o.betas_g, weight_decay=o.weight_decay_g)

        recon = {id(p) for p in self.model.phase_parameters("recon")}
        fusion_only = [p for p in self.model.parameters() if id(p) not in recon]
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if o.fusion_lr_restart and fusion_only:
            # CDDFuse's fusion layers have their own optimisers whose schedulers only step in phase 2
            self.optimizers["g"] = adam([p for p in self.model.parameters() if id(p) in recon])
            self.optimizers["g_fusion"] = adam(fusion_only)
        else:
            self.optimizers["g"] = adam(self.model.parameters())
        self.generator_optimizers = tuple(self.optimizers)
        for m in self.modalities if self.discriminators is not None else ():
            d_params = self.discriminators[m].parameters()
            self.optimizers[f"d_{m}"] = torch.optim.RMSprop(d_params, lr=o.lr_d, alpha=o.alpha_d)
        self.schedulers = {
            name: LambdaLR(opt, StepDecay(o.lr_step, o.lr_gamma, o.lr_min / opt.defaults["lr"]))
            for name, opt in self.optimizers.items()
        }
        # CDDFuse clips each module (encoder, decoder, each fusion layer) on its own; the alternative is one joint norm
        modules = self.model.children() if o.grad_clip_per_module else [self.model]
        self.clip_groups: dict[str, list[list[nn.Parameter]]] = {
            "g": [ps for ps in (list(m.parameters()) for m in modules) if ps],
            "d": [list(self.discriminators[m].parameters()) for m in self.modalities] if self.discriminators else [],
        }

    def _data_root_record(self) -> str | list[str]:
        """The data roots as a checkpoint records them: one path as a string (as before several were allowed)."""
        roots = [str(r.resolve()) for r in self.data_roots]
        return roots[0] if len(roots) == 1 else roots

    def _setup_device(self, device: str) -> torch.device:
        dev = torch.device(device)
        if self.dist.enabled:
            if not dist.is_initialized():
                raise RuntimeError("distributed run without a process group: use "
                                   "fusion.training.train.train() or init one")
            if dev.type == "cuda":
                dev = torch.device("cuda", self.dist.local_rank)
                torch.cuda.set_device(dev)
        return dev

    def add_callback(self, obj: Any) -> None:
        """Register every ``on_*`` method of ``obj`` (an object with hook methods) for its event."""
        for event in EVENTS:
            if hasattr(obj, event):
                self.callbacks[event].append(getattr(obj, event))

    def _run_callbacks(self, event: str) -> None:
        for fn in self.callbacks[event]:
            fn(self)

    # -- one step -------------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _optimizer_step(
        self, loss: Tensor, names: Sequence[str], clip: float | None, clip_groups: Sequence[Sequence[nn.Parameter]]
    ) -> None:
        """backward -> unscale -> clip -> step -> zero_grad for the optimisers ``names``; ``clip`` bounds the
        gradient norm of each of ``clip_groups`` separately (the scaler's ``update`` comes once per iteration, after
        every optimiser of the iteration has stepped)."""
        self.scaler.scale(loss).backward()
        # an optimiser none of whose parameters got a gradient (the fusion layers' in phase 1) is not stepped: that
        # is a no-op for Adam, and fp16's GradScaler refuses it
        names = [n for n in names if any(p.grad is not None for g in self.optimizers[n].param_groups
                                         for p in g["params"])]
        if clip is not None:
            for name in names:
                self.scaler.unscale_(self.optimizers[name])
            for group in clip_groups:
                params = [p for p in group if p.grad is not None]
                if params:
                    nn.utils.clip_grad_norm_(params, clip)
        for name in names:
            opt = self.optimizers[name]
            self.scaler.step(opt)
            opt.zero_grad(set_to_none=True)

    @staticmethod
    def _check_finite(terms: dict[str, Tensor], what: str, phase: str) -> dict[str, float]:
        values = {k: float(v.detach()) for k, v in terms.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(f"non-finite {what} loss in phase '{phase}' ({', '.join(bad)}): {values}")
        return values

    def train_step(self, batch: dict[str, Tensor], phase: str) -> dict[str, float]:
        """One generator update then one discriminator update; returns every loss term (g_*, d_*; no d_* and no
        adversarial terms when adversarial training is off)."""
        sources = {m: batch[m].to(self.device, non_blocking=True) for m in self.modalities}
        present = batch.get("present")
        if present is not None:
            # every sample with every modality is the unmasked model (the same function, less work)
            present = None if bool(present.all()) else present.to(self.device)
        adversarial = self.discriminators is not None

        # Generator step: discriminators frozen, judged on the generated images (each discriminator on the samples
        # that have its modality).
        if adversarial:
            self.discriminators.requires_grad_(False)
        with self._autocast():
            content, fakes = self.generator_step(sources, present, phase)
            fakes = self._present_only(fakes, present)
            adv = {f"adv_{m}": self.gan_loss(self.discriminators[m](fake).float(), True)
                   for m, fake in (fakes.items() if adversarial else ())}
        g_terms = dict(content)
        if adv:
            adv_weight = getattr(self.cfg.loss, PHASES.get(phase).adv_weight)
            g_terms.update({k: adv_weight * v for k, v in adv.items()})
            g_terms["total"] = content["total"] + adv_weight * sum(adv.values())
        g_values = self._check_finite(g_terms, "generator", phase)
        self._optimizer_step(g_terms["total"], self.generator_optimizers, self.cfg.optim.grad_clip_g,
                             self.clip_groups["g"])
        d_values = self._discriminator_step(self._present_only(sources, present), fakes, phase) if adversarial else {}
        self.scaler.update()
        return {**{f"g_{k}": v for k, v in g_values.items()}, **{f"d_{k}": v for k, v in d_values.items()}}

    def _present_only(self, images: dict[str, Tensor], present: Tensor | None) -> dict[str, Tensor]:
        """Each modality's images restricted to the samples that have it; a modality no sample has is left out."""
        if present is None:
            return images
        return {m: x[present[:, i]] for i, (m, x) in enumerate(images.items()) if bool(present[:, i].any())}

    def _discriminator_step(self, real: dict[str, Tensor], fakes: dict[str, Tensor], phase: str) -> dict[str, float]:
        """Real vs detached generated image, one forward per discriminator; returns the loss terms."""
        self.discriminators.requires_grad_(True)
        d_terms = {}
        with self._autocast():
            for m in fakes:
                scores = self.d_train[m](torch.cat([real[m], fakes[m].detach().to(real[m].dtype)])).float()
                real_scores, fake_scores = scores.chunk(2)
                d_terms[m] = discriminator_loss(self.gan_loss, real_scores, fake_scores)
        d_terms["total"] = sum(d_terms.values())
        d_values = self._check_finite(d_terms, "discriminator", phase)
        self._optimizer_step(d_terms["total"], [f"d_{m}" for m in fakes], self.cfg.optim.grad_clip_d,
                             self.clip_groups["d"])
        return d_values

    # -- validation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Fuse the validation images; mean fusion metrics (``fusion.metrics.image``) and fusion loss. Rank 0 only."""
        if self.multimodal:
            return self._validate_multimodal()
        self.model.eval()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        self.samples = {}
        to_grey = lambda x: np.round(np.clip(x * 255.0, 0, 255)).astype(np.float32)  # noqa: E731
        for i, (stem, ir_np, vis_np) in enumerate(self.val_images):
            ir = torch.from_numpy(ir_np)[None, None].to(self.device)
            vis = torch.from_numpy(vis_np)[None, None].to(self.device)
            with self._autocast():
                fused = self.model(ir, vis).float()
            values = {"fusion_loss": float(self.losses.fusion(ir, vis, fused)["total"])}
            fused_np = fused[0, 0].cpu().numpy()
            if min(ir_np.shape) >= MIN_SIDE:  # VIF's four scales need this much; tiny test images skip it
                values.update(evaluate(to_grey(fused_np), to_grey(ir_np), to_grey(vis_np)))
            for k, v in values.items():
                sums[k] += float(v)
                counts[k] += 1
            if i < self.cfg.num_samples:
                self.samples[stem] = np.concatenate([ir_np, vis_np, fused_np], axis=1).clip(0, 1)
        self.model.train()
        return {k: sums[k] / counts[k] for k in sums}

    @torch.no_grad()
    def _validate_multimodal(self) -> dict[str, float]:
        """N modalities: the mean fusion loss over the validation samples, each fused from the modalities it has
        (the fusion metrics are two-source here: best.pt follows the fusion loss)."""
        self.model.eval()
        losses, self.samples = [], {}
        for i, (stem, images) in enumerate(self.val_images):
            shape = next(iter(images.values())).shape
            sources = [torch.from_numpy(images.get(m, np.zeros(shape, np.float32)))[None, None].to(self.device)
                       for m in self.modalities]
            mask = torch.tensor([[m in images for m in self.modalities]], device=self.device)
            with self._autocast():
                fused = self.model(*sources, present=None if bool(mask.all()) else mask).float()
            losses.append(float(self.losses.fusion.n_sources(sources, fused)["total"]))
            if i < self.cfg.num_samples:
                shown = [images[m] for m in self.modalities if m in images] + [fused[0, 0].cpu().numpy()]
                self.samples[stem] = np.concatenate(shown, axis=1).clip(0, 1)
        self.model.train()
        return {"fusion_loss": float(np.mean(losses))} if losses else {}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOGGER.warning(message)

    def _update_best(self) -> bool:
        """True if this epoch's validation is the best of the fusion epochs so far."""
        if not PHASES.get(self.phase).fuses or not self.val_metrics:
            return False
        metric = self.cfg.best_metric
        if metric not in self.val_metrics:
            self._warn_once("best", f"validation metric '{metric}' unavailable; best.pt follows the fusion loss")
            metric = "fusion_loss"
        value = self.val_metrics[metric]
        better = (lambda a, b: a < b) if metric == "fusion_loss" else (lambda a, b: a > b)
        if self.best["value"] is None or self.best["metric"] != metric or better(value, self.best["value"]):
            self.best = {"metric": metric, "value": value, "epoch": self.epoch + 1}
            return True
        return False

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume exactly, and to fuse (``model`` + ``model_config``)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "architecture": ARCHITECTURE,
            "model_name": self.cfg.model.name,
            "model_config": self.model.cfg.to_dict(),
            "model": self.model.state_dict(),
            **({"discriminators": self.discriminators.state_dict()} if self.discriminators is not None else {}),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch + 1,
            "next_epoch": self.next_epoch,  # epoch + 1 unless the time budget of the phase ended it early
            "phase": self.phase,
            "global_step": self.global_step,
            "best": dict(self.best),
            "history": list(self.history),
            # Counted here, where the phases are known, so that inference never needs their names.
            "fusion_epochs": sum(PHASES.get(e["phase"]).fuses for e in self.history if e.get("phase") in PHASES),
            "cfg": to_dict(self.cfg),
            "split": self.split,
            "data_root": self._data_root_record(),
            "versions": versions(),
            "rng": _rng_state(),
        }

    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        save_checkpoint(path, state)

    def _read_resume_state(self, last: Path) -> dict[str, Any]:
        """last.pt's contents, checked: readable without running code, a DAE-Fuse training checkpoint with every
        ``RESUME_KEYS`` entry, of the same configuration, split and data root as this run."""
        try:
            _, state = load_checkpoint(last)
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume from {last}: {err}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"cannot resume from {last}: not a DAE-Fuse training checkpoint (format {found!r}, expected "
                f"{CHECKPOINT_FORMAT!r}); use a new --out"
            )
        saved_cfg = complete_saved_config(state["cfg"]) if isinstance(state.get("cfg"), dict) else None
        # a run without adversarial training saved no discriminators (a difference in the switch itself is a config
        # difference, reported below)
        unneeded = {"discriminators"} if saved_cfg is not None and not saved_cfg["adversarial"] else set()
        missing = [k for k in RESUME_KEYS if k not in state and k not in unneeded]
        if missing or saved_cfg is None:
            raise CheckpointError(
                f"cannot resume from {last}: it lacks {', '.join(missing) or 'a config mapping (cfg)'}; use a new --out"
            )
        saved = _resume_identity(saved_cfg, state["split"], state.get("data_root"))
        given_root = self._data_root_record() if "data_root" in state else None
        diffs = _config_differences(saved, _resume_identity(to_dict(self.cfg), self.split, given_root))
        if diffs:
            raise ConfigError(
                f"cannot resume {last} with a different configuration (use the same config or a new --out):\n  "
                + "\n  ".join(diffs)
            )
        return state

    def _load_initial_weights(self, path: Path) -> None:
        """Start from another run's generator (``model.init``): one CheckpointError when the file is not a DAE-Fuse
        checkpoint or its architecture is not the configured one."""
        _, state = read_generator_checkpoint(path, allow_unfused=True)
        source = build_generator(state, path)
        if self.cfg.model.init_map:  # another set of modalities: expand (or map) its weights onto this model's
            try:
                expanded = expand_modalities(source, self.model.cfg, dict(self.cfg.model.init_map))
            except ValueError as err:
                raise CheckpointError(f"model.init {path}: {err}") from None
            self.model.load_state_dict(expanded.state_dict())
            LOGGER.info("generator initialised from %s, modalities mapped %s", path, dict(self.cfg.model.init_map))
            return
        if source.cfg != self.model.cfg:
            ours, theirs = self.model.cfg.to_dict(), source.cfg.to_dict()
            diffs = ", ".join(f"{k}: {theirs[k]} (configured {ours[k]})" for k in ours if ours[k] != theirs[k])
            raise CheckpointError(f"model.init {path} is another architecture than the configured model: {diffs}")
        self.model.load_state_dict(source.state_dict())
        LOGGER.info("generator initialised from %s", path)

    def _resume(self) -> None:
        last = self.out_dir / "last.pt"
        if not last.is_file():
            LOGGER.info("no %s to resume from: starting a new run", last)
            return
        state = self._read_resume_state(last)
        try:
            self.model.load_state_dict(state["model"])
            if self.discriminators is not None:
                self.discriminators.load_state_dict(state["discriminators"])
            for k, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][k])
            for k, sched in self.schedulers.items():
                sched.load_state_dict(state["schedulers"][k])
            self.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot resume from {last}: its states do not fit this run ({err})") from None
        self.start_epoch = state.get("next_epoch", state["epoch"])
        self.global_step = state["global_step"]
        self.best = state["best"]
        self.history = state["history"]
        self.epoch_losses = self.history[-1]["losses"] if self.history else {}
        self.val_metrics = self.history[-1]["val"] if self.history else {}
        if self.dist.is_main:
            self._restore_best(last, state["epoch"])
            # last.pt is written before history.json: a run killed between the two left the file an epoch short.
            atomic_write_json(self.out_dir / "history.json", self.history)
        LOGGER.info("resumed %s after epoch %d", last, self.start_epoch)

    @staticmethod
    def _saved_epoch(path: Path) -> int | None:
        """The epoch a checkpoint file was saved after; None when it is missing or unreadable."""
        try:
            state = load_checkpoint(path)[1]
        except CheckpointError:
            return None
        return state.get("epoch") if isinstance(state, dict) else None

    def _restore_best(self, last: Path, last_epoch: int) -> None:
        """Make best.pt hold the best epoch that last.pt records, where an interruption left it missing or stale.

        * best.pt of the recorded epoch: nothing to do.
        * best.pt newer than last.pt: written just before an interruption kept last.pt from being written (best.pt
          goes first); that epoch is trained again, exactly, and rewrites it.
        * the recorded best epoch is last.pt's own epoch: last.pt holds the same state best.pt should (runs
          before the current write order wrote last.pt first and could be killed before best.pt), so copy it.
        * otherwise the best epoch's state is gone: forget it, so that the next validated fusion epoch writes a
          best.pt that matches the record again.
        """
        recorded = self.best.get("epoch")
        if recorded is None:
            return
        best = self.out_dir / "best.pt"
        found = self._saved_epoch(best)
        if found == recorded or (found is not None and found > last_epoch):
            return
        if recorded == last_epoch:
            atomic_write_bytes(best, last.read_bytes())
            LOGGER.warning("restored %s (best epoch %d) from %s", best, recorded, last)
            return
        LOGGER.warning(
            "%s of best epoch %d is %s and cannot be restored: the next validated fusion epoch writes a new one",
            best, recorded, "missing" if found is None else f"stale (epoch {found})",
        )
        self.best = {"metric": None, "value": None, "epoch": None}

    # -- the loop -------------------------------------------------------------------------------------------------
    def _next_epoch(self, epoch: int) -> int:
        """The epoch to train after ``epoch``: the next one, or the first of the next phase once the time budget up
        to the end of this phase is spent (``max_minutes`` shared in proportion to the phases' epochs; the seconds
        are those the history records, so a resumed run decides as the uninterrupted one would). Rank 0 decides."""
        budget = self.cfg.max_minutes
        if budget is None:
            return epoch + 1
        end = self.cfg.phase_end(epoch)
        decision = [epoch + 1]
        if self.dist.is_main:
            spent = sum(e["seconds"] for e in self.history)
            if spent >= budget * 60.0 * end / self.cfg.total_epochs:
                decision = [end]
                LOGGER.info("time budget: %.1f of %.4g min spent, phase '%s' ends after epoch %d",
                            spent / 60.0, budget, self.phase, epoch + 1)
        if self.dist.enabled:
            dist.broadcast_object_list(decision, src=0)
        return decision[0]

    def fit(self) -> TrainResult:
        t0 = time.perf_counter()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "args.yaml", dump_config(self.cfg))
        self.model.train()
        if self.discriminators is not None:
            self.discriminators.train()
        self._run_callbacks("on_train_start")
        epoch = self.start_epoch
        while epoch < self.cfg.total_epochs:
            self._train_epoch(epoch)
            epoch = self.next_epoch
        self._run_callbacks("on_train_end")
        best = self.out_dir / "best.pt"
        return TrainResult(
            out_dir=self.out_dir,
            last_checkpoint=self.out_dir / "last.pt",
            best_checkpoint=best if best.is_file() else None,
            epochs=self.cfg.total_epochs,
            final_losses=dict(self.epoch_losses),
            val_metrics=dict(self.val_metrics),
            wall_time_s=time.perf_counter() - t0,
        )

    def _train_epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        self.epoch = epoch
        self.phase = self.cfg.phase_at(epoch).name
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self._run_callbacks("on_epoch_start")
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        for batch in self.loader:
            self.step_losses = self.train_step(batch, self.phase)
            self.global_step += 1
            steps += 1
            for k, v in self.step_losses.items():
                sums[k] += v
            self._run_callbacks("on_step_end")
        fuses = PHASES.get(self.phase).fuses
        for name, sched in self.schedulers.items():
            if name != "g_fusion" or fuses:  # the fusion layers' schedule starts with phase 2 (CDDFuse)
                sched.step()
        self.epoch_losses = {k: v / max(1, steps) for k, v in sums.items()}
        if self.dist.is_main:
            self.val_metrics = self.validate()
            improved = self._update_best()
            self.history.append({
                "epoch": epoch + 1, "phase": self.phase, "losses": self.epoch_losses, "val": self.val_metrics,
                "lr_g": self.optimizers["g"].param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
            })
        self.next_epoch = self._next_epoch(epoch)
        if self.dist.is_main:
            state = self.checkpoint()
            # best.pt first: an interruption between the two writes leaves last.pt one epoch behind (that epoch is
            # trained again on resume and rewrites best.pt), never a last.pt recording a best.pt that was not written.
            if improved:
                self.save_checkpoint(self.out_dir / "best.pt", state)
            self.save_checkpoint(self.out_dir / "last.pt", state)
            atomic_write_json(self.out_dir / "history.json", self.history)
            LOGGER.info(
                "epoch %d/%d %s: %s | val %s", epoch + 1, self.cfg.total_epochs, self.phase,
                ", ".join(f"{k} {v:.4g}" for k, v in self.epoch_losses.items() if k.endswith("total")),
                ", ".join(f"{k} {v:.4g}" for k, v in self.val_metrics.items()),
            )
        self._run_callbacks("on_epoch_end")


def train(
    cfg: FusionTrainConfig,
    data_root: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    device: str = "cpu",
    resume: bool = False,
    tb_writer: Any = None,
    progress: bool = True,
    callbacks: dict[str, Sequence[Callback]] | None = None,
    split: str = "train",
) -> TrainResult:
    """Train DAE-Fuse on the pairs under ``data_root``; checkpoints, ``args.yaml``, TensorBoard go to ``out_dir``.

    ``data_root`` is one root or several, each an M3FD-layout root (trained on its ``split``, validated on its "val"
    split) or a folder of paired subfolders (``cfg.data.ir_dir`` / ``vis_dir`` say which plays which role; part is
    held out); the training pairs of every root are pooled.

    Under ``torchrun`` (WORLD_SIZE/RANK set) this runs DistributedDataParallel, one process per device
    (``cfg.data.batch_size`` is per process); rank 0 validates, logs and saves. ``resume=True`` continues from
    ``out_dir/last.pt`` if there is one (and returns at once if that run is complete).
    """
    with process_group(device):
        trainer = Trainer(
            cfg, data_root, out_dir, device=device, resume=resume, tb_writer=tb_writer, progress=progress,
            callbacks=callbacks, split=split,
        )
        return trainer.fit()


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Under torchrun, join the process group (env://; NCCL for CUDA, gloo for CPU) and leave it afterwards.

    A group the caller already initialised is used as it is and left alone.
    """
    ctx = DistContext.from_env()
    if not ctx.enabled or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo", init_method="env://")
    try:
        yield
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.training.train", description="Train DAE-Fuse (two phases).")
    parser.add_argument("--data", required=True, type=Path, nargs="+",
                        help="one or more roots, each an M3FD-layout root (its --split is used) or a folder with "
                             "paired subfolders; their training pairs are pooled")
    parser.add_argument("--out", required=True, type=Path, help="run folder: args.yaml, last.pt, best.pt, tensorboard/")
    parser.add_argument("--preset", choices=PRESETS, default="paper", help="base configuration (default: paper)")
    parser.add_argument("--config", type=Path, help="YAML file applied on top of the preset")
    parser.add_argument("--split", default="train", help="the dataset's split to train on (default: train)")
    parser.add_argument("--dataset", help="read each root through this data.datasets reader (m3fd, llvip, folder, "
                                          "synthetic, package.module:function): shortcut for data.dataset=NAME")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, help="shortcut for seed=N")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.lr_g=2e-4 data.batch_size=4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else []) + (
        [f"data.dataset={args.dataset}"] if args.dataset else [])
    try:
        cfg = load_train_config(args.config, preset=args.preset, overrides=overrides)
    except ConfigError as err:
        parser.error(str(err))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here (use --device cpu)")
    try:
        result = train(
            cfg, args.data, args.out, device=args.device, resume=args.resume, progress=not args.no_progress,
            split=args.split,
        )
    except (ConfigError, CheckpointError, DatasetError) as err:  # e.g. a bad dataset or another run's last.pt
        parser.exit(2, f"error: {err}\n")
    if DistContext.from_env().is_main:
        print(f"done in {result.wall_time_s:.1f} s: last {result.last_checkpoint}, best {result.best_checkpoint}")
        print("final losses: " + ", ".join(f"{k} {v:.4g}" for k, v in result.final_losses.items()))
        if result.val_metrics:
            print("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in result.val_metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
