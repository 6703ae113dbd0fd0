"""Records of finished pipeline stages, so an interrupted or repeated run does no finished work twice.

A stage record is a small JSON file ``STATE/<candidate>/<stage>.json`` holding the stage's input key and its
output. It is written atomically after the stage's outputs are in place, so a record exists only for work that
really finished. A record whose key differs from the current inputs' key is stale and ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from data.io import read_record, write_record


class StageStore:
    """Per-candidate stage records under one folder."""

    def __init__(self, root: Path, force: bool = False):
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

    def _path(self, candidate: str, stage: str) -> Path:
        return self.root / candidate / f"{stage}.json"

    def get(self, candidate: str, stage: str, key: str) -> dict[str, Any] | None:
        """The stored output of a finished stage with this key, or None (also None under ``force``)."""
        return None if self.force else read_record(self._path(candidate, stage), key)

    def put(self, candidate: str, stage: str, key: str, output: dict[str, Any]) -> None:
        write_record(self._path(candidate, stage), key, output)
