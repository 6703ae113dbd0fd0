"""Every fuser by name: ``create_fuser(name, device=..., **kwargs)`` and ``fuser_names()``, the one way callers
build a fuser. It sits above the modules that define fusers and below folder fusion (``fusion.fusers.fuse``).

Where fusers come from:

* the registry ``FUSERS`` (``fusion.fusers.base``), which every module defining fusers fills when it is imported:
  the simple rules (``fusion.fusers.baselines``, imported with this module) and ``dae_fuse``
  (``fusion.fusers.dae_fuse``, imported by ``fuser_names`` and by ``create_fuser`` for a name not yet registered:
  it imports torch, ``create_fuser("max")`` does not);
* every entry point of the group ``fusebench.fusers`` that an installed package declares, registered at that same
  moment and imported only when its fuser is built, e.g. in the package's pyproject.toml::

      [project.entry-points."fusebench.fusers"]
      cddfuse = "cddfuse_wrapper:make_fuser"

* a ``package.module:factory`` path, so a user wraps any network without packaging it. A new learned method is
  one file with a factory returning a fuser; nothing in ``fusion`` is edited. The module is imported by its dotted name,
  so it must be importable from the process that fuses: installed, or in a folder on ``PYTHONPATH`` (the current
  directory is on it for ``python -m fusion.fusers.fuse`` and ``python -m pipelines...`` started there).

**What a factory receives**: its ``key=value`` arguments as keywords (values read as YAML scalars: numbers,
booleans, strings, ``{a: b}`` mappings), plus ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, from ``--device``)
when its signature has a ``device`` parameter or ``**kwargs``; a factory without either is not given it. What a
factory raises reaches ``create_fuser``'s caller unchanged; ``python -m fusion.fusers.fuse`` and the pipeline report it
as one line naming the fuser (exit status 2), never a traceback.

A plug-in's fuser needs only ``fuse`` (or the older ``fuse_luma(ir, vis_y)``, adapted to the set {ir, vis}:
``LumaPairAdapter``); ``name``, ``modalities`` (None) and ``keeps_visible_chroma`` (True) default, and without
its own ``cache_key`` one is derived from the factory, its arguments, the device it was given, the bytes of the
factory's source file, the size and modification time of every argument that names a file, and of every file
under an argument that names a folder (``repo=DIR``; hidden entries and ``__pycache__`` left out), so a changed
wrapper, weights file or repository is fused again.

A folder of another method's fused images is a candidate too, but no fuser by name (``fusion.fusers.prefused``).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data.provenance import content_key, file_fingerprint, files_fingerprint

from . import baselines  # noqa: F401  (importing it registers the simple fusers)
from .base import FUSERS, INPUT_DOMAIN, TWO_BAND, Fuser, FuserInputError, FuserSpecError, UnknownFuserError

ENTRY_POINT_GROUP = "fusebench.fusers"


def _register_dae_fuse_and_installed() -> None:
    """Register what importing this module does not: DAE-Fuse (its module imports torch) and the installed
    packages' entry points (once each; a name already registered keeps its fuser)."""
    from . import dae_fuse  # noqa: F401  (importing it registers the checkpoint fuser)

    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in FUSERS:
            FUSERS.register(entry.name)(_EntryPointFactory(entry))


