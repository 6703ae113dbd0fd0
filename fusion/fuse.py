"""Fusion inference: the DAE-Fuse checkpoint fuser and folder fusion for any registered fuser.

Command line (a thin wrapper over ``fuse_folder``)::

    python -m fusion.fuse --checkpoint runs/dae_fuse/best.pt --ir DIR --vis DIR --out DIR [--device cuda]
    python -m fusion.fuse --baseline max --ir DIR --vis DIR --out DIR

Outputs are 8-bit PNGs named by the source stem (``fusion.fusers.output_path``), grey or, for colour visible
(or PET/SPECT) images, with the visible chroma restored (``fusion.fusers.fuse_pair``). Values are clipped to
0..255, never stretched. Every file is written atomically.

Library side (what the pipeline calls):

* ``CheckpointFuser(checkpoint, device)``: the Fuser protocol for a trained DAE-Fuse, registered as "dae_fuse"
  (``create_fuser("dae_fuse", checkpoint=path)``). It builds the generator only, never the discriminators.
* ``load_fuser_checkpoint(path, device)``: the same, with one clear ``CheckpointError`` for a missing file, a file
  that is not a checkpoint (or holds anything but tensors and plain data), a checkpoint of another architecture,
  or one saved before any fusion epoch; use it to validate checkpoints up front.
* ``load_checkpoint(path)``: a checkpoint file's bytes and contents, unpickled without running code from the file
  (``weights_only``); the trainer resumes through it too.
* ``fuse_folder(fuser, pairs, out_dir)``: fuse a list of pairs to PNGs, with per-image timings.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import pickle
import re
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.errors import DatasetError
from data.io import atomic_write_json, remove_stale_temps, write_image
from data.paired import find_pairs
from data.provenance import content_key
from data.types import Pair

from .dae_fuse import ARCHITECTURE, DAEFuse, DAEFuseConfig
from .fusers import FUSERS, Fuser, create_fuser, fuse_pair, output_path

LOGGER = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("ir", "vis", "mean", "max")
# Written into every folder fuse_folder fills: which fuser made its images (its cache_key).
FUSER_MARKER = ".fuser.json"

# The trainer's phases whose epochs train the fusion path (``fusion.train.PHASES`` with ``fuses=True``; a test keeps
# the two in step). Named here because importing the trainer would pull its training-only dependencies into
# inference.
FUSION_PHASES: tuple[str, ...] = ("fuse",)


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, unreadable, not DAE-Fuse's, of another architecture, or not trained
    for fusion)."""


def _numpy_globals() -> list[Any]:
    """The numpy objects a DAE-Fuse checkpoint pickles (the numpy RNG state: a uint32 array), for ``weights_only``.

    ``_reconstruct`` is taken from numpy itself and allowed under both names numpy writes it as (``numpy.core`` up
    to 1.x, ``numpy._core`` from 2.0), so a checkpoint saved under either numpy loads under the other.
    """
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
    names = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
    return [np.dtype, np.ndarray, type(np.dtype(np.uint32)), *((reconstruct, name) for name in names)]


