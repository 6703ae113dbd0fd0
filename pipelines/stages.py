"""Records of finished pipeline stages, so an interrupted or repeated run does no finished work twice.

A stage record is a small JSON file ``STATE/<candidate>/<stage>.json`` holding the stage's input key and its
output. It is written atomically after the stage's outputs are in place, so a record exists only for work that
really finished. A record whose key differs from the current inputs' key is stale and ignored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.io import atomic_write_json


class StageStore:
    """Per-candidate stage records under one folder."""

    def __init__(self, root: Path, force: bool = False):
        self.root = Path(root)
        self.force = force

    def _path(self, candidate: str, stage: str) -> Path:
        return self.root / candidate / f"{stage}.json"

    def get(self, candidate: str, stage: str, key: str) -> dict[str, Any] | None:
        """The stored output of a finished stage with this key, or None (also None under ``force``)."""
        path = self._path(candidate, stage)
        if self.force or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return None
        return record["output"] if record.get("key") == key else None

    def put(self, candidate: str, stage: str, key: str, output: dict[str, Any]) -> None:
        atomic_write_json(self._path(candidate, stage), {"key": key, "output": output})
