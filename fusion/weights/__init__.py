"""The released DAE-Fuse: generator weights trained on real driving scenes (see MODEL_CARD.md beside this file).

``RELEASED_CHECKPOINT`` is the one tracked ``.pt`` of the repository, written by
``python -m fusion.models.checkpoint release RUN/best.pt fusion/weights/dae_fuse_release.pt`` (generator only, bfloat16
storage) and loaded like any checkpoint, with ``weights_only`` (``fusion.models.checkpoint``).

``TRIBAND_CHECKPOINT``: the three-band model (visible, near-infrared, thermal: ``modalities`` vis, nir, lwir),
fine-tuned from the release on synthetic three-band scenes and real two-band pairs (``fusion/configs/triband.yaml``;
MODEL_CARD.md, "Three-band model", says what it does and does not do). Not a pipeline row: the pipeline's datasets
have two bands.
"""
from __future__ import annotations

from pathlib import Path

RELEASED_CHECKPOINT = Path(__file__).resolve().with_name("dae_fuse_release.pt")
RELEASED_NAME = "dae_fuse_release"  # its row in the pipeline's table
TRIBAND_CHECKPOINT = Path(__file__).resolve().with_name("dae_fuse_triband.pt")