def unpickle_checkpoint(data: bytes, path: Path) -> Any:
    """What checkpoint bytes hold, unpickled with ``weights_only=True``: tensors, plain data and the numpy RNG state.

    Nothing in the file runs: a file that needs any other Python object (a detector's ``.pt`` would import its
    package) is refused. ``path`` only names the file in the error.
    """
    if not zipfile.is_zipfile(io.BytesIO(data)):  # torch.save writes a zip archive; anything else is not one
        raise CheckpointError(f"not a PyTorch checkpoint (or a truncated one): {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refused an object: name it, without torch's advice to load the file unsafely
        refused = re.search(r"GLOBAL (\S+)", str(err))
        what = f"it needs {refused.group(1)}" if refused else str(err.__context__ or err).splitlines()[0]
        raise CheckpointError(
            f"not a DAE-Fuse checkpoint: {path} holds Python objects a DAE-Fuse checkpoint never does ({what}); "
            "nothing in it was run"
        ) from None
    except Exception as err:  # torch raises many types for a damaged archive
        raise CheckpointError(f"not a PyTorch checkpoint: {path} ({type(err).__name__}: {err})") from None


def load_checkpoint(path: str | Path) -> tuple[bytes, Any]:
    """(the file's bytes, what they hold), read once: whoever hashes the bytes describes exactly what was loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    return data, unpickle_checkpoint(data, path)


def _check_fusion_trained(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose record (``history``, else ``phase``) shows no fusion epoch: its fusion rules are
    still the initial average, so it would "fuse" without ever having been trained to. A checkpoint recording
    neither is accepted (nothing says it is untrained)."""
    history = state.get("history")
    if isinstance(history, list):
        phases = [entry.get("phase") for entry in history if isinstance(entry, dict)]
    elif "phase" in state:
        phases = [state["phase"]]
    else:
        return
    if not any(phase in FUSION_PHASES for phase in phases):
        trained = ", ".join(dict.fromkeys(map(str, phases))) or "none"
        raise CheckpointError(
            f"checkpoint {path} never trained the fusion phase (epochs trained: {len(phases)}, phases: {trained}): "
            "its fusion rules are untrained; use a checkpoint saved after a fusion epoch (best.pt), or opt in "
            "with allow_unfused=True (--allow-unfused)"
        )


def _read_checkpoint(path: Path, allow_unfused: bool = False) -> tuple[bytes, dict[str, Any]]:
    """(bytes, state) of a DAE-Fuse training checkpoint, or one CheckpointError saying why it is not usable."""
    data, state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"not a DAE-Fuse training checkpoint (no 'model' entry): {path}")
    arch = state.get("architecture")
    if arch != ARCHITECTURE:
        raise CheckpointError(f"checkpoint {path} is of architecture {arch!r}, expected {ARCHITECTURE!r}")
    if not allow_unfused:
        _check_fusion_trained(state, path)
    return data, state


def build_generator(state: dict[str, Any], path: Path) -> DAEFuse:
    """The generator of a checkpoint dict, weights loaded strictly (any mismatch is a CheckpointError)."""
    try:
        model = DAEFuse(DAEFuseConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} does not match the DAE-Fuse architecture: {err}") from None
    return model


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) on 0..255 -> (1, 1, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / np.float32(255.0))[None, None]


