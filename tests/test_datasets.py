"""Datasets by name (data/datasets): the registry, the shared checks on every reader, LLVIP (its sample and its
bad inputs), the folder reader (three modalities, VOC and YOLO, split lists, scenes), the synthetic reader, the
Pair type and the data CLI."""
from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.__main__ import main
from data.datasets import Dataset, DatasetSpecError, dataset_names, load_dataset
from data.datasets.labels import read_yolo
from data.errors import DatasetError, DatasetWarning
from data.types import Box, Pair
from tests.conftest import shared_path

W, H = 40, 30


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(path.suffix, image)[1].tobytes())


def voc(boxes, size=(W, H)) -> str:
    objects = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                      f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in boxes)
    declared = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    return f"<annotation>{declared}{objects}</annotation>"


def images(root: Path, folders: dict[str, str], ids, ext=".png") -> None:
    """Random images, grey for every folder but the one called 'vis'-like (colour)."""
    rng = np.random.default_rng(0)
    for image_id in ids:
        for folder in folders.values():
            shape = (H, W, 3) if folder.lower().startswith(("vis", "rgb")) else (H, W)
            write_image(root / folder / f"{image_id}{ext}", rng.integers(0, 255, shape, dtype=np.uint8))


def make_llvip(root: Path, train, test, *, labelled=None, boxes=None) -> Path:
    """A tiny LLVIP layout: 40x30 JPEGs, one person box per labelled id."""
    for split, ids in (("train", train), ("test", test)):
        images(root, {"ir": f"infrared/{split}", "vis": f"visible/{split}"}, ids, ext=".jpg")
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for image_id in labelled if labelled is not None else [*train, *test]:
        (root / "Annotations" / f"{image_id}.xml").write_text(
            voc((boxes or {}).get(image_id, [("person", 2, 3, 10, 20)])))
    return root


def make_folder(root: Path, ids, *, modalities=("ir", "vis", "nir"), boxes=None, yolo=None, classes=None,
                splits=None) -> Path:
    images(root, {m: m for m in modalities}, ids)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        if yolo is not None:
            (root / "labels" / f"{image_id}.txt").write_text(yolo.get(image_id, "0 0.5 0.5 0.5 0.5\n"))
        else:
            (root / "labels" / f"{image_id}.xml").write_text(voc((boxes or {}).get(image_id, [("car", 2, 3, 10, 20)])))
    if classes is not None:
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for name, listed in (splits or {}).items():
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in listed))
    return root


