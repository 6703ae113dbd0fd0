"""The DAE-Fuse checkpoint format: one module that the trainer writes through and inference reads through.

* ``save_checkpoint(path, state)``: written atomically (temp file, then rename), so a file at ``path`` is whole.
* ``load_checkpoint(path)``: the file's bytes and contents, unpickled with ``weights_only`` (nothing in the file
  runs; a detector's ``.pt`` is refused).
* ``read_generator_checkpoint(path)``: the same, validated for fusing: a ``model`` entry, this architecture, and
  at least one fusion epoch (``fusion_epochs``, which the trainer records, so inference needs no phase names).
* ``build_generator(state, path)``: the generator of a checkpoint, weights loaded strictly.

A training checkpoint (``CHECKPOINT_FORMAT``) also holds what resuming needs (``RESUME_KEYS``); a released
checkpoint (``RELEASE_FORMAT``) holds only the generator, in half precision.
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.io import atomic_path

from .dae_fuse import ARCHITECTURE, DAEFuse, DAEFuseConfig

CHECKPOINT_FORMAT = "fusebench.dae_fuse/1"
RELEASE_FORMAT = "fusebench.dae_fuse.release/1"
# What resuming needs from last.pt ("data_root" is optional: checkpoints written before it was recorded lack it).
RESUME_KEYS: tuple[str, ...] = (
    "cfg", "split", "model", "discriminators", "optimizers", "schedulers", "scaler", "epoch", "global_step", "best",
    "history", "rng",
)
# Checkpoints written before ``fusion_epochs`` was recorded say only which phase each epoch was: these phases
# trained the fusion path (``fusion.training.train.PHASES`` with ``fuses=True``; a test keeps the two in step).
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


def fusion_epoch_count(state: dict[str, Any]) -> int | None:
    """How many epochs trained the fusion path: ``fusion_epochs`` where the trainer recorded it, else counted from
    the per-epoch ``history`` (or the last ``phase``) of an older checkpoint; None when the file records neither."""
    if isinstance(state.get("fusion_epochs"), int):
        return state["fusion_epochs"]
    history = state.get("history")
    if isinstance(history, list):
        return sum(isinstance(e, dict) and e.get("phase") in FUSION_PHASES for e in history)
    if "phase" in state:
        return int(state["phase"] in FUSION_PHASES)
    return None


def _check_fusion_trained(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint that records no fusion epoch: its fusion rules are still the initial average, so it
    would "fuse" without ever having been trained to. A checkpoint recording nothing is accepted (nothing says it
    is untrained)."""
    if fusion_epoch_count(state) != 0:
        return
    history = state.get("history")
    phases = ([e.get("phase") for e in history if isinstance(e, dict)] if isinstance(history, list)
              else [state.get("phase")])
    trained = ", ".join(dict.fromkeys(map(str, phases))) or "none"
    raise CheckpointError(
        f"checkpoint {path} never trained the fusion phase (epochs trained: {len(phases)}, phases: {trained}): "
        "its fusion rules are untrained; use a checkpoint saved after a fusion epoch (best.pt), or opt in "
        "with allow_unfused=True (--allow-unfused)"
    )


def read_generator_checkpoint(path: str | Path, allow_unfused: bool = False) -> tuple[bytes, dict[str, Any]]:
    """(bytes, state) of a DAE-Fuse checkpoint (training or released), or one CheckpointError saying why it is not
    usable for fusing."""
    path = Path(path)
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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a reader (or a resumed run) never sees a half-written file."""
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)


def release_state(state: dict[str, Any]) -> dict[str, Any]:
    """A released checkpoint from a training one: the generator only (no discriminators, optimisers or RNG), its
    floating-point weights stored in bfloat16 (half the bytes; inference computes in fp32 on CPU), and the
    record a model card needs (config, data, epochs, best epoch, versions)."""
    weights = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in state["model"].items()}
    keep = ("model_name", "model_config", "epoch", "best", "history", "cfg", "split", "data_root", "versions")
    return {"format": RELEASE_FORMAT, "architecture": state["architecture"], "model": weights,
            "fusion_epochs": fusion_epoch_count(state), **{k: state[k] for k in keep if k in state}}


def main(argv: list[str] | None = None) -> int:
    """``python -m fusion.models.checkpoint release TRAINING.pt RELEASED.pt``: write a released checkpoint."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m fusion.models.checkpoint", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    release = sub.add_parser("release", help="generator only, bfloat16 storage, from a training checkpoint")
    release.add_argument("checkpoint", type=Path)
    release.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        _, state = read_generator_checkpoint(args.checkpoint)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, release_state(state))
    _, check = read_generator_checkpoint(args.out)  # what was written loads as a fuser's checkpoint would
    build_generator(check, args.out)
    print(f"released {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, epoch {state.get('epoch')}, "
          f"best {state.get('best')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
