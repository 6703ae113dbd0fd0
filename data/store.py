"""The one keyed-artifact store: "is this work finished for these inputs", ``--force`` and resume, for every stage.

Every piece of finished work is identified by a content key of its inputs (``data.provenance.content_key``) and
recorded with ``data.io.write_record`` once its files are in place, so a record exists only for finished work.
Two shapes of work exist, and this class owns both:

* a stage result: a small record ``ROOT/<owner>/<stage>.json`` (``get``/``put``), e.g. a candidate's metrics or
  one detector seed's scores;
* a folder of files: ``folder(path, key, build)`` builds it under a temporary name and renames it into place with
  its record inside, so the key-named folder only ever appears finished. A resumable build (fusing thousands of
  images, training a detector or the DAE-Fuse) keeps its partial folder between runs and continues where a killed
  run stopped; a plain one starts over.

Work in progress has one rule too (``claim_folder``): a folder being filled carries a progress record naming the
key it is filled for, which its build may update as it goes (``read_progress``/``save_progress``: e.g. "trained,
not yet evaluated"). A folder being filled for another key is cleared, or refused where clearing would lose
someone's files (``fusion.fusers.fuse.fuse_folder`` never passes one fuser's images off as another's).

``--force`` redoes each piece of work once per run (``redo``): a fused folder shared by two stages is fused again
once, not twice. Work built below the pipeline takes the run's store (a YOLO export, ``detection.export``) or, in
another process, the run's decision (a detector run, ``detection.train``: a store of its own, forced only where
the run's ``redo`` said so). Dead writers' temporaries are swept wherever work is built: beside a folder and
inside a claimed one here, and anywhere under a pipeline run by ``data.io.remove_stale_temps_tree`` at the run's
start.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from data.io import (
    atomic_dir,
    clear_dir,
    read_record,
    record_key,
    remove_stale_temps,
    replace_dir,
    write_record,
)

RECORD_NAME = ".record.json"  # inside a finished folder: its key and what its build returned
PROGRESS_NAME = ".progress.json"  # inside a folder being filled: the key it is filled for and its build's progress
PARTIAL_SUFFIX = ".partial"  # a resumable build's folder, beside the finished one


class FolderClaimedError(ValueError):
    """A folder to resume is being filled for another key (``claim_folder(..., other="refuse")``)."""

    def __init__(self, folder: Path, held: str, wanted: str):
        super().__init__(f"{folder} is being filled for {held}, not for {wanted}")
        self.folder, self.held, self.wanted = folder, held, wanted


def finished(path: str | Path, key: str | None = None, *, record: str = RECORD_NAME) -> dict[str, Any] | None:
    """What the build of the finished folder ``path`` returned (when it was built for ``key``; for any key when
    None), or None: not there, not finished, damaged or built for another key."""
    stored = read_record(Path(path) / record, key)
    return stored if isinstance(stored, dict) else None


def claim_folder(folder: str | Path, key: str, *, record: str = PROGRESS_NAME,
                 other: Literal["clear", "refuse", "keep"] = "clear",
                 start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start or resume filling ``folder`` for ``key``; returns the progress its build recorded so far ({} new).

    The folder's ``record`` names the key it is being filled for. The same key: resumed. No record (a new folder,
    or one a version without records left): taken as it is. Another key: ``other`` decides: ``"clear"`` empties
    the folder first, ``"refuse"`` raises :class:`FolderClaimedError` and touches nothing, ``"keep"`` keeps the
    files and takes the folder over (for a build that rewrites every file). A newly claimed folder's record holds
    ``start``. Dead writers' temporaries inside are swept.
    """
    folder = Path(folder)
    held = record_key(folder / record)
    if held is not None and held != key:
        if other == "refuse":
            raise FolderClaimedError(folder, held, key)
        if other == "clear":
            clear_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)  # half-written files of a killed build (SIGKILL skips every cleanup)
    progress = read_progress(folder, key, record=record)
    if progress is None:
        progress = dict(start or {})
        save_progress(folder, key, progress, record=record)
    return progress


