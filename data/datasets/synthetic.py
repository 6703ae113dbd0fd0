"""Reader for the built-in SYNTHETIC scenes (the folder ``python -m data.synthetic --out DIR`` writes).

The folder has M3FD's layout (``Ir/``, ``Vis/``, ``Annotation/``, ``meta/``; see :mod:`data.m3fd`), M3FD's six
classes and scenarios, and the generator's ``synthetic.json``. Extra bands the generator was asked for are
further modalities: ``Nir/`` (``--nir``) is ``nir``. The split is the generator's ``meta/{train,val,test}.txt``
(whole scenes), read like M3FD's.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..m3fd import IR_DIR, VIS_DIR, find_m3fd
from ..splits import DEFAULT_BLOCK_SIZE, DEFAULT_FRACTIONS, SplitRule
from .base import CheckedDataset
from .checks import build_dataset

NAME = "synthetic"
PARAMS_FILE = "synthetic.json"  # the generator's marker (data.synthetic.PARAMS_FILE), written last
# modality -> folder of the bands the generator may add beside Ir/ and Vis/.
EXTRA_BANDS: dict[str, str] = {"nir": "Nir"}


def load_synthetic(
    root: str | Path,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    validate: bool = True,
) -> CheckedDataset:
    """Read and validate a synthetic folder; modalities ``ir``, ``vis`` and each extra band present.

    ``seed``, ``fractions`` and ``block_size`` only matter when the generator's split lists were removed.

    Raises:
        DatasetError: not a folder the generator completed, or any problem the shared checks find.
    """
    root = Path(root)
    if not (root / PARAMS_FILE).is_file():
        raise DatasetError(str(root), [f"no {PARAMS_FILE}: not a folder written (completely) by the synthetic "
                                       "generator; make one with python -m data.synthetic --out DIR"])
    folders = {"ir": IR_DIR, "vis": VIS_DIR, **{m: f for m, f in EXTRA_BANDS.items() if (root / f).is_dir()}}
    found = find_m3fd(root, name=NAME, folders=folders)
    rule = SplitRule(seed=seed, fractions=fractions, block_size=block_size, given_method="meta-lists")
    return build_dataset(found, rule, validate=validate)