def accepts_device(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` takes a ``device`` keyword: a parameter of that name, or ``**kwargs``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or extension callable without a signature
        return False
    return any(p.name == "device" and p.kind is not p.POSITIONAL_ONLY or p.kind is p.VAR_KEYWORD for p in parameters)


def factory_arguments(factory: Callable[..., Any], kwargs: Mapping[str, Any], device: str | None) -> dict[str, Any]:
    """What ``factory`` is called with: ``kwargs``, plus ``device`` when one is given, the factory takes it and the
    arguments do not already name one."""
    call = dict(kwargs)
    if device is not None and "device" not in call and accepts_device(factory):
        call["device"] = device
    return call


class _EntryPointFactory:
    """A registry entry for an installed plug-in: its module is imported only when the fuser is built."""

    def __init__(self, entry: importlib.metadata.EntryPoint):
        self.entry = entry

    def __call__(self, device: str | None = None, **kwargs: Any) -> Fuser:
        try:
            factory = self.entry.load()
        except Exception as err:  # noqa: BLE001 - whatever the plug-in's import raises, name the plug-in
            raise FuserSpecError(f"fuser '{self.entry.name}' ({ENTRY_POINT_GROUP} entry point {self.entry.value}) "
                                 f"does not load: {type(err).__name__}: {err}") from err
        call = factory_arguments(factory, kwargs, device)
        return as_fuser(factory(**call), self.entry.name, self.entry.value, factory, call)


def parse_fuser_args(tokens: list[str]) -> dict[str, Any]:
    """``["weights=w.pth", "scale=0.5"]`` -> ``{"weights": "w.pth", "scale": 0.5}`` (values read as YAML scalars)."""
    from data.config import parse_key_values

    return parse_key_values(tokens, FuserSpecError, "fuser argument")


def fuser_names() -> list[str]:
    """Every registered fuser name (built-in and installed plug-ins), e.g. for a CLI's choices."""
    _register_dae_fuse_and_installed()
    return FUSERS.names()


def import_factory(target: str) -> Callable[..., Any]:
    """The callable named by ``package.module:attribute`` (the attribute may be dotted)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise FuserSpecError(f"'{target}' is not a factory path: use package.module:factory")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as err:  # noqa: BLE001 - an import error of the user's module, named as such
        raise FuserSpecError(f"factory {target} does not import: {type(err).__name__}: {err} (the module must be "
                             "importable: installed, or in a folder on PYTHONPATH)") from err
    if not callable(obj):
        raise FuserSpecError(f"factory {target} is not callable (a {type(obj).__name__})")
    return obj


def create_fuser(name: str, *, device: str | None = None, **kwargs) -> Fuser:
    """Build a fuser: a registered name (``create_fuser("mean")``, ``create_fuser("dae_fuse", checkpoint=path)``,
    an installed plug-in) or a factory path (``create_fuser("my_pkg.wrap:make", weights="w.pth")``).

    ``device`` reaches every factory that takes one (module docstring). What a factory raises reaches the caller
    unchanged; the CLIs report it as one line naming the fuser.
    """
    if ":" in name:
        factory = import_factory(name)
        call = factory_arguments(factory, kwargs, device)
        return as_fuser(factory(**call), name.rpartition(".")[2].replace(":", "."), name, factory, call)
    if name not in FUSERS:
        _register_dae_fuse_and_installed()
    try:
        factory = FUSERS.get(name)
    except KeyError as err:
        raise UnknownFuserError(err.args[0] + " (or give a factory as package.module:factory)") from None
    return factory(**factory_arguments(factory, kwargs, device))


def _source_digest(obj: Any) -> str | None:
    """sha256 of the file that defines ``obj``, or None when it has none (a builtin, a REPL function)."""
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return hashlib.sha256(Path(source).read_bytes()).hexdigest() if source and Path(source).is_file() else None


def folder_fingerprint(folder: str | Path) -> str:
    """One key over the size and modification time of every file under ``folder``, hidden entries and
    ``__pycache__`` left out (importing a plug-in from the folder writes bytecode there, which is no change)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts))
    return files_fingerprint(files)


def argument_fingerprints(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """For each argument naming an existing file or folder: its fingerprint (what a derived cache key follows)."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if not isinstance(value, (str, Path)) or not str(value):
            continue
        path = Path(value)
        try:
            if path.is_file():
                out[key] = file_fingerprint(path)
            elif path.is_dir():
                out[key] = ["folder", str(path.resolve()), folder_fingerprint(path)]
        except OSError:  # e.g. a name too long to be a path: an argument like any other
            continue
    return out


class PluginFuser:
    """A plug-in's fuser completed to the ``Fuser`` protocol: the defaults the module docstring gives."""

    def __init__(self, inner: Any, name: str, key: str):
        self.inner = inner
        self.name = str(getattr(inner, "name", None) or name)
        self.keeps_visible_chroma = bool(getattr(inner, "keeps_visible_chroma", True))
        modalities = getattr(inner, "modalities", None)
        self.modalities = None if modalities is None else tuple(modalities)
        self._key = key
        if callable(getattr(inner, "check_sources", None)):
            self.check_sources = inner.check_sources
        # several frames per call, for video (fusion.video.streaming)
        if callable(getattr(inner, "fuse_luma_batch", None)):
            self.fuse_luma_batch = inner.fuse_luma_batch

    def _checked(self, fused: Any, shape: tuple[int, ...]) -> np.ndarray:
        fused = np.asarray(fused, dtype=np.float32)
        if fused.shape != shape:
            raise FuserInputError(f"fuser {self.name} returned an image of shape {fused.shape} for inputs of {shape}")
        return fused

    def fuse(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._checked(self.inner.fuse(images), next(iter(images.values())).shape)

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        """The two-band form, for callers by position: ``fuse({"ir": ir, "vis": vis_y})``."""
        return self.fuse({"ir": ir, "vis": vis_y})

    def cache_key(self) -> str:
        return self._key


class LumaPairAdapter(PluginFuser):
    """A plug-in written for the older interface, ``fuse_luma(ir, vis_y)``: it fuses the set {ir, vis}."""

    def __init__(self, inner: Any, name: str, key: str):
        super().__init__(inner, name, key)
        self.modalities = TWO_BAND

    def fuse(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.fuse_luma(images["ir"], images["vis"])

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        return self._checked(self.inner.fuse_luma(ir, vis_y), ir.shape)


def as_fuser(obj: Any, name: str, origin: str, factory: Any, kwargs: dict[str, Any]) -> Fuser:
    """Check what a plug-in factory returned and complete it to a ``Fuser`` (see the module docstring).

    ``kwargs`` are the arguments the factory was called with (``device`` included when it was given one).
    """
    native = callable(getattr(obj, "fuse", None))
    if not native and not callable(getattr(obj, "fuse_luma", None)):
        raise FuserSpecError(f"factory {origin} returned {type(obj).__name__}, which has no fuse_luma(ir, vis_y) "
                             "nor fuse(images) method (the interface fusion.fusers.base.Fuser defines)")
    own_key = getattr(obj, "cache_key", None)
    if callable(own_key):
        key = f"plugin:{origin}:{own_key()}:{INPUT_DOMAIN}"
    else:
        key = "plugin:" + content_key(origin, kwargs, _source_digest(factory), argument_fingerprints(kwargs),
                                      INPUT_DOMAIN)
    return (PluginFuser if native else LumaPairAdapter)(obj, name, key)
