"""M3FD reader (data/m3fd.py): layout, validation of every bad input, meta lists, splits, summary, CLI."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.errors import DatasetError
from data.m3fd import BOX_CLIP_TOLERANCE_PX, M3FD_CLASSES, DatasetWarning, is_m3fd_root, load_m3fd, main
from data.splits import labels_crossing_splits
from data.types import Box
from tests.conftest import shared_path

W, H = 40, 30


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(buf.tobytes())


def voc(boxes, size=(W, H)) -> str:
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in boxes
    )
    declared = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>x.png</filename>{declared}{objects}</annotation>"


def make_m3fd(root: Path, ids, *, boxes=None, ir_ext=".png", vis_ext=".png", meta: dict | None = None) -> Path:
    """A tiny M3FD-layout dataset: 40x30 images, one People box per image unless ``boxes`` says otherwise."""
    rng = np.random.default_rng(0)
    for image_id in ids:
        write_image(root / "Ir" / f"{image_id}{ir_ext}", rng.integers(0, 255, (H, W), dtype=np.uint8))
        write_image(root / "Vis" / f"{image_id}{vis_ext}", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        (root / "Annotation").mkdir(parents=True, exist_ok=True)
        (root / "Annotation" / f"{image_id}.xml").write_text(voc((boxes or {}).get(image_id, [("People", 2, 3, 10, 20)])))
    for name, content in (meta or {}).items():
        (root / "meta").mkdir(parents=True, exist_ok=True)
        text = json.dumps(content) if name.endswith(".json") else "".join(f"{i}\n" for i in content)
        (root / "meta" / name).write_text(text)
    return root


def scenario_json(scenes: dict[tuple[str, str], tuple[int, int]]) -> list:
    scenarios: dict[str, list] = {}
    for (scenario, name), (lo, hi) in scenes.items():
        scenarios.setdefault(scenario, []).append({"name": name, "range": [{"min": lo, "max": hi}]})
    return [{"name": k, "scene": v} for k, v in scenarios.items()]


IDS = [f"{i:05d}" for i in range(12)]


def load_quietly(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        return load_m3fd(root, **kw)


def problems_of(root, **kw) -> str:
    with pytest.raises(DatasetError) as info:
        load_m3fd(root, **kw)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ good input


def test_reads_a_clean_dataset_with_mixed_formats(tmp_path):
    root = make_m3fd(tmp_path / "d", IDS[:4], vis_ext=".jpg")
    # 16-bit IR, 3-channel IR, grey visible, other extensions: all accepted.
    (root / "Ir" / "00001.png").unlink()
    write_image(root / "Ir" / "00001.tiff", np.full((H, W), 40000, np.uint16))
    (root / "Ir" / "00002.png").unlink()
    write_image(root / "Ir" / "00002.bmp", np.zeros((H, W, 3), np.uint8))
    (root / "Vis" / "00003.jpg").unlink()
    write_image(root / "Vis" / "00003.png", np.zeros((H, W), np.uint8))
    assert is_m3fd_root(root) and not is_m3fd_root(root / "Ir")
    ds = load_quietly(root, block_size=1)  # consecutive ids: one block each, so three splits can be made
    assert ds.ids == IDS[:4]
    assert ds.ir_path("00001").name == "00001.tiff" and ds.vis_path("00000").suffix == ".jpg"
    ann = ds.annotation("00000")
    assert (ann.width, ann.height) == (W, H) and ann.boxes == (Box("People", 2, 3, 10, 20),)
    assert [p.stem for p in ds.pairs()] == IDS[:4] and ds.pairs()[0].ir == ds.ir_path("00000")
    assert ds.scenario_of("00000") is None and ds.scene_of("00000") is None
    with pytest.raises(KeyError):
        ds.ir_path("99999")


def test_16_bit_infrared_keeps_the_upper_byte(tmp_path):
    """16-bit IR is reduced by keeping the upper byte (v >> 8), as cv2.imread and the reference evaluator do: not
    scaled (v / 257 rounds 0x12FF to 19, not 18), not the lower byte, not clipped at 255, not min-max stretched."""
    from data.io import read_gray_reference, read_ir

    root = make_m3fd(tmp_path / "d", IDS[:3])
    values = np.array([0x12FF, 0xFFFF, 0x0100, 0x00FF, 0, 40000, 0x8080], np.uint16)
    image = np.resize(values, (H, W)).astype(np.uint16)
    for ext in (".png", ".tiff"):
        for old in (root / "Ir").glob("00001.*"):
            old.unlink()
        write_image(root / "Ir" / f"00001{ext}", image)
        path = load_quietly(root, block_size=1).ir_path("00001")
        assert path.suffix == ext and cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
        expected = (image >> 8).astype(np.uint8)
        assert expected[0, :len(values)].tolist() == [18, 255, 1, 0, 0, 156, 128]
        np.testing.assert_array_equal(read_ir(path), expected)
        np.testing.assert_array_equal(read_gray_reference(path), expected.astype(np.float32))  # what metrics read


# ------------------------------------------------------------------------------------------------- bad input


def test_missing_partners_on_every_side_are_all_named(tmp_path):
    root = make_m3fd(tmp_path / "d", IDS[:5])
    (root / "Vis" / "00001.png").unlink()
    (root / "Ir" / "00002.png").unlink()
    (root / "Annotation" / "00003.xml").unlink()
    message = problems_of(root)
    assert "3 problem(s)" in message
    assert "Ir/00001.png" in message and "Vis/00002.png" in message and "00003" in message
    assert "missing an .xml file for '00003'" in message and "missing an image for '00001'" in message


def test_undecodable_images_and_size_mismatch(tmp_path):
    root = make_m3fd(tmp_path / "d", IDS[:4])
    (root / "Ir" / "00000.png").write_bytes(b"not an image")
    (root / "Vis" / "00001.png").write_bytes((root / "Vis" / "00001.png").read_bytes()[:60])  # truncated
    write_image(root / "Vis" / "00002.png", np.zeros((H + 2, W, 3), np.uint8))
    message = problems_of(root)
    assert "unreadable image" in message and "Ir/00000.png" in message and "Vis/00001.png" in message
    assert "size mismatch for '00002'" in message and f"{W}x{H + 2}" in message
    # validate=False does not decode images, so only structure and annotations are checked.
    ds = load_m3fd(root, validate=False, block_size=1)
    assert len(ds.ids) == 4


def test_annotation_problems_each_named(tmp_path):
    boxes = {
        "00000": [("person", 2, 3, 10, 20)],  # unknown class
        "00001": [("Car", 20, 3, 10, 20)],  # xmin > xmax
        "00002": [("Car", 2, 3, W + 50, 20)],  # far outside
    }
    root = make_m3fd(tmp_path / "d", IDS[:5], boxes=boxes)
    (root / "Annotation" / "00003.xml").write_text("<annotation><object>")  # bad XML
    (root / "Annotation" / "00004.xml").write_text(voc([("Car", 2, 3, 10, 20)], size=(W * 2, H)))  # size mismatch
    message = problems_of(root)
    assert "5 problem(s)" in message
    assert "00000.xml" in message and "unknown class 'person'" in message and ", ".join(M3FD_CLASSES) in message
    assert "00001.xml" in message and "min > max" in message
    assert "00002.xml" in message and "outside" in message
    assert "00003.xml" in message and "does not parse" in message
    assert "00004.xml" in message and f"declared size {W * 2}x{H}" in message


def test_odd_annotations_and_lists_are_named_not_crashed_on(tmp_path):
    boxes = {
        "00000": [("Car", "nan", 3, "nan", 20)],  # parses as a float, is no coordinate
        "00001": [("Car", -1, 3, 0, 20)],  # within the clip tolerance but wholly off the image
    }
    root = make_m3fd(tmp_path / "d", IDS[:6], boxes=boxes, meta={"val.txt": IDS[4:5], "test.txt": IDS[5:6]})
    (root / "Annotation" / "00002.xml").write_text('<?xml version="1.0" encoding="bogus"?><annotation/>')
    (root / "Annotation" / "00003.XML").write_text(voc([("Car", 1, 1, 5, 5)]))  # a second file for 00003
    (root / "meta" / "train.txt").write_text("00000\n00001\n", encoding="utf-16")  # Notepad's "Unicode"
    message = problems_of(root)
    assert "5 problem(s)" in message, message
    assert "00000.xml" in message and "not a finite number" in message
    assert "00001.xml" in message and "wholly outside" in message
    assert "00002.xml" in message and "does not parse" in message
    assert "two annotation files for '00003'" in message and "00003.XML" in message
    assert "train.txt" in message and "not UTF-8" in message


def test_exif_orientation_is_ignored_so_pairs_stay_registered(tmp_path):
    root = make_m3fd(tmp_path / "d", IDS[:4], vis_ext=".jpg")
    # JPEG with an EXIF APP1 segment saying "rotate 90 degrees" (orientation 6), spliced in after SOI.
    tiff = b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
    app1 = b"\xff\xe1" + (len(tiff) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + tiff
    path = root / "Vis" / "00000.jpg"
    data = path.read_bytes()
    path.write_bytes(data[:2] + app1 + data[2:])
    assert cv2.imread(str(path)).shape[:2] == (W, H)  # OpenCV's default read would rotate it
    ds = load_m3fd(root, block_size=1)
    assert ds.pairs()[0].stem == "00000"
    from data.io import read_gray_reference, read_visible
    assert read_visible(path)[0].shape == read_gray_reference(path).shape == (H, W)


def test_two_bad_files_are_both_named(tmp_path):
    root = make_m3fd(tmp_path / "d", IDS[:6], boxes={"00004": [("Dog", 1, 1, 5, 5)]})
    (root / "Ir" / "00001.png").write_bytes(b"")
    message = problems_of(root)
    assert "Ir/00001.png" in message and "Annotation/00004.xml" in message and "2 problem(s)" in message


def test_box_a_pixel_outside_is_clipped_with_a_warning(tmp_path):
    tol = BOX_CLIP_TOLERANCE_PX
    boxes = {"00000": [("Car", 0, 1, W + 1, H), ("People", 1, 1 - tol, 5, 5)], "00001": [("Car", 1, 1, W, H)]}
    root = make_m3fd(tmp_path / "d", IDS[:4], boxes=boxes)
    with pytest.warns(DatasetWarning, match="2 box") as record:
        ds = load_m3fd(root, block_size=1)
    assert "00000.xml" in str(record[0].message)
    assert ds.annotation("00000").boxes == (Box("Car", 1, 1, W, H), Box("People", 1, 1, 5, 5))
    assert ds.annotation("00001").boxes == (Box("Car", 1, 1, W, H),)  # exactly at the border: untouched


def test_bad_inputs_write_nothing(tmp_path):
    root = make_m3fd(tmp_path / "d", IDS[:3], boxes={"00000": [("Dog", 1, 1, 5, 5)]})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DatasetError):
        load_m3fd(root)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_not_an_m3fd_root(tmp_path):
    (tmp_path / "Ir").mkdir()
    message = problems_of(tmp_path)
    assert "Vis/" in message and "Annotation/" in message


# ------------------------------------------------------------------------------------------ meta and splits


def test_given_lists_are_used_as_they_are(tmp_path):
    lists = {"train.txt": ["00005", "00000", "00001"], "val.txt": ["00002.png"], "test.txt": ["00003", "00004"]}
    root = make_m3fd(tmp_path / "d", IDS[:6], meta=lists)
    ds = load_quietly(root, seed=123)
    assert ds.splits == {"train": ["00005", "00000", "00001"], "val": ["00002"], "test": ["00003", "00004"]}
    assert ds.split_info["method"] == "meta-lists" and ds.split_info["seed"] is None
    assert ds.split_of("00002") == "val"
    assert [p.stem for p in ds.pairs("test")] == ["00003", "00004"] and list(ds.annotations("val")) == ["00002"]


def test_listed_but_missing_ids_fail_naming_them(tmp_path):
    lists = {"train.txt": ["00000", "00077"], "val.txt": ["00001", "00088"], "test.txt": ["00002", "00000"]}
    message = problems_of(make_m3fd(tmp_path / "d", IDS[:3], meta=lists))
    assert "train.txt lists 1 id(s)" in message and "00077" in message and "val.txt lists 1 id(s)" in message
    assert "00088" in message
    assert "id 00000 is in both the train and the test split list" in message


def test_images_in_no_list_warn_with_a_count(tmp_path):
    root = make_m3fd(tmp_path / "d", IDS[:5], meta={"train.txt": ["00000", "00001"], "val.txt": ["00002"]})
    with pytest.warns(DatasetWarning, match="2 image"):
        ds = load_m3fd(root)
    assert ds.splits["test"] == [] and ds.split_info["unassigned"] == 2 and ds.split_of("00004") is None
    assert ds.summary()["unassigned"] == 2


def test_per_scenario_split_and_scenario_lists(tmp_path):
    meta = {
        "night_train.txt": ["00000", "00001"], "night_val.txt": ["00002"], "daytime_train.txt": ["00003"],
        "daytime_test.txt": ["00004"], "overcast.txt": ["00005", "00099"],
    }
    root = make_m3fd(tmp_path / "d", IDS[:6], meta=meta)
    with pytest.warns(DatasetWarning, match="1 image"):  # 00005 is in no split list
        ds = load_m3fd(root)
    assert ds.splits == {"train": ["00003", "00000", "00001"], "val": ["00002"], "test": ["00004"]}
    assert ds.scenario_of("00001") == "night" and ds.scenario_of("00004") == "daytime"
    assert ds.scenario_of("00005") == "overcast"  # a plain scenario list; 00099 (absent) is ignored
    assert ds.scenario_ids("train") == {"daytime": ["00003"], "night": ["00000", "00001"]}


def test_scenario_json_split_keeps_scenes_whole_and_is_recorded(tmp_path):
    ids = [f"{i:05d}" for i in range(60)]
    scenes = {("night", "alley"): (0, 9), ("daytime", "alley"): (10, 19), ("overcast", "square"): (20, 34),
              ("night", "road"): (35, 44), ("daytime", "gate"): (45, 54)}  # 55-59: in no scene
    root = make_m3fd(tmp_path / "d", ids, meta={"scenario.json": scenario_json(scenes)})
    ds = load_quietly(root, seed=3, fractions=(0.6, 0.2, 0.2))
    assert ds.split_info["method"] == "scenario-scenes" and ds.split_info["ids_without_scene"] == 5
    assert all(ds.splits.values())
    assert ds.scene_of("00003") == "night/alley" and ds.scene_of("00012") == "daytime/alley"
    assert ds.scenario_of("00040") == "night" and ds.scene_of("00057") is None
    assert labels_crossing_splits(ds.splits, {i: ds.scene_of(i) for i in ds.ids}) == {}
    assert len({ds.split_of(i) for i in ids[55:]}) == 1  # the scene-less tail is one block
    assert load_quietly(root, seed=3, fractions=(0.6, 0.2, 0.2)).splits == ds.splits
    out = tmp_path / "run" / "split.json"
    ds.write_split(out)
    recorded = json.loads(out.read_text())
    assert recorded["method"] == "scenario-scenes" and recorded["seed"] == 3 and recorded["splits"] == ds.splits
    assert recorded["ids"]["00003"] == {"split": ds.split_of("00003"), "scenario": "night", "scene": "night/alley",
                                        "group": "scene:night/alley"}
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


def test_block_fallback_keeps_neighbours_together(tmp_path):
    ids = [f"{i:05d}" for i in [*range(0, 8), *range(30, 36), *range(50, 58), *range(90, 94)]]
    root = make_m3fd(tmp_path / "d", ids)
    ds = load_quietly(root, seed=1, block_size=100)
    assert ds.split_info["method"] == "id-blocks" and ds.split_info["groups"] == 4
    for run in (ids[:8], ids[8:14], ids[14:22], ids[22:]):
        assert len({ds.split_of(i) for i in run}) == 1
    assert ds.summary()["leakage"]["adjacent_frames_split_apart"] == []
    with pytest.raises(DatasetError, match="non-empty splits"):
        load_m3fd(make_m3fd(tmp_path / "tiny", IDS[:4]))  # one run, one block: cannot fill three splits


def test_summary_counts_and_cli(tmp_path, capsys):
    boxes = {i: [("People", 1, 1, 5, 5), ("Car", 2, 2, 9, 9)] for i in IDS[:6]}
    boxes["00005"] = [("Lamp", 1, 1, 3, 3)]
    meta = {"train.txt": IDS[:4], "val.txt": ["00004"], "test.txt": ["00005"],
            "scenario.json": scenario_json({("night", "a"): (0, 3), ("daytime", "b"): (4, 4), ("night", "c"): (5, 5)})}
    root = make_m3fd(tmp_path / "d", IDS[:6], boxes=boxes, meta=meta)
    summary = load_quietly(root).summary()
    assert summary["images"] == 6 and summary["boxes"] == 11
    assert summary["splits"]["train"]["boxes"]["People"] == 4 and summary["splits"]["test"]["boxes"]["Lamp"] == 1
    assert summary["scenarios"]["val"] == {"daytime": {"images": 1, "boxes": dict.fromkeys(M3FD_CLASSES, 0) | {"People": 1, "Car": 1}, "total_boxes": 2}}
    assert summary["leakage"]["ok"] and summary["leakage"]["scenes_checked"] == 3
    assert main(["--root", str(root), "--summary", "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "Per scenario" in printed and "train/night" in printed and "Scene leakage: none" in printed
    assert json.loads((tmp_path / "s.json").read_text())["splits"]["train"]["images"] == 4
    # A list that puts one scene in two splits is reported.
    (root / "meta" / "val.txt").write_text("00003\n00004\n")
    (root / "meta" / "train.txt").write_text("00000\n00001\n00002\n")
    assert load_quietly(root).summary()["leakage"]["scenes_crossing_splits"] == {"night/a": ["train", "val"]}
    assert main(["--root", str(root), "--summary"]) == 0
    assert "night/a: train, val" in capsys.readouterr().out
    (root / "Ir" / "00000.png").write_bytes(b"")
    assert main(["--root", str(root)]) == 2
    assert "Ir/00000.png" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- real M3FD sample


def test_real_sample_lists_and_scenarios():
    ds = load_quietly(shared_path("m3fd_sample"))
    assert len(ds.ids) == 35
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 22, "val": 6, "test": 7}
    assert ds.split_info["method"] == "meta-lists"
    assert (ds.scenario_of("00388"), ds.scene_of("00388")) == ("night", "night/driveway")
    assert ds.scenario_of("02195") == "daytime" and ds.scenario_of("00000") == "overcast"
    assert ds.scenario_of("00255") == "challenge" and ds.scene_of("00255") == "challenge/heavy_rain"
    summary = ds.summary()
    assert summary["splits"]["train"]["boxes"] == {"People": 63, "Car": 74, "Bus": 1, "Motorcycle": 2, "Lamp": 4, "Truck": 3}
    assert summary["splits"]["val"]["total_boxes"] == 138 and summary["splits"]["test"]["total_boxes"] == 88
    assert summary["leakage"]["ok"]
    first = ds.annotation("00000")
    assert (first.width, first.height) == (1024, 768) and first.boxes[0] == Box("People", 46, 372, 82, 478)


def test_real_sample_without_lists_gets_a_scene_split(tmp_path):
    sample = shared_path("m3fd_sample")
    for name in ("Ir", "Vis", "Annotation"):
        (tmp_path / name).symlink_to(sample / name)
    (tmp_path / "meta").mkdir()
    shutil.copy(sample / "meta" / "scenario.json", tmp_path / "meta")
    ds = load_quietly(tmp_path, seed=0)
    assert ds.split_info["method"] == "scenario-scenes" and all(ds.splits.values())
    assert ds.summary()["leakage"]["scenes_crossing_splits"] == {}
