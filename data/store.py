"""The one keyed-artifact store: "is this work finished for these inputs", ``--force`` and resume, for every stage.

Every piece of finished work is identified by a content key of its inputs (``data.provenance.content_key``) and
recorded with ``data.io.write_record`` once its files are in place, so a record exists only for finished work.
Two shapes of work exist, and this class owns both:

* a stage result: a small record ``ROOT/<owner>/<stage>.json`` (``get``/``put``), e.g. a candidate's metrics or
  one detector seed's scores;
* a folder of files: ``folder(path, key, build)`` builds it under a temporary name and renames it into place with
  its record inside, so the key-named folder only ever appears finished. A resumable build (fusing thousands of
  images) keeps its partial folder between runs and continues where a killed run stopped; a plain one starts over.

``--force`` redoes each piece of work once per run (``redo``): a fused folder shared by two stages is fused again
once, not twice. Dead writers' temporaries anywhere under a run are swept by ``data.io.remove_stale_temps_tree``
at the run's start.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.io import atomic_dir, clear_dir, read_record, replace_dir, write_record

RECORD_NAME = ".record.json"  # inside a finished folder: its key and what its build returned


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
               resumable: bool = False) -> tuple[dict[str, Any], bool]:
        """The finished folder ``path`` for ``key``: ``(its record, True)`` when it is there, else built now.

        ``build(tmp)`` writes the folder's files into ``tmp`` and returns the record to keep (plain JSON data).
        ``resumable``: ``tmp`` is ``path`` + ``.partial`` and survives a killed run, so ``build`` must skip what is
        already there (each file written atomically); otherwise ``tmp`` is a fresh temporary removed on failure.
        Under ``--force`` the folder is built again once per run; the old one stays until the new one replaces it.
        """
        path = Path(path)
        forced = self.redo(f"folder:{path}:{key}")
        if not forced:
            stored = read_record(path / RECORD_NAME, key)
            if stored is not None:
                return stored, True
        if not resumable:
            with atomic_dir(path) as tmp:
                output = build(tmp)
                write_record(tmp / RECORD_NAME, key, output)
            return output, False
        partial = path.with_name(path.name + ".partial")
        if forced:
            clear_dir(partial)
        partial.mkdir(parents=True, exist_ok=True)
        output = build(partial)
        write_record(partial / RECORD_NAME, key, output)
        replace_dir(partial, path)
        return output, False