class CheckpointFuser:
    """A trained DAE-Fuse as a ``Fuser``: ``fuse_luma(ir, vis_y)`` on 0..255 float32 arrays of any size.

    One forward pass per pair at full resolution (the model pads to its size multiple and crops back). On CUDA it
    runs under bf16 autocast; on CPU in fp32. ``cache_key()`` is the sha256 of the checkpoint bytes plus the
    inference settings (architecture config and precision), so a retrained or differently-run model never reuses
    another's cached images. The file is read once: the weights and the key come from the same bytes, so rewriting
    the file afterwards changes neither.

    A checkpoint saved before any fusion epoch is refused unless ``allow_unfused=True``.
    """

    name = "dae_fuse"
    keeps_visible_chroma = True

    def __init__(self, checkpoint: str | Path, device: str = "cpu", allow_unfused: bool = False):
        self.checkpoint = Path(checkpoint)
        data, state = _read_checkpoint(self.checkpoint, allow_unfused)
        self.device = torch.device(device)
        self.model = build_generator(state, self.checkpoint).to(self.device).eval()
        self.precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.epoch = state.get("epoch")
        self._key = f"{self.name}:{content_key(hashlib.sha256(data).hexdigest(), self.inference_config())}"

    def inference_config(self) -> dict[str, Any]:
        return {"architecture": ARCHITECTURE, "model_config": self.model.cfg.to_dict(), "precision": self.precision}

    def cache_key(self) -> str:
        return self._key

    @torch.inference_mode()
    def fuse_tensors(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) x 2 in [0, 1] -> fused (B, 1, H, W) in [0, 1], float32."""
        ir, vis = ir.to(self.device), vis.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(ir, vis).float()

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        """ir, vis_y: float32 (H, W) on 0..255 -> fused luma float32 (H, W) on 0..255."""
        fused = self.fuse_tensors(_to_tensor(ir), _to_tensor(vis_y))
        return fused[0, 0].cpu().numpy() * np.float32(255.0)


# ``python -m fusion.fuse`` runs this file as __main__ and the CLI then imports fusion.fuse (create_fuser does):
# registering here only under the import name keeps "dae_fuse" registered exactly once.
if __name__ != "__main__":
    FUSERS.register("dae_fuse")(CheckpointFuser)


def load_fuser_checkpoint(path: str | Path, device: str = "cpu", allow_unfused: bool = False) -> CheckpointFuser:
    """A ``CheckpointFuser`` for ``path``, or one ``CheckpointError`` saying why the file cannot be used."""
    return CheckpointFuser(Path(path), device, allow_unfused)


def fuse_folder(
    fuser: Fuser, pairs: Sequence[Pair], out_dir: str | Path, *, progress: bool = True, skip_existing: bool = False
) -> dict[str, Any]:
    """Fuse every pair to ``out_dir/<stem>.png``.

    Returns ``{"per_image": {stem: seconds}, "total_seconds": float, "written": [stems], "skipped": [stems]}``.
    ``skip_existing=True`` (resuming an interrupted folder) leaves outputs that already exist; since every output
    is written atomically, an existing file is always complete. ``out_dir/.fuser.json`` records the fuser's
    ``cache_key``, and a folder fused by another fuser is never resumed (its images would be passed off as this
    fuser's). Nothing else is skipped: a pair that fails to read or fuse raises.

    Raises:
        ValueError: ``out_dir`` is a folder of source images, or holds another fuser's images under
            ``skip_existing``.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    sources = {p.parent.resolve() for pair in pairs for p in (pair.ir, pair.vis)}
    if out_dir.resolve() in sources:
        raise ValueError(f"output folder {out_dir} holds source images: fusing into it would overwrite them")
    marker, key = out_dir / FUSER_MARKER, fuser.cache_key()
    if skip_existing and marker.is_file():
        previous = json.loads(marker.read_text()).get("cache_key")
        if previous != key:
            raise ValueError(f"{out_dir} holds images of another fuser ({previous}); resume only the same fuser "
                             f"({key}), or fuse into another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # half-written images of a killed run (SIGKILL skips every cleanup)
    atomic_write_json(marker, {"cache_key": key})
    per_image: dict[str, float] = {}
    written, skipped = [], []
    t0 = time.perf_counter()
    for pair in tqdm(pairs, desc=f"fuse {getattr(fuser, 'name', 'fuser')}", disable=not progress, unit="pair"):
        target = output_path(out_dir, pair.stem)
        if skip_existing and target.is_file():
            skipped.append(pair.stem)
            continue
        t = time.perf_counter()
        write_image(target, fuse_pair(fuser, pair))
        per_image[pair.stem] = time.perf_counter() - t
        written.append(pair.stem)
    if skipped:
        LOGGER.info("kept %d existing outputs in %s", len(skipped), out_dir)
    return {"per_image": per_image, "total_seconds": time.perf_counter() - t0, "written": written, "skipped": skipped}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.fuse", description="Fuse a folder of image pairs.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a DAE-Fuse training checkpoint (last.pt / best.pt)")
    source.add_argument("--baseline", choices=BASELINES, help="a simple fuser instead of a model")
    parser.add_argument("--ir", required=True, type=Path,
                        help="infrared folder (medical: CT beside MRI; MRI beside colour PET/SPECT)")
    parser.add_argument("--vis", required=True, type=Path,
                        help="visible folder, whose colour is kept (medical: MRI beside CT; PET/SPECT beside MRI)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (PNG per source stem)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (checkpoint only)")
    parser.add_argument("--allow-unfused", action="store_true",
                        help="accept a checkpoint saved before any fusion epoch (its fusion rules are untrained)")
    parser.add_argument("--skip-existing", action="store_true", help="keep outputs already in --out (resume)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        pairs = find_pairs(args.ir, args.vis)
        fuser = (load_fuser_checkpoint(args.checkpoint, args.device, args.allow_unfused) if args.checkpoint
                 else create_fuser(args.baseline))
    except (DatasetError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        report = fuse_folder(fuser, pairs, args.out, progress=not args.no_progress, skip_existing=args.skip_existing)
    except (ValueError, OSError) as err:  # --out is a source folder, another fuser's folder, or not writable
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = len(report["written"])
    mean = report["total_seconds"] / n if n else 0.0
    print(f"{n} fused, {len(report['skipped'])} kept, into {args.out} ({mean:.3f} s per pair)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
