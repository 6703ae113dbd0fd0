"""Another method's fused images, already on disk, as a candidate like any fuser.

The field's methods (CDDFuse, TarDAL, EMMA, ...) ship code or fused images, not our checkpoint format. A folder of
their fused images, named by image id (``00001.png``, any format OpenCV reads, grey or colour as the method wrote
it: colour is the fused Y with the colour modality's chroma), is checked against the samples it claims to fuse and
then read in place of fusing: ``PrefusedFolder.image_for(pair)`` plays the part of ``base.fuse_pair``. Samples
are matched by id alone, so they may carry any set of sources by name (``data.types.Pair.sources``: ir and vis,
or vis, nir and lwir, ...); ``modalities`` records which set the method fused when the caller knows it, and then
samples with another set are refused like any fuser's (``check_sources``).

``check_prefused_folder`` finds every problem in one pass (missing ids, images of the wrong size, files that do not
decode, two files for one id) so that a bad folder is refused with one message before any heavy work; with
thousands of ids the message gives the counts first and a bounded list of names. The folder's cache key follows its
content (each used file's name, size and modification time), like the sources'.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np  # noqa: F401  (the type of image_for's result)

from data.errors import DatasetError
from data.io import is_image_file, read_8bit
from data.probe import probe_images
from data.provenance import content_key, files_fingerprint
from data.types import Pair

MAX_LISTED = 20  # names listed per kind of problem; the count says how many there are


def _listed(kind: str, names: Sequence[str], hint: str = "") -> str:
    shown = ", ".join(names[:MAX_LISTED]) + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")
    return f"{len(names)} {kind}{hint}: {shown}"


def _source_names(pair: Pair) -> tuple[str, ...]:
    sources = getattr(pair, "sources", None)  # a pair from before sources had names holds ir and vis
    return tuple(sources) if sources is not None else ("ir", "vis")


def index_images(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """(stem -> image file, stem -> files when one stem has several image files) of a folder's image files."""
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and is_image_file(path):
            by_stem.setdefault(path.stem, []).append(path)
    return ({s: ps[0] for s, ps in by_stem.items() if len(ps) == 1},
            {s: ps for s, ps in by_stem.items() if len(ps) > 1})


def check_prefused_folder(folder: str | Path, sizes: Mapping[str, tuple[int, int]]) -> dict[str, Path]:
    """The fused image of every wanted id (``sizes``: id -> (width, height) of its pair), or one DatasetError.

    Raises:
        DatasetError: listing, kind by kind with counts first, every id without an image, every image whose
            size is not its pair's, every file that does not decode, every id with two files, and (when ids are
            missing) the image files named by no wanted id, which is how misnamed files show up.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(str(folder), ["not a folder of fused images"])
    found, ambiguous = index_images(folder)
    wanted = sorted(sizes)
    missing = [i for i in wanted if i not in found and i not in ambiguous]
    present = {i: found[i] for i in wanted if i in found}
    probed = probe_images(list(present.values()))
    unreadable = [f"{present[i].name} ({probed[present[i]]})" for i in present if isinstance(probed[present[i]], str)]
    wrong_size = [f"{present[i].name} is {probed[present[i]][0]}x{probed[present[i]][1]}, its pair "
                  f"{sizes[i][0]}x{sizes[i][1]}" for i in present
                  if not isinstance(probed[present[i]], str) and tuple(probed[present[i]]) != tuple(sizes[i])]
    problems = []
    if missing:
        problems.append(_listed("id(s) without a fused image", missing))
        strays = sorted(p.name for s, p in found.items() if s not in sizes)
        if strays:
            problems.append(_listed("image file(s) named by no id of the splits used", strays,
                                    " (name each fused image by its id, e.g. 00001.png)"))
    if wrong_size:
        problems.append(_listed("fused image(s) of another size than their pair", wrong_size))
    if unreadable:
        problems.append(_listed("fused image(s) that do not decode", unreadable))
    clashes = [f"{i} ({', '.join(p.name for p in ambiguous[i])})" for i in wanted if i in ambiguous]
    if clashes:
        problems.append(_listed("id(s) with more than one image file", clashes))
    if problems:
        raise DatasetError(f"--fused folder {folder} ({len(wanted)} ids wanted)", problems)
    return present


@dataclass
class PrefusedFolder:
    """A checked folder of fused images: ``image_for(pair)`` returns the image to save, as a fuser's output is.

    ``cache_key()`` follows the folder's content: the name, size and modification time of each file used.
    """

    folder: Path
    images: dict[str, Path]
    name: str = "prefused"
    keeps_visible_chroma: bool = True  # as the method wrote it: colour files keep theirs, grey ones stay grey
    modalities: tuple[str, ...] | None = None  # the set the method fused, when known; None: any
    _key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        stems = sorted(self.images)
        self._key = "prefused:" + content_key(str(self.folder.resolve()), stems,
                                              files_fingerprint(self.images[s] for s in stems))

    @classmethod
    def from_pairs(cls, folder: str | Path, pairs: Sequence[Pair], sizes: Mapping[str, tuple[int, int]],
                   name: str = "prefused", modalities: Sequence[str] | None = None) -> PrefusedFolder:
        """Check ``folder`` against ``pairs`` (samples with sources by name; one DatasetError listing every problem,
        including samples whose set is not ``modalities`` when that is given) and index it."""
        problems = []
        if modalities is not None:
            other = [p.stem for p in pairs if set(_source_names(p)) != set(modalities)]
            if other:
                problems.append(_listed(f"sample(s) without exactly the sources {', '.join(modalities)}", other))
        wanted = {p.stem: tuple(sizes[p.stem]) for p in pairs}
        try:
            images = check_prefused_folder(folder, wanted)
        except DatasetError as err:
            raise DatasetError(err.what, problems + err.problems) from None
        if problems:
            raise DatasetError(f"--fused folder {folder} ({len(wanted)} ids wanted)", problems)
        return cls(Path(folder), images, name=name, modalities=None if modalities is None else tuple(modalities))

    def cache_key(self) -> str:
        return self._key

    def check_sources(self, names: Sequence[str]) -> list[str]:
        """Refuses samples with another set of modalities than ``modalities`` (when that is known)."""
        if self.modalities is None or set(names) == set(self.modalities):
            return []
        return [f"{self.name} holds images fused from {{{', '.join(self.modalities)}}}, not {{{', '.join(names)}}}"]

    def image_for(self, pair: Pair) -> np.ndarray:
        """The fused image of ``pair`` as 8-bit grey or BGR (a 16-bit file keeps its upper byte, as sources do)."""
        return read_8bit(self.images[pair.stem])
