"""Shared test fixtures: the network guard, the shared data folder, and small helpers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Every test process and every subprocess it starts refuses non-loopback sockets (see netguard/sitecustomize.py).
sys.path.insert(0, str(NETGUARD_DIR))
import sitecustomize  # noqa: E402,F401  (installs the audit hook in this process)

os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(NETGUARD_DIR), str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
)


@pytest.fixture(scope="session", autouse=True)
def netguard_log(tmp_path_factory) -> Path:
    """Collects every blocked network attempt of the session; the session fails if any was made."""
    log = tmp_path_factory.mktemp("netguard") / "blocked.log"
    log.touch()
    os.environ["NETGUARD_LOG"] = str(log)
    yield log
    blocked = log.read_text()
    assert not blocked, f"code under test tried to reach the network:\n{blocked}"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a reason when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available at {path} (set SHARED_DATA or place ../shared/data beside the repo)")
    return path
