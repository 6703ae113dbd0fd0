"""The DAE-Fuse checkpoint fuser, registered as ``dae_fuse``: ``create_fuser("dae_fuse", checkpoint=path)``
(``fusion.fusers.catalog``), or ``load_fuser_checkpoint(path, device)`` to validate a checkpoint up front.

* ``CheckpointFuser(checkpoint, device, roles=None)``: the Fuser protocol for a trained DAE-Fuse. It builds the
  generator only, never the discriminators. Its roles are the checkpoint's modalities (``ir`` and ``vis`` for the
  release); ``roles={"ir": "lwir"}`` fuses data whose modalities are named otherwise; any other set of modalities
  is refused with one ``FuserInputError``.
* ``load_fuser_checkpoint(path, device)``: the same, with one clear ``CheckpointError`` for a missing file, a file
  that is not a checkpoint (or holds anything but tensors and plain data), a checkpoint of another architecture,
  or one saved before any fusion epoch. The format itself (read, write, validate) is
  ``fusion.models.checkpoint``'s, shared with the trainer.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from data.provenance import content_key

from fusion.models.checkpoint import build_generator, read_generator_checkpoint
from fusion.models.dae_fuse import ARCHITECTURE
from fusion.models.inference import for_inference

from .base import FUSERS, INPUT_DOMAIN, FuserInputError, FuserSpecError, modality_set_problem


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) on 0..255 -> (1, 1, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / np.float32(255.0))[None, None]


class CheckpointFuser:
    """A trained DAE-Fuse as a ``Fuser``: ``fuse(images)`` with the two roles ``ir`` and ``vis`` (or the modality
    names ``roles`` maps them to), float32 arrays on 0..255 of any size; ``fuse_luma(ir, vis_y)`` is the same by
    position.

    Which modalities it takes is declared here, by name (``ROLES``, ``modalities``, ``check_sources``); the model
    is called in one place, ``fuse_tensors`` (roles in ``ROLES`` order), so a model with more inputs changes
    ``ROLES`` and that method only.

    One forward pass per pair at full resolution (the model pads to its size multiple and crops back), by
    ``inference_model`` (``fusion.models.inference``: the same outputs as ``model`` up to float rounding, less memory
    traffic). On CUDA it runs under bf16 autocast; on CPU in fp32. ``cache_key()`` is the sha256 of the checkpoint
    bytes plus the inference settings (architecture config and precision), so a retrained or differently-run model
    never reuses another's cached images. The file is read once: the weights and the key come from the same bytes,
    so rewriting the file afterwards changes neither.

    A checkpoint saved before any fusion epoch is refused unless ``allow_unfused=True``.
    """

    name = "dae_fuse"
    keeps_visible_chroma = True
    # The model's inputs by role, in the order its forward takes them.
    ROLES: ClassVar[tuple[str, ...]] = ("ir", "vis")

    def __init__(self, checkpoint: str | Path, device: str = "cpu", allow_unfused: bool = False,
                 roles: Mapping[str, str] | None = None):
        self.checkpoint = Path(checkpoint)
        data, state = read_generator_checkpoint(self.checkpoint, allow_unfused)
        self.device = torch.device(device)
        self.model = build_generator(state, self.checkpoint).to(self.device).eval()
        # the roles are the checkpoint's modalities (the release: ir, vis; a three-band model: e.g. vis, nir, lwir)
        self.ROLES = tuple(self.model.modalities)
        unknown = sorted(set(roles or {}) - set(self.ROLES))
        if unknown:
            raise FuserSpecError(f"dae_fuse roles: {', '.join(unknown)} is no role of this model; its roles are "
                                 f"{', '.join(self.ROLES)} (e.g. roles={{ir: lwir}})")
        # role -> modality name of the data; unmapped roles keep their own name
        self.roles: dict[str, str] = {role: str((roles or {}).get(role, role)) for role in self.ROLES}
        if len(set(self.roles.values())) != len(self.roles):
            raise FuserSpecError(f"dae_fuse roles {self.roles}: two roles are mapped to one modality")
        self.modalities: tuple[str, ...] = tuple(self.roles.values())
        self.inference_model = for_inference(self.model)  # what fusing runs; ``model`` keeps the checkpoint's layout
        self.precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.epoch = state.get("epoch")
        self._key = f"{self.name}:{content_key(hashlib.sha256(data).hexdigest(), self.inference_config())}"

    def inference_config(self) -> dict[str, Any]:
        return {"architecture": ARCHITECTURE, "model_config": self.model.cfg.to_dict(), "precision": self.precision,
                "inputs": INPUT_DOMAIN}

    def cache_key(self) -> str:
        return self._key  # the role names are not in it: they choose inputs, the images follow the same weights

    def check_sources(self, names: Sequence[str]) -> list[str]:
        """The one clear refusal of a set of modalities other than this model's roles."""
        if set(names) == set(self.modalities):
            return []
        mapped = ", ".join(f"{role}={name}" for role, name in self.roles.items() if role != name)
        return [modality_set_problem(self.name, self.modalities, names)
                + ("" if not mapped else f"; roles mapped: {mapped}")
                + "; map its roles to your modality names with roles={"
                + ", ".join(f"{role}: NAME" for role in self.ROLES) + "}"]

    def fuse(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """{modality name: float32 (H, W) on 0..255} with exactly this model's modalities -> fused luma on 0..255."""
        problems = self.check_sources(list(images))
        if problems:
            raise FuserInputError(problems[0])
        return self.fuse_luma(*(images[self.roles[role]] for role in self.ROLES))

    @torch.inference_mode()
    def fuse_tensors(self, *sources: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) per role, in ``ROLES`` order (two-band: ir, vis), in [0, 1] -> fused (B, 1, H, W) in [0, 1],
        float32.

        Runs ``inference_model`` (``fusion.models.inference.for_inference``: BN folded, channels-last on CPU; the same
        outputs as ``model`` up to float rounding) in chunks of ``FRAMES_PER_FORWARD[device]`` frames.
        """
        chunk = self.FRAMES_PER_FORWARD.get(self.device.type) or sources[0].shape[0]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            parts = [self.inference_model(*(x.to(self.device) for x in xs)).float()
                     for xs in zip(*(x.split(chunk) for x in sources))]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def fuse_luma(self, *images: np.ndarray) -> np.ndarray:
        """One float32 (H, W) on 0..255 per role in ``ROLES`` order (two-band: ir, vis_y) -> fused luma float32
        (H, W) on 0..255."""
        fused = self.fuse_tensors(*(_to_tensor(image) for image in images))
        return fused[0, 0].cpu().numpy() * np.float32(255.0)

    # Frames per forward pass, by device (None: the whole batch). On the 2-core CPU one frame at a time is the
    # fastest per frame: dae_fuse_s at 1024x768, channels-last, 2.09 / 1.90 / 1.41 frames/s with 1 / 2 / 4 frames
    # per forward (the full-resolution maps of several frames overflow the caches); a GPU wants the whole batch.
    FRAMES_PER_FORWARD: ClassVar[dict[str, int | None]] = {"cpu": 1}

    def fuse_luma_batch(self, irs: Sequence[np.ndarray] | np.ndarray, vis_ys: Sequence[np.ndarray] | np.ndarray
                        ) -> np.ndarray:
        """Several frames at once (video): N infrared images and N visible lumas, float32 (H, W) on 0..255, all
        one size (sequences or (N, H, W) arrays) -> fused lumas (N, H, W) float32 on 0..255.

        The same model, precision and scaling as ``fuse_luma``, so the result equals ``fuse_luma`` frame by frame
        up to float rounding (a batch changes the summation order only); one host-to-device transfer and one back
        per call, in as many forward passes as ``FRAMES_PER_FORWARD`` says.
        """
        ir = torch.from_numpy(np.stack(irs).astype(np.float32, copy=False) / np.float32(255.0))[:, None]
        vis = torch.from_numpy(np.stack(vis_ys).astype(np.float32, copy=False) / np.float32(255.0))[:, None]
        fused = self.fuse_tensors(ir.to(self.device), vis.to(self.device))
        return fused[:, 0].cpu().numpy() * np.float32(255.0)


FUSERS.register("dae_fuse")(CheckpointFuser)


def load_fuser_checkpoint(path: str | Path, device: str = "cpu", allow_unfused: bool = False) -> CheckpointFuser:
    """A ``CheckpointFuser`` for ``path``, or one ``CheckpointError`` saying why the file cannot be used."""
    return CheckpointFuser(Path(path), device, allow_unfused)
