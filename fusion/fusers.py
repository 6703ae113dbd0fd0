"""The interface every fuser implements (simple baselines, DAE-Fuse, plug-ins alike) and the fuser registry.

A fuser maps an infrared image and the visible luma to a fused luma. Colour is handled once, here, for all
fusers: the field's standard is to fuse the luminance (Y of YCbCr) and keep the visible image's chroma
(Cb, Cr), see ``data.io.restore_colour``.

Where fusers come from, all through ``create_fuser(name, **kwargs)``:

* the registry ``FUSERS``: the simple rules (``fusion.baselines``), ``dae_fuse`` (``fusion.fuse``), and every
  entry point of the group ``fusebench.fusers`` that an installed package declares, e.g. in its pyproject.toml::

      [project.entry-points."fusebench.fusers"]
      cddfuse = "cddfuse_wrapper:make_fuser"

* a ``package.module:factory`` path, so a user wraps any network without packaging it. A new learned method is
  one file with a factory returning a ``Fuser``; nothing here is edited.

A plug-in's fuser needs only ``fuse_luma``; ``name`` and ``keeps_visible_chroma`` (True) default, and without
its own ``cache_key`` one is derived from the factory, its arguments, the bytes of the factory's source file and
the size and modification time of every argument that names a file, so a changed wrapper or weights file is fused
again.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from data.io import read_ir, read_visible, restore_colour
from data.provenance import content_key, file_fingerprint
from data.types import Pair

from data.registry import Registry


@runtime_checkable
class Fuser(Protocol):
    """Pair in, fused luma out.

    ``fuse_luma(ir, vis_y)`` takes float32 (H, W) arrays on the 0..255 scale (the infrared image and the visible
    luma) and returns a float32 (H, W) fused luma on the same scale; values outside 0..255 are clipped by the
    caller, never stretched. ``cache_key`` identifies the fuser's output for caching: two fusers with the same key
    must produce the same images. ``keeps_visible_chroma``: whether a colour visible image's Cb/Cr are restored
    around the fused luma (every real fusion); False for a single-modality infrared passthrough, which must not
    borrow anything from the visible image.
    """

    name: str
    keeps_visible_chroma: bool

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray: ...

    def cache_key(self) -> str: ...


# name -> factory(**kwargs) -> Fuser. Baselines take no arguments; checkpoint fusers take ``checkpoint=``.
FUSERS: Registry = Registry("fuser")
ENTRY_POINT_GROUP = "fusebench.fusers"


class FuserSpecError(ValueError):
    """A fuser cannot be built from what was given: an unknown name, a factory that does not import, a factory
    whose result is no fuser."""


class UnknownFuserError(FuserSpecError, KeyError):
    """No fuser of that name: a ``KeyError`` too, as the registry's own lookups raise."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


def _register_builtin_and_installed() -> None:
    """Fill the registry: the simple rules, DAE-Fuse, and the installed packages' entry points (once each)."""
    from . import baselines  # noqa: F401  (importing it registers the simple fusers)

    if "dae_fuse" not in FUSERS:
        from . import fuse  # noqa: F401  (registers the checkpoint fuser)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in FUSERS:
            FUSERS.register(entry.name)(_EntryPointFactory(entry))


class _EntryPointFactory:
    """A registry entry for an installed plug-in: its module is imported only when the fuser is built."""

    def __init__(self, entry: importlib.metadata.EntryPoint):
        self.entry = entry

    def __call__(self, **kwargs: Any) -> Fuser:
        try:
            factory = self.entry.load()
        except Exception as err:  # noqa: BLE001 - whatever the plug-in's import raises, name the plug-in
            raise FuserSpecError(f"fuser '{self.entry.name}' ({ENTRY_POINT_GROUP} entry point {self.entry.value}) "
                                 f"does not load: {type(err).__name__}: {err}") from err
        return as_fuser(factory(**kwargs), self.entry.name, self.entry.value, factory, kwargs)


def parse_fuser_args(tokens: list[str]) -> dict[str, Any]:
    """``["weights=w.pth", "scale=0.5"]`` -> ``{"weights": "w.pth", "scale": 0.5}`` (values read as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key.isidentifier():
            raise FuserSpecError(f"fuser argument '{token}' is not key=value")
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key] = value
    return out


def fuser_names() -> list[str]:
    """Every registered fuser name (built-in and installed plug-ins), e.g. for a CLI's choices."""
    _register_builtin_and_installed()
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
        raise FuserSpecError(f"factory {target} does not import: {type(err).__name__}: {err}") from err
    if not callable(obj):
        raise FuserSpecError(f"factory {target} is not callable (a {type(obj).__name__})")
    return obj


