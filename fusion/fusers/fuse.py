"""Folder fusion for any fuser, and its command; the top of ``fusion.fusers``.

Command line (a thin wrapper over ``fuse_folder``); sources by modality name, or the two-band flags::

    python -m fusion.fusers.fuse --baseline max --src vis=DIR --src nir=DIR --src lwir=DIR --out DIR
    python -m fusion.fusers.fuse --checkpoint runs/dae_fuse/best.pt --ir DIR --vis DIR --out DIR [--device cuda]
    python -m fusion.fusers.fuse --fuser my_pkg.wrap:make_fuser weights=w.pth --ir DIR --vis DIR --out DIR \
        --device cuda
    python -m fusion.fusers.fuse --fuser dae_fuse checkpoint=best.pt "roles={ir: lwir}" --src lwir=DIR --src vis=DIR ...

Videos are fused by ``python -m fusion.video``, which takes the same fuser options (``add_fuser_arguments``,
``build_fuser``).

``--ir DIR`` is ``--src ir=DIR`` and ``--vis DIR`` is ``--src vis=DIR``. ``--colour NAME`` says which source is the
colour camera (default ``vis`` when there is one). ``--device`` reaches the fuser's factory (``fusion.fusers.catalog``).
Every problem with the sources (a missing folder, an image without partners, an unreadable image, sizes that
differ within a sample, a set of modalities the fuser does not take) is one error naming every offender, before
anything is fused; a fuser whose factory fails is one line naming it. Both exit with status 2.

Outputs are 8-bit PNGs named by the source stem (``fusion.fusers.base.output_path``), grey or, for a colour source,
with its chroma restored (``fusion.fusers.base.fuse_images``). Values are clipped to 0..255, never stretched. Every
file is written atomically.

Library side (what the pipeline calls):

* ``CheckpointFuser`` and ``load_fuser_checkpoint(path, device)``: the DAE-Fuse checkpoint fuser, defined in
  ``fusion.fusers.dae_fuse`` and importable from here too.
* ``fuse_folder(fuser, pairs, out_dir)``: fuse a list of samples (``data.types.Pair`` or
  ``fusion.fusers.base.SourceSet``: sources by name) to PNGs, with per-image timings; ``on_fused`` sees each image
  while its sample's decodes are in memory (the pipeline's fuse stage scores it there).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DatasetError
from data.io import decoding_once, write_image
from data.paired import check_image_groups, find_pairs
from data.store import FolderClaimedError, claim_folder
from data.types import Pair

from fusion.metrics.image import match_source_folders, parse_sources
from fusion.models.checkpoint import (  # noqa: F401  (re-exported: the names callers have imported from here)
    FUSION_PHASES,
    CheckpointError,
    build_generator,
    load_checkpoint,
    read_generator_checkpoint,
    unpickle_checkpoint,
)
from fusion.models.inference import keep_freed_memory

from .base import (
    DEFAULT_COLOUR,
    Fuser,
    FuserInputError,
    FuserSpecError,
    SourceSet,
    fuse_pair,
    output_path,
    source_problems,
    sources_of,
)
from .baselines import BASELINE_NAMES
from .catalog import create_fuser, fuser_names, parse_fuser_args
from .dae_fuse import CheckpointFuser, load_fuser_checkpoint  # noqa: F401  (CheckpointFuser re-exported)

LOGGER = logging.getLogger(__name__)

# Written into every folder fuse_folder fills (``data.store.claim_folder``'s record): which fuser made its images
# (its cache_key).
FUSER_MARKER = ".fuser.json"

def fuse_folder(
    fuser: Fuser, pairs: Sequence[Pair], out_dir: str | Path, *, progress: bool = True, skip_existing: bool = False,
    on_fused: Callable[[Pair, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Fuse every sample (sources by name: ``data.types.Pair``, ``fusion.fusers.base.SourceSet``) to
    ``out_dir/<stem>.png``.

    Returns ``{"per_image": {stem: seconds}, "total_seconds": float, "written": [stems], "skipped": [stems]}``.
    ``skip_existing=True`` (resuming an interrupted folder) leaves outputs that already exist; since every output
    is written atomically, an existing file is always complete. The folder is claimed for the fuser's ``cache_key``
    (``data.store.claim_folder``, record ``out_dir/.fuser.json``), and a folder fused by another fuser is never
    resumed (its images would be passed off as this fuser's); without ``skip_existing`` every image is written
    again and the folder is taken over. Nothing else is skipped: a pair that fails to read or fuse raises.

    ``on_fused(pair, image)`` is called with each image fused now (uint8, as written), after it is written and
    while the pair's decodes are kept (``data.io.decoding_once``): reading its sources again through ``data.io``
    decodes nothing (the pipeline scores the image there). Its time is not in ``per_image``.

    Raises:
        FuserInputError: the fuser does not take some sample's set of modalities (every distinct set named), before
            anything is written.
        ValueError: ``out_dir`` is a folder of source images, or holds another fuser's images under
            ``skip_existing``.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    sources = {p.parent.resolve() for pair in pairs for p in sources_of(pair).values()}
    if out_dir.resolve() in sources:
        raise ValueError(f"output folder {out_dir} holds source images: fusing into it would overwrite them")
    if not hasattr(fuser, "image_for"):  # a pre-fused folder takes any sample it has an image for
        refused = {}
        for pair in pairs:
            names = tuple(sources_of(pair))
            if names not in refused:
                refused[names] = source_problems(fuser, names)
        lines = [line for problems in refused.values() for line in problems]
        if lines:
            raise FuserInputError(f"fuser {getattr(fuser, 'name', fuser)}: " + "; ".join(dict.fromkeys(lines)))
    key = fuser.cache_key()
    try:  # sweeps the half-written images of a killed run too (SIGKILL skips every cleanup)
        claim_folder(out_dir, key, record=FUSER_MARKER, other="refuse" if skip_existing else "keep",
                     start={"fuser": getattr(fuser, "name", None)})
    except FolderClaimedError as err:
        raise ValueError(f"{out_dir} holds images of another fuser ({err.held}); resume only the same fuser "
                         f"({key}), or fuse into another folder") from None
    per_image: dict[str, float] = {}
    written = []
    t0 = time.perf_counter()
    kept = {pair.stem for pair in pairs if skip_existing and output_path(out_dir, pair.stem).is_file()}
    skipped = [pair.stem for pair in pairs if pair.stem in kept]
    todo = [pair for pair in pairs if pair.stem not in kept]
    if skipped:
        LOGGER.info("kept %d existing outputs in %s", len(skipped), out_dir)
    for pair in tqdm(todo, desc=f"fuse {getattr(fuser, 'name', 'fuser')}", disable=not progress, unit="pair"):
        with decoding_once() if on_fused is not None else contextlib.nullcontext():
            t = time.perf_counter()
            image = fuse_pair(fuser, pair)
            write_image(output_path(out_dir, pair.stem), image)
            per_image[pair.stem] = time.perf_counter() - t
            written.append(pair.stem)
            if on_fused is not None:
                on_fused(pair, image)
    return {"per_image": per_image, "total_seconds": time.perf_counter() - t0, "written": written, "skipped": skipped}


def find_source_sets(source_dirs: Mapping[str, str | Path], colour: str | None) -> list[SourceSet]:
    """The samples of N source folders by modality name, matched by stem and checked (every image decodes, one size
    per sample), or one ``DatasetError`` naming every offender."""
    where = " + ".join(f"{name}={folder}" for name, folder in source_dirs.items())
    matched, problems = match_source_folders(source_dirs)
    problems.extend(check_image_groups([(stem, tuple(files.values())) for stem, files in matched.items()])[0])
    if problems:
        raise DatasetError(f"sources {where}", problems)
    return [SourceSet(stem, files, colour) for stem, files in matched.items()]


def _source_arguments(args: argparse.Namespace) -> tuple[dict[str, Path], str | None, list[str]]:
    """({name: folder} from --src, --ir and --vis; the colour modality; every problem with them)."""
    sources, problems = parse_sources(args.src)
    for name in ("ir", "vis"):
        folder = getattr(args, name)
        if folder is not None:
            if name in sources:
                problems.append(f"--{name} and --src {name}=... both name the {name} source")
            sources[name] = folder
    if not sources and not problems:
        problems.append("no sources: give --src NAME=DIR (repeatable), or --ir DIR and --vis DIR")
    colour = args.colour if args.colour is not None else (DEFAULT_COLOUR if DEFAULT_COLOUR in sources else None)
    if colour is not None and sources and colour not in sources:
        problems.append(f"--colour {colour} is not among the sources ({', '.join(sources)})")
    return sources, colour, problems


def add_fuser_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the fuser (``--checkpoint``, ``--baseline`` or ``--fuser``), ``--device`` and
    ``--allow-unfused``: this command's and ``python -m fusion.video``'s."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a DAE-Fuse training checkpoint (last.pt / best.pt)")
    source.add_argument("--baseline", choices=BASELINE_NAMES, help="a simple fuser instead of a model")
    source.add_argument("--fuser", nargs="+", metavar=("NAME|package.module:factory", "key=value"),
                        help="any fuser: a registered name (" + ", ".join(fuser_names()) + ") or a plug-in "
                             "factory, with its key=value arguments")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N, given to the fuser's factory (default cpu)")
    parser.add_argument("--allow-unfused", action="store_true",
                        help="accept a checkpoint saved before any fusion epoch (its fusion rules are untrained)")


def build_fuser(args: argparse.Namespace) -> Fuser | None:
    """The fuser the options of ``add_fuser_arguments`` name, its factory given ``--device``; None once one line on
    stderr has said why it cannot be built (the command then exits with status 2)."""
    try:
        if args.checkpoint:
            return load_fuser_checkpoint(args.checkpoint, args.device, args.allow_unfused)
        if args.fuser:
            return create_fuser(args.fuser[0], device=args.device, **parse_fuser_args(args.fuser[1:]))
        return create_fuser(args.baseline, device=args.device)
    except (CheckpointError, FuserSpecError) as err:
        print(f"error: {err}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - a plug-in's factory may raise anything: one line naming it
        spec = args.fuser[0] if args.fuser else args.baseline
        print(f"error: fuser {spec} failed to build: {type(err).__name__}: {err}", file=sys.stderr)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.fusers.fuse", description="Fuse a folder of image sets.")
    add_fuser_arguments(parser)
    parser.add_argument("--src", action="append", default=[], metavar="NAME=DIR",
                        help="a source folder by modality name (repeat: --src vis=V --src nir=N --src lwir=T)")
    parser.add_argument("--ir", type=Path,
                        help="infrared folder, the same as --src ir=DIR (medical: CT beside MRI; MRI beside colour "
                             "PET/SPECT)")
    parser.add_argument("--vis", type=Path,
                        help="visible folder, the same as --src vis=DIR (medical: MRI beside CT; PET/SPECT beside MRI)")
    parser.add_argument("--colour", metavar="NAME",
                        help="the colour source, whose chroma the fused image keeps (default: vis, when given)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (PNG per source stem)")
    parser.add_argument("--skip-existing", action="store_true", help="keep outputs already in --out (resume)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    source_dirs, colour, problems = _source_arguments(args)
    if problems:
        parser.error("; ".join(problems))
    keep_freed_memory()  # a process that fuses frame after frame: 13-17 % faster on CPU (fusion.models.inference)
    try:
        if set(source_dirs) == {"ir", "vis"} and colour == DEFAULT_COLOUR:
            pairs = find_pairs(source_dirs["ir"], source_dirs["vis"])  # the two-band reader, with its messages
        else:
            pairs = find_source_sets(source_dirs, colour)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fuser = build_fuser(args)
    if fuser is None:
        return 2
    try:
        report = fuse_folder(fuser, pairs, args.out, progress=not args.no_progress, skip_existing=args.skip_existing)
    except (ValueError, OSError) as err:  # a set the fuser refuses, --out a source folder or another fuser's, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = len(report["written"])
    mean = report["total_seconds"] / n if n else 0.0
    print(f"{n} fused, {len(report['skipped'])} kept, into {args.out} ({mean:.3f} s per sample)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
