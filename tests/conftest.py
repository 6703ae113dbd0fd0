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
import sitecustomize  # noqa: E402,F401  (importing it installs the audit hook in this process)

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine OpenMP barriers can make a
    48x64 forward hundreds of times slower when another process holds a core. Modules that train or run the
    fusion model use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 9-pair synthetic dataset in M3FD layout (80x64, colour visible): 3 train, 3 val, 3 test pairs."""
    from data.synthetic import generate_synthetic_m3fd

    root = tmp_path_factory.mktemp("dae") / "m3fd"
    return generate_synthetic_m3fd(root, num_scenes=3, frames_per_scene=3, size=(80, 64))


def tiny_config(*overrides: str):
    """The ``tiny`` DAE-Fuse training preset with ``key=value`` overrides (a FusionTrainConfig)."""
    from fusion.config import load_train_config

    return load_train_config(preset="tiny", overrides=overrides)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a reason when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available at {path} (set SHARED_DATA or place ../shared/data beside the repo)")
    return path
