"""Where the shared data lives: ``$SHARED_DATA``, else ``../shared/data`` beside the repository (the layout of
``../shared/data/README.md``: the M3FD sample, the fusion test sets, the metric reference vectors, the training
pairs). Code that reads it as a default (benchmarks, ablations, tests) takes the path from here."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