def problems_of(name, root, **options) -> str:
    with pytest.raises(DatasetError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        load_dataset(name, root, **options)
    return str(info.value)


def quietly(name, root, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        return load_dataset(name, root, **options)


IDS = [f"{i:05d}" for i in range(9)]
THREE_SPLITS = {"train": IDS[:5], "val": IDS[5:7], "test": IDS[7:]}


# ------------------------------------------------------------------------------------------------ registry


def test_registry_names_and_errors(tmp_path):
    assert {"m3fd", "llvip", "synthetic", "folder"} <= set(dataset_names())
    with pytest.raises(DatasetSpecError, match="unknown dataset 'kitti'; known: m3fd, llvip"):
        load_dataset("kitti", tmp_path)
    with pytest.raises(DatasetSpecError, match="takes no option fractions; it takes: seed, val_fraction, validate"):
        load_dataset("llvip", tmp_path, fractions=(1, 1, 1))
    with pytest.raises(DatasetSpecError, match="does not import"):
        load_dataset("no_such_module:load", tmp_path)


def test_a_reader_given_as_module_function_is_used(tmp_path):
    root = make_folder(tmp_path / "d", IDS, splits=THREE_SPLITS)
    ds = load_dataset("data.datasets.folder:load_folder", root)
    assert isinstance(ds, Dataset) and ds.name == "folder" and len(ds.ids) == 9


# -------------------------------------------------------------------------------------------------- Pair


def test_pair_sources_by_name_and_the_two_band_form():
    legacy = Pair("a", "a_ir.png", "a_vis.png", {"scene": "s"})
    named = Pair("a", {"ir": "a_ir.png", "vis": "a_vis.png"})
    assert legacy == named == Pair.two_band("a", "a_ir.png", "a_vis.png") and hash(legacy) == hash(named)
    assert legacy.ir == Path("a_ir.png") and legacy.colour == "vis" and legacy.meta == {"scene": "s"}
    three = Pair("b", {"vis": "v.png", "nir": "n.png", "lwir": "l.png"})
    assert three.modalities == ("vis", "nir", "lwir") and three.colour == "vis"
    assert Pair("c", {"nir": "n", "lwir": "l"}).colour is None
    with pytest.raises(KeyError, match="has no 'ir' image; it has: vis, nir, lwir"):
        three.ir
    with pytest.raises(ValueError, match="colour modality 'rgb' is not among"):
        Pair("d", {"ir": "i"}, colour="rgb")
    assert pickle.loads(pickle.dumps(three)) == three


# ---------------------------------------------------------------------------- shared checks, every reader


def _bad_m3fd(tmp_path):
    root = tmp_path / "m3fd"
    images(root, {"ir": "Ir", "vis": "Vis"}, IDS[:3])
    (root / "Annotation").mkdir()
    for i in IDS[:3]:
        (root / "Annotation" / f"{i}.xml").write_text(voc([("People", 2, 3, 10, 20)]))
    return "m3fd", root, {}, root / "Ir" / "00000.png", root / "Annotation" / "00001.xml", "Dog"


def _bad_llvip(tmp_path):
    root = make_llvip(tmp_path / "llvip", ["010001", "010002"], ["190001"])
    return "llvip", root, {}, root / "infrared" / "train" / "010001.jpg", root / "Annotations" / "010002.xml", "dog"


def _bad_folder(tmp_path):
    root = make_folder(tmp_path / "folder", IDS[:3], classes=["car"], splits=THREE_SPLITS)
    return "folder", root, {}, root / "nir" / "00000.png", root / "labels" / "00001.xml", "bus"


def _bad_synthetic(tmp_path, synthetic_root):
    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, root)
    first, second = sorted(root.glob("Ir/*.png"))[:2]
    return "synthetic", root, {}, first, root / "Annotation" / f"{second.stem}.xml", "Dog"


@pytest.mark.parametrize("make", [_bad_m3fd, _bad_llvip, _bad_folder, _bad_synthetic])
def test_every_reader_names_every_offender_and_writes_nothing(make, tmp_path, request):
    extra = (request.getfixturevalue("synthetic_root"),) if make is _bad_synthetic else ()
    name, root, options, image, label, unknown = make(tmp_path, *extra)
    image.write_bytes(b"not an image")
    label.write_text(voc([(unknown, 2, 3, 10, 20)], size=None))
    before = sorted(tmp_path.rglob("*"))
    message = problems_of(name, root, **options)
    assert f"unreadable image {image}" in message
    assert str(label) in message and f"unknown class '{unknown}'" in message
    assert sorted(tmp_path.rglob("*")) == before


def test_missing_partners_and_size_mismatch_in_a_three_modality_folder(tmp_path):
    root = make_folder(tmp_path / "d", IDS[:4], classes=["car"])
    (root / "nir" / "00001.png").unlink()
    (root / "labels" / "00002.xml").unlink()
    write_image(root / "vis" / "00003.png", np.zeros((H + 2, W, 3), np.uint8))
    write_image(root / "nir" / "00009.png", np.zeros((H, W), np.uint8))
    message = problems_of("folder", root)
    assert "6 problem(s)" in message, message  # 00009 is missing on three sides
    assert f"missing an image for '00001' in {root / 'nir'}/" in message
    assert f"missing an .xml file for '00002' in {root / 'labels'}/" in message
    assert "size mismatch for '00003'" in message and f"{W}x{H + 2}" in message
    assert f"missing an image for '00009' in {root / 'ir'}/" in message


# --------------------------------------------------------------------------------------------------- LLVIP


def test_a_pipeline_run_on_llvip_shows_each_dataset_warning_once(tmp_path, monkeypatch):
    """The run loads the dataset (its warnings shown), then the DAE-Fuse trained inside the run reads it again by
    root and options: that second read's warnings are not shown again. Counted under "always", so a repeat shows
    even where Python's once-per-place memory (reset by torch's imports) would have hidden it."""
    from types import SimpleNamespace

    from data.store import KeyedStore
    from fusion.training.data import resolve_training_roots
    from pipelines import engine
    from pipelines.config import PipelineConfig
    from pipelines.datasets import load_run_dataset

    root = shared_path("llvip_sample", "LLVIP")
    cfg = PipelineConfig(out=tmp_path / "out", data=root, dataset="llvip", preset="tiny", progress=False)
    read = []

    def train(fusion_cfg, roots, run_dir, **kwargs):  # the trainer's first step: its data, by root and options
        read.append(resolve_training_roots(roots, fusion_cfg.data, kwargs["split"]))
        return SimpleNamespace(best_checkpoint=str(run_dir / "best.pt"), wall_time_s=0.0)

    monkeypatch.setattr("fusion.training.train.train", train)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        dataset = load_run_dataset(cfg, root)
        engine.train_fusion_here(cfg, "tiny", dataset, KeyedStore(cfg.out / "state"))
    messages = [str(w.message) for w in shown if issubclass(w.category, DatasetWarning)]
    assert read and len(read[0][0]) == len(dataset.pairs(cfg.train_split))  # the same dataset was read again
    assert any("9 image(s) have no label file" in m for m in messages)
    assert len(messages) == len(set(messages)) >= 2, messages


def test_llvip_sample_counts_splits_and_unlabelled_ids():
    root = shared_path("llvip_sample", "LLVIP")
    with pytest.warns(DatasetWarning) as record:
        ds = load_dataset("llvip", root)
    messages = [str(w.message) for w in record]
    assert len(ds.ids) == 44 and len(ds.labelled_ids) == 35 and ds.class_names == ("person",)
    assert ds.unlabelled == ("010101", "010102", "190006", "200002", "200003", "200004", "200005", "200006", "200007")
    assert any("9 image(s) have no label file" in m for m in messages)
    assert sum(len(a.boxes) for a in ds.annotations().values()) == 135
    assert ds.modalities == ("ir", "vis") and ds.colour == "vis"
    # test as LLVIP gives it; val carved from train: one scene there, so its last frames, said loudly
    assert ds.splits["test"] == ["190001", "190002", "190003", "190004", "190005"]
    assert ds.splits["val"] == ["010026", "010027", "010028", "010029", "010030"]
    assert len(ds.splits["train"]) == 25 and not set(ds.splits["train"]) & set(ds.splits["val"])
    assert ds.split_info["carved_val"]["shares_scenes_with_train"] == ["01"]
    assert any("val and train share it" in m for m in messages)
    summary = ds.summary()
    assert {k: v["total_boxes"] for k, v in summary["splits"].items()} == {"train": 112, "val": 13, "test": 10}
    assert summary["leakage"]["scenes_crossing_splits"] == {"01": ["train", "val"]}
    assert len(ds.pairs()) == 44 and ds.pairs("test")[0].ir == root / "infrared" / "test" / "190001.jpg"
    with pytest.raises(KeyError, match="unlabelled"):
        ds.annotation("190006")
    first = ds.annotation("010003")  # CRLF, no XML declaration, <depth>1</depth> beside a 3-channel JPEG
    assert (first.width, first.height) == (1280, 1024) and first.boxes[0] == Box("person", 45, 384, 149, 610)


def test_llvip_val_keeps_scenes_whole_when_train_has_several(tmp_path):
    train = [f"{scene:02d}{frame:04d}" for scene in (1, 2, 3, 4, 5, 6) for frame in range(1, 5)]
    root = make_llvip(tmp_path / "d", train, ["190001", "190002"])
    ds = quietly("llvip", root, val_fraction=0.3, seed=1)
    assert ds.split_info["carved_val"]["method"] == "whole-groups" and ds.splits["val"]
    assert ds.summary()["leakage"]["scenes_crossing_splits"] == {}
    assert {ds.scene_of(i) for i in ds.splits["val"]}.isdisjoint({ds.scene_of(i) for i in ds.splits["train"]})
    assert ds.splits["test"] == ["190001", "190002"]


def test_llvip_bad_inputs_are_all_named(tmp_path):
    root = make_llvip(tmp_path / "d", ["010001", "010002", "010003"], ["190001", "190002"],
                      boxes={"010002": [("person", 5, 3, 2, 20)], "190001": [("person", 1, 1, W + 9, 5)]})
    shutil.move(root / "visible" / "train" / "010003.jpg", root / "visible" / "test" / "010003.jpg")
    (root / "infrared" / "test" / "190002.jpg").unlink()
    (root / "Annotations" / "190009.xml").write_text(voc([]))
    message = problems_of("llvip", root)
    assert "'010003' is in infrared/train/ but in visible/test/" in message
    assert "010002.xml" in message and "min > max" in message
    assert "190001.xml" in message and "outside the 40x30 image" in message
    assert "missing an image for '190002'" in message and "missing an image for '190009'" in message
    (tmp_path / "empty").mkdir()
    assert "not an LLVIP-layout folder: missing infrared/train/" in problems_of("llvip", tmp_path / "empty")


# -------------------------------------------------------------------------------------------------- folder


def test_folder_with_a_third_modality_split_lists_and_scenes(tmp_path):
    root = make_folder(tmp_path / "d", IDS, classes=["car", "person"], splits=THREE_SPLITS)
    (root / "scenes.csv").write_text("id,scene,scenario\n" + "".join(f"{i},s{int(i) // 3},night\n" for i in IDS))
    ds = quietly("folder", root)
    assert ds.modalities == ("ir", "nir", "vis") and ds.colour == "vis" and ds.class_names == ("car", "person")
    assert ds.splits == THREE_SPLITS and ds.split_info["method"] == "split-lists"
    pair = ds.pairs("val")[0]
    assert pair.sources == {"ir": root / "ir" / "00005.png", "nir": root / "nir" / "00005.png",
                            "vis": root / "vis" / "00005.png"}
    assert ds.path("00005", "nir") == root / "nir" / "00005.png" and ds.scenario_ids("test") == {"night": IDS[7:]}
    assert ds.summary()["leakage"]["scenes_crossing_splits"] == {"s1": ["train", "val"], "s2": ["val", "test"]}
    with pytest.raises(KeyError, match="no 'depth' modality; it has: ir, nir, vis"):
        ds.path("00000", "depth")
    # modalities named explicitly, mapped onto folders, no colour
    ds = quietly("folder", root, modalities="lwir=ir,swir=nir", colour="none")
    assert ds.modalities == ("lwir", "swir") and ds.colour is None and ds.pairs()[0].sources["swir"].parent.name == "nir"


def test_folder_without_lists_makes_a_split_keeping_scenes_whole(tmp_path):
    ids = [f"{i:05d}" for i in range(30)]
    root = make_folder(tmp_path / "d", ids, modalities=("thermal", "rgb"))
    (root / "scenes.csv").write_text("".join(f"{i},scene{int(i) // 5}\n" for i in ids))
    ds = quietly("folder", root, fractions=(0.6, 0.2, 0.2), seed=2)
    assert ds.colour == "rgb" and ds.class_names == ("car",)  # VOC names found, no classes.txt
    assert ds.split_info["method"] == "scenario-scenes" and all(ds.splits.values())
    assert ds.summary()["leakage"]["scenes_crossing_splits"] == {}
    # given train and test but no val: val carved from train, whole scenes
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("".join(f"{i}\n" for i in ids[:20]))
    (root / "splits" / "test.txt").write_text("".join(f"{i}\n" for i in ids[20:]))
    ds = quietly("folder", root, val_fraction=0.25)
    assert ds.splits["test"] == ids[20:] and len(ds.splits["val"]) == 5 and len(ds.splits["train"]) == 15
    assert ds.summary()["leakage"]["scenes_crossing_splits"] == {}


def test_folder_yolo_labels_become_voc_boxes(tmp_path):
    yolo = {"00000": "1 0.5 0.5 0.5 0.2\n0 0.125 0.5 0.25 1\n"}
    root = make_folder(tmp_path / "d", IDS, yolo=yolo, classes=["car", "person"], splits=THREE_SPLITS)
    ds = quietly("folder", root)
    # person: cx 20 px, w 20 px -> columns 10..30 continuous -> VOC 11..30; cy 15, h 6 -> 12..18 -> 13..18
    assert ds.annotation("00000").boxes == (Box("person", 11, 13, 30, 18), Box("car", 1, 1, 10, 30))
    assert read_yolo(root / "labels" / "00000.txt", (W, H), ("car", "person")).boxes[1] == Box("car", 1, 1, 10, 30)


def test_folder_yolo_problems_are_all_named(tmp_path):
    yolo = {"00000": "2 0.5 0.5 0.1 0.1\n", "00001": "0 0.5 0.5 0.1\n", "00002": "0 0.5 0.5 0 0.1\n",
            "00003": "0 1.5 0.5 0.2 0.2\n"}
    root = make_folder(tmp_path / "d", IDS, yolo=yolo, classes=["car", "person"], splits=THREE_SPLITS)
    message = problems_of("folder", root)
    assert "4 problem(s)" in message, message
    assert "00000.txt: line 1: class index 2 is not in the class list (0..1)" in message
    assert "00001.txt: line 1 '0 0.5 0.5 0.1': expected 'class cx cy w h'" in message
    assert "00002.txt: line 1: width and height must be positive" in message
    assert "00003.txt: object #1 'car'" in message and "outside the 40x30 image" in message
    shutil.move(root / "classes.txt", root / "labels" / "classes.txt")  # where labelImg writes it
    assert problems_of("folder", root) == message  # the same problems, and classes.txt is no sample's labels
    (root / "labels" / "classes.txt").unlink()
    assert "YOLO labels" in problems_of("folder", root) and "need a class list" in problems_of("folder", root)


def test_folder_layout_problems(tmp_path):
    root = make_folder(tmp_path / "d", IDS[:3], modalities=("ir",), splits={"train": ["00000", "00077"]})
    (root / "labels" / "00000.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    message = problems_of("folder", root, colour="vis")
    assert "found 1 modality folder(s)" in message and "holds both VOC .xml and YOLO .txt labels" in message
    assert "colour modality 'vis' is not among the modalities (ir)" in message
    root = make_folder(tmp_path / "e", IDS[:3], splits={"train": ["00000", "00077"], "test": ["00000"]})
    message = problems_of("folder", root)
    assert "train.txt lists 1 id(s) with no complete sample: 00077" in message
    assert "id 00000 is in both the train and the test split list" in message
    assert "modality folder" in problems_of("folder", root, modalities="ir,depth")


def test_folder_missing_labels_as_unlabelled_or_background(tmp_path):
    root = make_folder(tmp_path / "d", IDS, splits=THREE_SPLITS)
    (root / "labels" / "00001.xml").unlink()
    assert "missing an .xml file for '00001'" in problems_of("folder", root)
    with pytest.warns(DatasetWarning, match="1 image"):
        ds = load_dataset("folder", root, missing_labels="unlabelled")
    assert ds.unlabelled == ("00001",) and "00001" not in ds.splits["train"] and len(ds.pairs()) == 9
    ds = quietly("folder", root, missing_labels="background")
    assert ds.annotation("00001").boxes == () and (ds.annotation("00001").width, ds.annotation("00001").height) == (W, H)


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_reader_takes_an_extra_band(tmp_path, synthetic_root):
    ds = quietly("synthetic", synthetic_root)
    assert ds.name == "synthetic" and ds.modalities == ("ir", "vis") and ds.split_info["method"] == "meta-lists"
    assert ds.class_names == ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
    root = tmp_path / "s"
    shutil.copytree(synthetic_root, root)
    shutil.copytree(root / "Ir", root / "Nir")  # a third band stands in for the generator's --nir output
    ds = quietly("synthetic", root)
    assert ds.modalities == ("ir", "vis", "nir") and ds.pairs()[0].sources["nir"].parent.name == "Nir"
    (root / "synthetic.json").unlink()
    assert "python -m data.synthetic" in problems_of("synthetic", root)


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_prints_any_readers_summary(tmp_path, capsys):
    root = make_folder(tmp_path / "d", IDS, classes=["car"], splits=THREE_SPLITS)
    out = tmp_path / "summary.json"
    assert main(["--dataset", "folder", "--data", str(root), "--summary", "--json", str(out),
                 "--dataset-option", "modalities=ir,vis,nir"]) == 0
    printed = capsys.readouterr().out
    assert "folder dataset" in printed and "Modalities: ir, vis, nir (colour: vis)" in printed
    assert json.loads(out.read_text())["splits"]["val"]["images"] == 2
    assert main(["--list"]) == 0 and "llvip" in capsys.readouterr().out
    (root / "vis" / "00000.png").write_bytes(b"")
    out.unlink()
    assert main(["--dataset", "folder", "--root", str(root), "--json", str(out)]) == 2
    assert "vis/00000.png" in capsys.readouterr().err and not out.exists()
    assert main(["--dataset", "llvip", "--root", str(root), "--dataset-option", "bogus=1"]) == 2
    assert "takes no option bogus" in capsys.readouterr().err


def test_fusion_training_reads_its_pairs_through_a_named_reader(tmp_path):
    """``data.dataset=llvip`` (``python -m fusion.training.train --dataset llvip``): DAE-Fuse trains on LLVIP's train
    split and validates on the val the reader carved, with no M3FD layout in sight."""
    from fusion.training.config import load_train_config
    from fusion.training.data import resolve_training_pairs

    root = make_llvip(tmp_path / "LLVIP", [f"01{k:04d}" for k in range(10)], ["190001", "190002"])
    cfg = load_train_config(preset="tiny", overrides=["data.dataset=llvip"]).data
    train, val = resolve_training_pairs(root, cfg)
    dataset = load_dataset("llvip", root)
    assert sorted(p.stem for p in train) == sorted(dataset.splits["train"])
    assert sorted(p.stem for p in val) == sorted(dataset.splits["val"]) and val
    assert all(p.ir.is_file() and p.vis.is_file() for p in train + val)
