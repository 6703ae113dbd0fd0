"""Datasets by name: ``load_dataset("llvip", root, **options)`` -> a validated :class:`Dataset`.

Readers:

* ``m3fd``: M3FD's native layout (``Ir/``, ``Vis/``, ``Annotation/``, ``meta/``), :mod:`data.m3fd`;
* ``llvip``: LLVIP's layout (``infrared/{train,test}``, ``visible/{train,test}``, ``Annotations/``),
  :mod:`data.datasets.llvip`;
* ``synthetic``: the folder ``python -m data.synthetic`` writes, :mod:`data.datasets.synthetic`;
* ``folder``: a team's own data, one folder per modality, VOC or YOLO labels, :mod:`data.datasets.folder`.

A reader is a function ``load(root, **options) -> CheckedDataset`` that lists what is on disk and hands it to
:func:`data.datasets.checks.build_dataset`, which checks every reader's data the same way. A new reader is one
new file: name it on the command line as ``package.module:function``, or publish it from an installed package
under the ``fusebench.datasets`` entry-point group; a built-in one also gets a line in :data:`BUILTIN`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..registry import Registry
from .base import CheckedDataset, Dataset, format_summary

__all__ = ["BUILTIN", "DATASETS", "CheckedDataset", "Dataset", "DatasetSpecError", "add_dataset_arguments",
           "dataset_from_args", "dataset_names", "format_summary", "load_dataset", "parse_options", "reader"]

ENTRY_POINT_GROUP = "fusebench.datasets"
DEFAULT_DATASET = "m3fd"
# name -> "module:function"; imported only when that dataset is loaded.
BUILTIN: dict[str, str] = {
    "m3fd": "data.m3fd:load_m3fd",
    "llvip": "data.datasets.llvip:load_llvip",
    "synthetic": "data.datasets.synthetic:load_synthetic",
    "folder": "data.datasets.folder:load_folder",
}
DATASETS: Registry[str] = Registry("dataset")
for _name, _target in BUILTIN.items():
    DATASETS.register(_name)(_target)


class DatasetSpecError(ValueError):
    """A dataset cannot be loaded as asked: an unknown reader name, a reader that does not import, an option the
    reader does not take."""


def _installed() -> None:
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in DATASETS:
            DATASETS.register(entry.name)(entry.value)


def dataset_names() -> list[str]:
    """Every reader name: the built-in ones and those installed packages publish."""
    _installed()
    return DATASETS.names()


def reader(name: str) -> Callable[..., CheckedDataset]:
    """The reader function of a registered name or of a ``package.module:function`` path."""
    if ":" not in name:
        if name not in DATASETS:
            _installed()
        if name not in DATASETS:
            raise DatasetSpecError(f"unknown dataset '{name}'; known: {', '.join(DATASETS.names())} "
                                   "(or give a reader as package.module:function)")
        target = DATASETS.get(name)
    else:
        target = name
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as err:  # noqa: BLE001 - whatever the reader's import raises, name the reader
        raise DatasetSpecError(f"dataset reader {target} does not import: {type(err).__name__}: {err}") from err
    if not callable(obj):
        raise DatasetSpecError(f"dataset reader {target} is not callable (a {type(obj).__name__})")
    return obj


def load_dataset(name: str, root: str | Path, **options: Any) -> CheckedDataset:
    """Read and validate the dataset at ``root`` with the reader ``name`` (``"m3fd"``, ``"llvip"``,
    ``"synthetic"``, ``"folder"``, an installed one, or ``package.module:function``).

    ``options`` are the reader's keyword options (every reader takes ``seed`` and ``validate``; see each reader).

    Raises:
        DatasetSpecError: unknown reader, or an option it does not take (the message lists those it takes).
        data.errors.DatasetError: the data failed the checks; every problem named.
    """
    load = reader(name)
    accepted = _options_of(load)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise DatasetSpecError(f"dataset '{name}' takes no option {', '.join(unknown)}; it takes: "
                               f"{', '.join(accepted) or 'none'}")
    return load(Path(root), **options)


def _options_of(load: Callable[..., Any]) -> list[str] | None:
    """The keyword options a reader takes; None when it takes any (``**kwargs``)."""
    params = list(inspect.signature(load).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def parse_options(tokens: Sequence[str]) -> dict[str, Any]:
    """``["seed=3", "modalities=ir,vis,nir"]`` -> ``{"seed": 3, "modalities": "ir,vis,nir"}`` (values read as
    YAML scalars, so numbers and booleans arrive typed)."""
    from data.config import parse_key_values

    return parse_key_values(tokens, DatasetSpecError, "dataset option")


def add_dataset_arguments(parser: argparse.ArgumentParser, *, root_flags: Sequence[str] = ("--root", "--data"),
                          root_required: bool = True, default: str = DEFAULT_DATASET) -> None:
    """Add ``--dataset NAME``, the root (``--root``/``--data``) and ``--dataset-option KEY=VALUE`` to a CLI;
    :func:`dataset_from_args` loads what they say."""
    parser.add_argument("--dataset", default=default, metavar="NAME",
                        help=f"dataset reader: {', '.join(BUILTIN)}, an installed one, or package.module:function "
                             f"(default {default})")
    parser.add_argument(*root_flags, dest="root", type=Path, required=root_required, metavar="DIR",
                        help="the dataset folder")
    parser.add_argument("--dataset-option", dest="dataset_options", action="append", default=[],
                        metavar="KEY=VALUE", help="a reader option, e.g. modalities=ir,vis,nir (repeatable)")


def dataset_from_args(args: argparse.Namespace, **options: Any) -> CheckedDataset:
    """Load the dataset that :func:`add_dataset_arguments`' options name; ``options`` are added to the
    ``--dataset-option`` ones (the command line wins)."""
    return load_dataset(args.dataset, args.root, **{**options, **parse_options(args.dataset_options)})
