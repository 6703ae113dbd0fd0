"""Early fusion (``detection.export.export_stacked``): N-channel images Ultralytics reads back in the recorded
channel order, the checks an export makes, and one tiny offline training on 4-channel images.

Every source pixel of a modality holds one value no other channel holds, so a channel read back names the
modality (and colour channel) it came from.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from data.errors import DatasetError
from data.types import Annotation, Box
from detection.export import YoloDataset, export_stacked, stacked_channels

CLASSES = ("People", "Car")
IR, NIR = 40, 200  # grey levels of the infrared and near-infrared images
VIS_BGR = (60, 110, 170)  # the visible image's colour, B G R
VIS_LUMA = int(np.round(cv2.cvtColor(np.array([[VIS_BGR]], np.float32), cv2.COLOR_BGR2GRAY)[0, 0]))
SIZE = (48, 40)  # width, height


def make_sources(folder: Path, n: int, *, nir: bool = False) -> tuple[dict, dict]:
    """``n`` registered samples: grey IR, colour visible and (``nir``) grey NIR PNGs, each one flat value (PNG
    keeps it exactly); one ``Car`` box each. Returns (sources by id, annotations)."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    sources, annotations = {}, {}
    for i in range(n):
        id_ = f"{i:05d}"
        paths = {"ir": folder / f"ir_{id_}.png", "vis": folder / f"vis_{id_}.png"}
        cv2.imwrite(str(paths["ir"]), np.full((h, w), IR, np.uint8))
        cv2.imwrite(str(paths["vis"]), np.full((h, w, 3), VIS_BGR, np.uint8))
        if nir:
            paths["nir"] = folder / f"nir_{id_}.png"
            cv2.imwrite(str(paths["nir"]), np.full((h, w), NIR, np.uint8))
        sources[id_] = paths
        annotations[id_] = Annotation(id_, w, h, (Box("Car", 5 + i, 6, 30, 33),))
    return sources, annotations


SPLITS = {"train": ["00000", "00001"], "val": ["00002", "00003"]}


