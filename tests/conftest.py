"""Shared test fixtures: the network guard, the shared data folder, and small helpers."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from data.shared import SHARED_DATA

REPO_ROOT = Path(__file__).resolve().parents[1]
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"

# Every test process and every subprocess it starts refuses non-loopback sockets and name look-ups (see
# netguard/netguard.py). Loaded by its path: ``import sitecustomize`` would return a system sitecustomize imported at
# start-up and leave the guard off; subprocesses get it from netguard/sitecustomize.py through PYTHONPATH.
def _load_netguard():
    spec = importlib.util.spec_from_file_location("fusebench_netguard", NETGUARD_DIR / "netguard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


NETGUARD = _load_netguard()

os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(NETGUARD_DIR), str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
)


def assert_netguard_on() -> None:
    """Fail unless this process's guard refuses a look-up of an outside name. ``sys.audit`` raises the event the
    resolver would raise first, so nothing is looked up even when the guard is off."""
    log = os.environ.pop("NETGUARD_LOG", None)
    try:
        sys.audit("socket.getaddrinfo", "netguard-probe.example", 443, 0, 0, 0)
    except OSError as err:
        assert "network access blocked" in str(err), err
    else:
        raise AssertionError("the network guard is not installed in the test process (tests/netguard)")
    finally:
        if log is not None:
            os.environ["NETGUARD_LOG"] = log


@pytest.fixture(scope="session", autouse=True)
def netguard_log(tmp_path_factory) -> Path:
    """Collects every blocked network attempt of the session; the session fails if any was made."""
    log = tmp_path_factory.mktemp("netguard") / "blocked.log"
    log.touch()
    assert_netguard_on()
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


@pytest.fixture(scope="module")
def no_m3fd_root():
    """The pipeline's default data must be the built-in synthetic scenes, whatever the developer's environment says
    (``M3FD_ROOT`` unset for the module). Pipeline test modules use it through ``pytestmark``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("M3FD_ROOT", raising=False)
        yield


def assert_phase_gradients(model, phase: str, label: str = "") -> None:
    """After a backward pass of phase ``phase``: every parameter the phase trains (``model.phase_parameters``) has
    a non-zero gradient and every other parameter none."""
    trained = {id(p) for p in model.phase_parameters(phase)}
    for name, p in model.named_parameters():
        if id(p) in trained:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{label}{phase}: no gradient at {name}"
        else:
            assert p.grad is None, f"{label}{phase}: {name} is not trained in this phase but got a gradient"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 9-pair synthetic dataset in M3FD layout (80x64, colour visible): 3 train, 3 val, 3 test pairs."""
    from data.synthetic import generate_synthetic_m3fd

    root = tmp_path_factory.mktemp("dae") / "m3fd"
    return generate_synthetic_m3fd(root, num_scenes=3, frames_per_scene=3, size=(80, 64))


def tiny_config(*overrides: str):
    """The ``tiny`` DAE-Fuse training preset with ``key=value`` overrides (a FusionTrainConfig)."""
    from fusion.training.config import load_train_config

    return load_train_config(preset="tiny", overrides=overrides)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a reason when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available at {path} (set SHARED_DATA or place ../shared/data beside the repo)")
    return path


# What make_learnable_m3fd() paints for each class (a name M3FD's reader knows): shape, width and height ranges in
# pixels (inclusive), brightness range. The classes differ in shape, aspect ratio and brightness at once, so a
# detector trained from scratch for a few hundred steps tells them apart.
LEARNABLE_CLASSES = {
    "People": ("rectangle", (12, 20), (28, 40), (210, 255)),  # tall, bright
    "Car": ("ellipse", (28, 40), (14, 22), (110, 150)),       # wide, grey
}


def make_learnable_m3fd(root: Path, *, n_train: int = 32, n_val: int = 8, n_test: int = 8, size: int = 96,
                        seed: int = 0) -> Path:
    """A synthetic M3FD-layout set a tiny detector learns in seconds: tall bright rectangles (``People``) and wide
    grey ellipses (``Car``), :data:`LEARNABLE_CLASSES`, two or three per image and never touching, on a dark
    background with faint noise; the infrared image is the visible one's grey copy, darker by a third. Ids
    ``00000...``; ``meta/`` has the split lists and a scenario.json of two scenarios (``daytime``: even ids,
    ``night``: odd ids, one scene each per split). Every box is 1-based inclusive (VOC), exactly the painted
    pixels."""
    import json

    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    for folder in ("Ir", "Vis", "Annotation", "meta"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:05d}" for i in range(n_train + n_val + n_test)]
    yy, xx = np.mgrid[:size, :size]
    for image_id in ids:
        vis = rng.normal(25, 4, (size, size)).clip(0, 255)
        boxes, taken = [], []
        wanted = int(rng.integers(2, 4))
        while len(boxes) < wanted:
            name = list(LEARNABLE_CLASSES)[int(rng.integers(len(LEARNABLE_CLASSES)))]
            shape, widths, heights, levels = LEARNABLE_CLASSES[name]
            w, h = int(rng.integers(widths[0], widths[1] + 1)), int(rng.integers(heights[0], heights[1] + 1))
            x, y = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
            if any(x < bx + bw + 3 and bx < x + w + 3 and y < by + bh + 3 and by < y + h + 3 for bx, by, bw, bh in taken):
                continue
            taken.append((x, y, w, h))
            level = float(rng.uniform(*levels))
            if shape == "rectangle":
                vis[y:y + h, x:x + w] = level
            else:
                cx, cy = x + (w - 1) / 2, y + (h - 1) / 2
                vis[((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1] = level
            boxes.append((name, x + 1, y + 1, x + w, y + h))
        grey = np.rint(vis).astype(np.uint8)
        cv2.imwrite(str(root / "Vis" / f"{image_id}.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
        cv2.imwrite(str(root / "Ir" / f"{image_id}.png"), np.rint(vis * 2 / 3).astype(np.uint8))
        objects = "".join(f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                          f"<ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1 in boxes)
        (root / "Annotation" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.png</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
    splits = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]}
    for split, members in splits.items():
        (root / "meta" / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))
    scenes = {scenario: [{"name": f"{scenario}_{split}", "range": [{"min": int(i), "max": int(i)}
                                                                   for i in members if int(i) % 2 == parity]}
                         for split, members in splits.items()]
              for scenario, parity in (("daytime", 0), ("night", 1))}
    (root / "meta" / "scenario.json").write_text(json.dumps([{"name": s, "scene": v} for s, v in scenes.items()]))
    return root


@pytest.fixture(scope="session")
def learnable_root(tmp_path_factory) -> Path:
    """:func:`make_learnable_m3fd` with its defaults (32 train, 8 val, 8 test images of 96x96)."""
    return make_learnable_m3fd(tmp_path_factory.mktemp("learnable") / "m3fd")


def every_batch_a_step(detection_settings):
    """``pipelines.engine.detection_settings`` with Ultralytics' nominal batch set to the batch, so every batch is an
    optimiser step: the tiny preset's few batches then really move the weights (with the default nbs 64 a batch of 4
    accumulates 16 batches per step). Patch it in: ``mp.setattr(engine, "detection_settings",
    every_batch_a_step(engine.detection_settings))``."""
    def settings(cfg, preset):
        recipe = detection_settings(cfg, preset)
        recipe["extra_args"] = {**recipe["extra_args"], "nbs": recipe["batch"]}
        return recipe

    return settings
