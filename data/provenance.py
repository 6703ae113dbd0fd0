"""What makes a result reproducible and a cache trustworthy: content keys, file hashes, package versions."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Packages whose versions every results file and checkpoint records.
RECORDED_PACKAGES: tuple[str, ...] = ("fusebench", "torch", "torchvision", "timm", "ultralytics", "numpy",
                                      "opencv-python", "pycocotools")


def content_key(*parts: Any) -> str:
    """A stable sha256 hex key of JSON-serialisable parts (dict keys sorted, other objects by ``str``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> list[Any]:
    """[resolved path, size, modification time in ns] of a file: changes when it is rewritten, replaced or touched,
    without reading it (hashing a full dataset's images on every run would cost minutes)."""
    path = Path(path).resolve()
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def files_fingerprint(paths: Iterable[str | Path]) -> str:
    """One key over the ``file_fingerprint`` of every file, in the given order."""
    return content_key([file_fingerprint(p) for p in paths])


def package_versions(packages: Iterable[str] = RECORDED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` ("not installed" where absent), plus Python and the platform."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out