def _ultralytics_read(ds: YoloDataset, config_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The first val image as Ultralytics' loader returns it (``load_image``: H, W, C) and as its batch tensor
    (C, H, W), after its own dataset check of ``data.yaml``."""
    from detection.ultralytics_env import setup_offline

    setup_offline(config_dir)
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(ds.yaml_path))
    cfg = get_cfg(overrides={"imgsz": max(SIZE), "rect": False})
    dataset = build_yolo_dataset(cfg, data["val"], 1, data, mode="val")
    loaded, _, _ = dataset.load_image(0)
    return loaded, dataset[0]["img"].numpy(), data


@pytest.mark.parametrize("nir, colour, expected", [
    (False, "vis", {"ir": IR, "vis.B": VIS_BGR[0], "vis.G": VIS_BGR[1], "vis.R": VIS_BGR[2]}),
    (False, None, {"ir": IR, "vis": VIS_LUMA}),
    (True, None, {"ir": IR, "vis": VIS_LUMA, "nir": NIR}),
    (True, "vis", {"ir": IR, "vis.B": VIS_BGR[0], "vis.G": VIS_BGR[1], "vis.R": VIS_BGR[2], "nir": NIR}),
])
def test_stacked_channels_read_back_by_ultralytics_in_recorded_order(tmp_path, nir, colour, expected):
    sources, annotations = make_sources(tmp_path / "src", 4, nir=nir)
    ds = export_stacked(SPLITS, sources, annotations, CLASSES, tmp_path / "yolo", colour=colour)
    assert ds.channels == tuple(expected) == stacked_channels(list(sources["00000"]), colour)
    assert YoloDataset.load(tmp_path / "yolo").channels == ds.channels  # recorded in the manifest
    written = yaml.safe_load(ds.yaml_path.read_text())
    assert written["channels"] == len(expected) and written["channel_names"] == list(expected)

    loaded, tensor, data = _ultralytics_read(ds, tmp_path / ".ultralytics")
    assert data["channels"] == len(expected)
    assert loaded.shape == (SIZE[1], SIZE[0], len(expected))
    # Every pixel of channel k holds channel k's source value: the order recorded is the loader's order.
    assert [int(v) for v in loaded.reshape(-1, len(expected)).min(0)] == list(expected.values())
    assert [int(v) for v in loaded.reshape(-1, len(expected)).max(0)] == list(expected.values())
    # The batch tensor: the same order, except that Ultralytics' Format reverses exactly 3 channels (BGR -> RGB),
    # in training and validation alike.
    centre = [int(v) for v in tensor[:, SIZE[1] // 2, SIZE[0] // 2]]
    assert centre == (list(expected.values())[::-1] if len(expected) == 3 else list(expected.values()))


def test_stacked_export_layout_labels_and_reuse(tmp_path):
    sources, annotations = make_sources(tmp_path / "src", 4)
    ds = export_stacked(SPLITS, sources, annotations, CLASSES, tmp_path / "yolo", colour="vis")
    root = tmp_path / "yolo"
    assert sorted(p.name for p in (root / "images" / "val").iterdir()) == ["00002.tif", "00003.tif"]
    # Labels as an ordinary export writes them: Car = index 1 of the caller's classes; VOC box x 5..30, y 6..33
    # covers the spans [4, 30] and [5, 33]: centre (17, 19), size 26 x 28 pixels.
    line = (root / "labels" / "train" / "00000.txt").read_text().split()
    assert line[0] == "1"
    np.testing.assert_allclose([float(v) for v in line[1:]], [17 / 48, 19 / 40, 26 / 48, 28 / 40], atol=1e-6)
    gt = json.loads(ds.coco_gt("val").read_text())
    assert [c["name"] for c in gt["categories"]] == list(CLASSES)
    assert [i["file_name"] for i in gt["images"]] == ["00002.tif", "00003.tif"]
    assert ds.box_counts == {"train": {"People": 0, "Car": 2}, "val": {"People": 0, "Car": 2}}

    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert export_stacked(SPLITS, sources, annotations, CLASSES, root, colour="vis") == ds  # reused
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    luma = export_stacked(SPLITS, sources, annotations, CLASSES, root, colour=None)  # another layout: rebuilt
    assert luma.channels == ("ir", "vis") and luma.key != ds.key
    swapped = export_stacked(SPLITS, sources, annotations, CLASSES, root, colour=None, modalities=["vis", "ir"])
    assert swapped.channels == ("vis", "ir") and swapped.key != luma.key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "yolo"]  # no temporary folder left


def test_stacked_export_reports_every_bad_modality_before_writing(tmp_path):
    sources, annotations = make_sources(tmp_path / "src", 4)
    del sources["00001"]["vis"]
    cv2.imwrite(str(sources["00002"]["vis"]), np.zeros((20, 24, 3), np.uint8))  # not registered with its IR
    sources["00003"]["vis"] = tmp_path / "src" / "missing.png"
    vis = sources["00000"]["vis"]
    vis.write_bytes(vis.read_bytes()[:-12])  # truncated: its header is whole, its pixels are not
    annotations["00000"] = Annotation("00000", 48, 40, (Box("Truck", 1, 1, 5, 5),))  # not a class of the dataset
    with pytest.raises(DatasetError) as info:
        export_stacked(SPLITS, sources, annotations, CLASSES, tmp_path / "yolo", colour="vis")
    message = str(info.value)
    for expected in ("00001: no vis image", "00002: vis image is 24x20, ir is 48x40", "00003: vis image file not found",
                     "00000: class(es) Truck", f"00000: unreadable vis image {vis}: cannot decode image"):
        assert expected in message
    assert not (tmp_path / "yolo").exists()
    with pytest.raises(ValueError, match="two or more"):
        export_stacked(SPLITS, sources, annotations, CLASSES, tmp_path / "yolo", colour=None, modalities=["ir"])
    with pytest.raises(ValueError, match="colour modality 'rgb'"):
        export_stacked(SPLITS, sources, annotations, CLASSES, tmp_path / "yolo", colour="rgb")


def test_grey_file_of_the_colour_modality_fills_its_three_channels(tmp_path):
    sources, annotations = make_sources(tmp_path / "src", 4)
    cv2.imwrite(str(sources["00002"]["vis"]), np.full((40, 48), 90, np.uint8))  # a night frame stored grey
    ds = export_stacked(SPLITS, sources, annotations, CLASSES, tmp_path / "yolo", colour="vis")
    loaded, _, _ = _ultralytics_read(ds, tmp_path / ".ultralytics")
    assert loaded.shape[2] == 4 and [int(v) for v in loaded[0, 0]] == [IR, 90, 90, 90]


_TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from tests.test_early_fusion import SPLITS, CLASSES, make_sources
from detection import load_preset, train_and_evaluate
from detection.export import export_stacked

work = Path(sys.argv[1])
sources, annotations = make_sources(work / "src", 12)
splits = {"train": [f"{i:05d}" for i in range(8)], "val": [f"{i:05d}" for i in range(8, 12)]}
ds = export_stacked(splits, sources, annotations, CLASSES, work / "yolo", colour="vis")
kwargs = {**load_preset("tiny").train_kwargs(), "epochs": 1}
result = train_and_evaluate(ds, **kwargs, out_dir=work / "runs", name="stack")
state = torch.load(Path(result.run_dir) / "weights" / "best.pt", map_location="cpu", weights_only=False)
first = state["model"].model[0].conv.weight
(work / "summary.json").write_text(json.dumps({"result": result.to_dict(), "first_conv": list(first.shape),
                                               "channels": list(ds.channels)}))
"""


@pytest.mark.slow
def test_one_epoch_on_four_channel_images_trains_and_scores_offline(tmp_path):
    """The tiny recipe, one epoch, on ir + colour visible stacked (4 channels), through ``train_and_evaluate``
    unchanged, in a subprocess with an empty HOME and working directory under the network guard."""
    home, cwd, work, netlog = tmp_path / "home", tmp_path / "cwd", tmp_path / "work", tmp_path / "netguard.log"
    home.mkdir(), cwd.mkdir()
    netlog.touch()
    env = {**os.environ, "HOME": str(home), "NETGUARD_LOG": str(netlog), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MPLCONFIGDIR", None)
    env.pop("YOLO_CONFIG_DIR", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_TRAIN_SCRIPT), str(work)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    summary = json.loads((work / "summary.json").read_text())
    result = summary["result"]
    assert summary["channels"] == ["ir", "vis.B", "vis.G", "vis.R"]
    assert summary["first_conv"][1] == 4  # the detector's first convolution reads the 4 channels
    assert result["epochs_completed"] == 1 and result["n_images"] == 4
    assert list(result["ap50"]) == list(CLASSES) and result["absent_classes"] == ["People"]
    assert result["coco_map50"] is not None and result["map50_deployed"] is not None  # both protocols scored
    assert Path(result["predictions_path"]).parent.is_dir()
    assert netlog.read_text() == "" and list(home.rglob("*")) == [] and list(cwd.rglob("*")) == []
    assert "faster-coco-eval" not in output and "faster_coco_eval" not in output  # detection.ultralytics_env


class _Stop(Exception):
    """Raised by a stand-in for Ultralytics' training once it has seen its arguments."""


@pytest.mark.parametrize("nir, colour, jitter", [(True, None, False), (False, "vis", True)])
def test_only_a_three_channel_stack_trains_without_colour_jitter(tmp_path, monkeypatch, nir, colour, jitter):
    """Ultralytics' HSV jitter reads a 3-channel image as BGR colour (it skips every other channel count), so
    a stack of three one-channel modalities is trained without it; a 4-channel stack keeps the recipe as given
    (Ultralytics skips it there itself)."""
    from detection import train as train_module

    sources, annotations = make_sources(tmp_path / "src", 4, nir=nir)
    ds = export_stacked(SPLITS, sources, annotations, CLASSES, tmp_path / "yolo", colour=colour)
    seen = {}

    def fit(model, train_args, mirror):
        seen.update(train_args)
        raise _Stop

    monkeypatch.setattr(train_module, "_fit", fit)
    with pytest.raises(_Stop):
        train_module.train_and_evaluate(ds, epochs=1, imgsz=64, batch=2, out_dir=tmp_path / "runs",
                                        extra_args={"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4})
    assert len(ds.channels) == (3 if not jitter else 4)
    expected = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4} if jitter else {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
    assert {k: seen[k] for k in expected} == expected
