"""Does the fusion still help when the weather turns? Score every candidate's trained detector on corrupted inputs.

For each corruption and severity (``data.corruptions``) the evaluation split's sources are corrupted once
(deterministic per image and seed, cached by content), every candidate fuses the corrupted pairs with its own
fuser, and each detector seed's kept checkpoint is scored again under both protocols: nothing is retrained, so the
number says how the deployed system degrades. A pre-fused folder cannot fuse new inputs and is left out (noted).

The intervals come from one paired bootstrap per corruption and severity over the same evaluation images: each
candidate's deployed mAP@50, its drop from clean (corrupted minus clean, same resampled images) and its gain over the
better single modality under that corruption.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data.io import atomic_dir, read_ir, read_record, read_visible, write_image, write_record
from data.provenance import content_key
from data.types import Pair

LOGGER = logging.getLogger(__name__)
RECORD = ".corrupted.json"
SINGLE_MODALITY = ("ir", "vis")


def corrupted_pairs(cache_root: Path, dataset, ids: list[str], corruption: str, severity: int, seed: int,
                    sources_key: str, force: bool = False) -> list[Pair]:
    """The evaluation pairs with ``corruption`` applied, written once into a content-keyed folder (atomic);
    ``force`` (``--force``) writes them again, the new folder replacing the old one whole."""
    from data.corruptions import corrupt_pair

    key = content_key("corrupt", corruption, severity, seed, sources_key, ids)
    folder = cache_root / "corrupted" / key[:16]
    if force or read_record(folder / RECORD, key) is None:
        with atomic_dir(folder) as tmp:
            (tmp / "ir").mkdir()
            (tmp / "vis").mkdir()
            for image_id in ids:
                vis_y, vis_bgr = read_visible(dataset.vis_path(image_id))
                vis = vis_bgr if vis_bgr is not None else vis_y.astype("uint8")
                ir, vis = corrupt_pair(corruption, severity, read_ir(dataset.ir_path(image_id)), vis, image_id, seed)
                write_image(tmp / "ir" / f"{image_id}.png", ir)
                write_image(tmp / "vis" / f"{image_id}.png", vis)
            write_record(tmp / RECORD, key, {"corruption": corruption, "severity": severity, "seed": seed,
                                             "n_images": len(ids)})
    return [Pair(i, folder / "ir" / f"{i}.png", folder / "vis" / f"{i}.png") for i in ids], key


def robustness_intervals(clean: dict[str, list[Any]], corrupted: dict[str, list[Any]], image_ids: list[Any],
                         n_resamples: int, seed: int) -> dict[str, Any]:
    """Intervals for one corruption and severity: per candidate its deployed mAP@50, its drop from clean and its
    gain over the better single modality under the corruption (``clean``/``corrupted``: name -> matches per seed)."""
    from detection.bootstrap import PairedBootstrap

    boot = PairedBootstrap(image_ids, n_resamples, seed)
    for name, matches in corrupted.items():
        boot.add(name, matches)
        if name in clean:
            boot.add(f"clean/{name}", clean[name])
    out: dict[str, Any] = {"map50": {n: boot.interval(n).to_dict() for n in corrupted},
                           "drop": {n: boot.gain(n, f"clean/{n}").to_dict() for n in corrupted if n in clean}}
    singles = [n for n in corrupted if n in SINGLE_MODALITY]
    if singles:
        reference = max(singles, key=lambda n: boot.points[n])
        out["reference"] = reference
        out["gains"] = {n: boot.gain(n, reference).to_dict() for n in corrupted if n != reference}
    return out