def read_progress(folder: str | Path, key: str, *, record: str = PROGRESS_NAME) -> dict[str, Any] | None:
    """The progress recorded in ``folder`` by a build of ``key`` (None: none, or another key's)."""
    progress = read_record(Path(folder) / record, key)
    return progress if isinstance(progress, dict) else None


def save_progress(folder: str | Path, key: str, progress: dict[str, Any], *, record: str = PROGRESS_NAME) -> None:
    """Record, atomically, how far the build of ``key`` filling ``folder`` got (plain JSON data)."""
    write_record(Path(folder) / record, key, progress)


class KeyedStore:
    """Stage records under ``root`` and the content-keyed folders a run builds, with ``--force`` semantics."""

    def __init__(self, root: str | Path, force: bool = False):
        self.root = Path(root)
        self.force = force
        self._redone: set[str] = set()

    def redo(self, what: str) -> bool:
        """Under ``force``: True the first time ``what`` is asked about in this run (redo it), False afterwards
        (it was redone already: reuse it). Always False without ``force``."""
        if not self.force or what in self._redone:
            return False
        self._redone.add(what)
        return True

    def _path(self, owner: str, stage: str) -> Path:
        return self.root / owner / f"{stage}.json"

    def get(self, owner: str, stage: str, key: str) -> dict[str, Any] | None:
        """The stored output of ``owner``'s finished ``stage`` for ``key``, or None (stale, missing, damaged, or
        this run was forced and has not redone it yet)."""
        if self.force and f"{owner}/{stage}/{key}" not in self._redone:
            return None
        return read_record(self._path(owner, stage), key)

    def put(self, owner: str, stage: str, key: str, output: dict[str, Any]) -> None:
        write_record(self._path(owner, stage), key, output)
        if self.force:  # redone in this run: a second ask in the same run reuses it
            self._redone.add(f"{owner}/{stage}/{key}")

    def cached(self, owner: str, stage: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``get`` or, when not finished, ``compute()`` then ``put``: the shape of every small stage."""
        stored = self.get(owner, stage, key)
        if stored is None:
            stored = compute()
            self.put(owner, stage, key, stored)
        return stored

    def folder(self, path: str | Path, key: str, build: Callable[[Path], dict[str, Any]], *,
               resumable: bool = False, record: str = RECORD_NAME,
               accept: Callable[[dict[str, Any]], bool] | None = None) -> tuple[dict[str, Any], bool]:
        """The finished folder ``path`` for ``key``: ``(its record, True)`` when it is there, else built now.

        ``build(tmp)`` writes the folder's files into ``tmp`` and returns the record to keep (plain JSON data).
        ``resumable``: ``tmp`` is ``path`` + ``.partial``, claimed for ``key`` (``claim_folder``: a partial folder
        of another key is cleared) and kept when the run is killed, so ``build`` must skip what is already there
        (each file written atomically) and may keep its own progress there (``read_progress``/``save_progress``);
        otherwise ``tmp`` is a fresh temporary removed on failure. ``record``: the record's file name inside the
        folder (a format's own, e.g. an export's ``manifest.json``). ``accept``: False for a finished record this
        caller can no longer use (e.g. written before a field it needs): the folder is built again.
        Under ``--force`` the folder is built again once per run; the old one stays until the new one replaces it.
        """
        path = Path(path)
        assert key, f"a keyed folder needs a key: {path}"
        forced = self.redo(f"folder:{path}:{key}")
        if not forced:
            stored = finished(path, key, record=record)
            if stored is not None and (accept is None or accept(stored)):
                return stored, True
        if not resumable:
            with atomic_dir(path) as tmp:
                output = build(tmp)
                write_record(tmp / record, key, output)
            return output, False
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        remove_stale_temps(path.parent, partial.name)  # a killed clear_dir of an earlier partial
        if forced:
            clear_dir(partial)
        claim_folder(partial, key)
        output = build(partial)
        write_record(partial / record, key, output)
        (partial / PROGRESS_NAME).unlink(missing_ok=True)  # finished: its record says it all
        replace_dir(partial, path)
        return output, False