def create_fuser(name: str, **kwargs) -> Fuser:
    """Build a fuser: a registered name (``create_fuser("mean")``, ``create_fuser("dae_fuse", checkpoint=path)``,
    an installed plug-in) or a factory path (``create_fuser("my_pkg.wrap:make", weights="w.pth")``)."""
    if ":" in name:
        factory = import_factory(name)
        return as_fuser(factory(**kwargs), name.rpartition(".")[2].replace(":", "."), name, factory, kwargs)
    if name not in FUSERS:
        _register_builtin_and_installed()
    try:
        factory = FUSERS.get(name)
    except KeyError as err:
        raise UnknownFuserError(err.args[0] + " (or give a factory as package.module:factory)") from None
    return factory(**kwargs)


def _source_digest(obj: Any) -> str | None:
    """sha256 of the file that defines ``obj``, or None when it has none (a builtin, a REPL function)."""
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return hashlib.sha256(Path(source).read_bytes()).hexdigest() if source and Path(source).is_file() else None


class PluginFuser:
    """A plug-in's fuser completed to the ``Fuser`` protocol: the defaults the module docstring gives."""

    def __init__(self, inner: Any, name: str, key: str):
        self.inner = inner
        self.name = str(getattr(inner, "name", None) or name)
        self.keeps_visible_chroma = bool(getattr(inner, "keeps_visible_chroma", True))
        self._key = key
        if callable(getattr(inner, "fuse_luma_batch", None)):  # several frames per call, for video (fusion.video)
            self.fuse_luma_batch = inner.fuse_luma_batch

    def fuse_luma(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        fused = np.asarray(self.inner.fuse_luma(ir, vis_y), dtype=np.float32)
        if fused.shape != ir.shape:
            raise ValueError(f"fuser {self.name} returned an image of shape {fused.shape} for inputs of {ir.shape}")
        return fused

    def cache_key(self) -> str:
        return self._key


def as_fuser(obj: Any, name: str, origin: str, factory: Any, kwargs: dict[str, Any]) -> Fuser:
    """Check what a plug-in factory returned and complete it to a ``Fuser`` (see the module docstring)."""
    if not callable(getattr(obj, "fuse_luma", None)):
        raise FuserSpecError(f"factory {origin} returned {type(obj).__name__}, which has no fuse_luma(ir, vis_y) "
                             "method (the interface fusion.fusers.Fuser defines)")
    own_key = getattr(obj, "cache_key", None)
    if callable(own_key):
        key = f"plugin:{origin}:{own_key()}"
    else:
        files = {k: file_fingerprint(v) for k, v in kwargs.items()
                 if isinstance(v, (str, Path)) and str(v) and Path(v).is_file()}
        key = "plugin:" + content_key(origin, kwargs, _source_digest(factory), files)
    return PluginFuser(obj, name, key)


def fuse_arrays(fuser: Fuser, ir: np.ndarray, vis_y: np.ndarray, vis_bgr: np.ndarray | None) -> np.ndarray:
    """Fuse already-read arrays; returns the uint8 image to save (grey, or BGR with the visible chroma)."""
    if ir.shape != vis_y.shape:
        raise ValueError(f"infrared {ir.shape} and visible {vis_y.shape} sizes differ")
    fused = fuser.fuse_luma(ir.astype(np.float32, copy=False), vis_y.astype(np.float32, copy=False))
    return restore_colour(fused, vis_bgr if fuser.keeps_visible_chroma else None)


def fuse_pair(fuser: Fuser, pair: Pair) -> np.ndarray:
    """Read a pair from disk and fuse it; returns the uint8 image to save. A source of already-fused images
    (``fusion.prefused.PrefusedFolder``) gives its own image for the pair instead."""
    image_for = getattr(fuser, "image_for", None)
    if image_for is not None:
        return image_for(pair)
    vis_y, vis_bgr = read_visible(pair.vis)
    return fuse_arrays(fuser, read_ir(pair.ir).astype(np.float32), vis_y, vis_bgr)


def output_path(out_dir: Path, stem: str) -> Path:
    """Where a fused image for ``stem`` is written: always an 8-bit PNG named by the source stem."""
    return Path(out_dir) / f"{stem}.png"
