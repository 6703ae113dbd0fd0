"""Scene-preserving splits (data/splits.py): pure functions on ids and scene labels, no files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.splits import (
    SPLIT_NAMES,
    SplitRule,
    adjacent_frames_split_apart,
    carve_val,
    check_fractions,
    frame_number,
    id_blocks,
    labels_crossing_splits,
    parse_scenario_json,
    scene_groups,
    settle_split,
    split_groups,
    split_ids,
    split_of,
)
from tests.conftest import shared_path

SCENARIOS = ("daytime", "night", "overcast", "challenge")


def synthetic_scenario_file(num_ids: int = 3000, seed: int = 0) -> tuple[list, set[int]]:
    """An M3FD-style scenario.json object: runs of 5-120 frames, each given to a scene of a scenario; scenes
    come back several times (several ranges); a few frames are listed in two scenes and some in none."""
    rng = np.random.default_rng(seed)
    scenes = [(SCENARIOS[k % 4], f"place{k:02d}") for k in range(40)]
    ranges: dict[tuple[str, str], list[dict]] = {s: [] for s in scenes}
    uncovered: set[int] = set()
    start = 0
    while start < num_ids:
        length = int(rng.integers(5, 120))
        stop = min(num_ids, start + length) - 1
        if rng.random() < 0.05:
            uncovered.update(range(start, stop + 1))
        else:
            ranges[scenes[int(rng.integers(len(scenes)))]].append({"min": start, "max": stop})
        start = stop + 1
    # Two scenes that share frames (as M3FD's daytime/mountain and daytime/tunnel do).
    ranges[scenes[0]].append({"min": 10, "max": 12})
    ranges[scenes[1]].append({"min": 12, "max": 14})
    obj = [
        {"name": scenario, "scene": [{"name": name, "range": r} for (sc, name), r in ranges.items() if sc == scenario and r]}
        for scenario in SCENARIOS
    ]
    return obj, uncovered


def test_scenario_json_split_never_puts_a_scene_in_two_splits():
    obj, uncovered = synthetic_scenario_file(3000)
    table = parse_scenario_json(obj)
    ids = [f"{i:05d}" for i in range(3000)]
    scene = {i: table.scene[int(i)] for i in ids if int(i) in table.scene}
    scenario = {i: table.scenario[int(i)] for i in ids if int(i) in table.scenario}
    assert len(scene) == 3000 - len(uncovered) and uncovered
    groups = scene_groups(ids, scene, merged=table.group, block_labels=scenario)
    results = []
    for seed in range(6):
        splits = split_ids(ids, groups, fractions=(0.8, 0.1, 0.1), seed=seed, strata=scenario)
        assert sorted(i for s in splits.values() for i in s) == ids  # every id exactly once
        assert labels_crossing_splits(splits, scene) == {}
        assert labels_crossing_splits(splits, groups) == {}  # blocks of scene-less ids too
        where = split_of(splits)
        assert where["00012"] == where["00010"] == where["00014"]  # the two scenes sharing frame 12 stay together
        shares = np.array([len(splits[n]) for n in SPLIT_NAMES]) / len(ids)
        assert np.abs(shares - [0.8, 0.1, 0.1]).max() < 0.05, shares
        results.append(splits)
    assert split_ids(ids, groups, seed=3, strata=scenario) == results[3]  # deterministic
    assert len({tuple(r["val"]) for r in results}) == len(results)  # the seed matters


def test_real_m3fd_scenario_file_gives_balanced_stratified_splits():
    """M3FD's own scenario.json over all 4,200 ids: shares near 80/10/10 and every scenario in val and test."""
    table = parse_scenario_json(json.loads(shared_path("m3fd_sample", "meta", "scenario.json").read_text()))
    ids = [f"{i:05d}" for i in range(4200)]
    scene = {i: table.scene[int(i)] for i in ids if int(i) in table.scene}
    scenario = {i: table.scenario[int(i)] for i in ids if int(i) in table.scenario}
    assert len(scene) == 4089 and len(table.multi_scene_frames) == 81
    groups = scene_groups(ids, scene, merged=table.group, block_labels=scenario)
    for seed in range(4):
        splits = split_ids(ids, groups, seed=seed, strata=scenario)
        assert labels_crossing_splits(splits, scene) == {}
        shares = np.array([len(splits[n]) for n in SPLIT_NAMES]) / len(ids)
        assert np.abs(shares - [0.8, 0.1, 0.1]).max() < 0.02, shares
        for name in ("val", "test"):
            assert {scenario.get(i) for i in splits[name]} >= set(SCENARIOS)


def test_parse_scenario_json_scene_keys_and_merging():
    obj = [
        {"name": "night", "scene": [{"name": "alley", "range": [{"min": 0, "max": 2}, {"min": 10, "max": 11}]}]},
        {"name": "daytime", "scene": [
            {"name": "alley", "range": [{"min": 3, "max": 5}]},
            {"name": "tunnel", "range": [{"min": 5, "max": 6}]},
        ]},
    ]
    table = parse_scenario_json(obj)
    assert table.scene[11] == "night/alley" and table.scene[3] == "daytime/alley"  # same name, other scenario
    assert table.scenario[4] == "daytime"
    assert table.scene[5] == "daytime/alley"  # first listed wins for the shared frame
    assert table.multi_scene_frames == (5,)
    assert table.group["daytime/tunnel"] == table.group["daytime/alley"] == "daytime/alley+daytime/tunnel"
    assert table.group["night/alley"] == "night/alley"


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "night"},
        [{"name": "night", "scene": [{"name": "a", "range": [{"min": 5, "max": 2}]}]}],
        [{"name": "night", "scene": [{"name": "a", "range": [{"min": "0", "max": 2}]}]}],
        [{"name": "night", "scene": [{"range": []}]}],
    ],
)
def test_parse_scenario_json_rejects_bad_structure(bad):
    with pytest.raises(ValueError):
        parse_scenario_json(bad)


def test_id_blocks_cut_at_jumps_labels_and_block_size():
    ids = [f"{i:05d}" for i in [*range(0, 10), *range(20, 25), *range(25, 30)]]
    labels = {i: ("night" if int(i) >= 25 else "day") for i in ids}
    blocks = id_blocks(ids, block_size=4, labels=labels)
    assert blocks["00000"] == blocks["00003"] != blocks["00004"]  # every 4 frames
    assert blocks["00008"] == blocks["00009"] != blocks["00020"]  # the jump 9 -> 20
    assert blocks["00024"] != blocks["00025"]  # label change
    assert id_blocks(ids, block_size=100)["00009"] != id_blocks(ids, block_size=100)["00020"]
    assert len(set(id_blocks(ids, block_size=100).values())) == 2
    mixed = id_blocks(["a1", "a2", "b3", "x", "y"], block_size=10)
    assert mixed["a1"] == mixed["a2"] != mixed["b3"] and mixed["x"] != mixed["y"]  # prefixes; no number
    assert id_blocks(["00002", "00004"], block_size=10, max_gap=2)["00004"] == "block:00002"


def test_block_fallback_keeps_neighbours_together():
    rng = np.random.default_rng(0)
    runs, start = [], 0
    for _ in range(60):  # 60 runs of 5-40 consecutive frames separated by gaps
        length = int(rng.integers(5, 41))
        runs.append([f"{i:05d}" for i in range(start, start + length)])
        start += length + int(rng.integers(2, 30))
    ids = [i for run in runs for i in run]
    for seed in range(3):
        splits = split_ids(ids, id_blocks(ids, block_size=50), seed=seed)
        where = split_of(splits)
        for run in runs:  # each run is shorter than a block: all of it in one split
            assert len({where[i] for i in run}) == 1
        assert adjacent_frames_split_apart(splits) == []
        assert all(splits[n] for n in SPLIT_NAMES)


def test_split_groups_keeps_positive_splits_non_empty_and_respects_zero_fractions():
    sizes = {"big": 100, "small1": 1, "small2": 1}
    assignment = split_groups(sizes, fractions=(0.8, 0.1, 0.1), seed=0)
    assert sorted(assignment.values()) == sorted(SPLIT_NAMES)
    only_train = split_groups(sizes, fractions=(1, 0, 0), seed=0)
    assert set(only_train.values()) == {"train"}
    with pytest.raises(ValueError, match="non-empty splits"):
        split_groups({"a": 5, "b": 5}, fractions=(0.8, 0.1, 0.1))
    assert set(split_groups({"a": 5, "b": 5}, fractions=(0.5, 0.5, 0)).values()) == {"train", "val"}


def test_check_fractions_normalises_and_rejects():
    assert check_fractions((8, 1, 1)) == pytest.approx((0.8, 0.1, 0.1))
    for bad in [(0.5, 0.5), (-0.1, 0.6, 0.5), (0, 0, 0), (float("nan"), 1, 1)]:
        with pytest.raises(ValueError):
            check_fractions(bad)


def test_adjacent_frames_ignore_scene_boundaries():
    splits = {"train": ["00001", "00002"], "val": ["00003", "00005"], "test": ["00004"]}
    scenes = {"00001": "a", "00002": "a", "00003": "b", "00004": "b"}
    assert adjacent_frames_split_apart(splits, scenes) == [("00003", "00004"), ("00004", "00005")]
    assert labels_crossing_splits(splits, scenes) == {"b": ["val", "test"]}
    assert frame_number("00042") == 42 and frame_number("img1") is None


# ------------------------------------------------------------------------------------- settling a dataset's split


def test_split_rule_checks_its_values():
    assert SplitRule(fractions=(8, 1, 1)).fractions == pytest.approx((0.8, 0.1, 0.1))
    for bad in ({"block_size": 0}, {"carve_val": 1.0}, {"carve_val": 0}, {"fractions": (1, -1, 1)}):
        with pytest.raises(ValueError):
            SplitRule(**bad)


def test_settle_split_uses_given_lists_and_carves_val_only_when_asked():
    ids = [f"{s:02d}{f:04d}" for s in range(1, 7) for f in range(5)]
    scene = {i: i[:2] for i in ids}
    given = {"train": ids[:25], "test": ids[25:]}
    splits, info, groups, notes = settle_split(ids, SplitRule(given_method="folders"), given=given, scene=scene)
    assert splits == {"train": ids[:25], "val": [], "test": ids[25:]} and info["method"] == "folders" and not notes
    splits, info, _, notes = settle_split(ids, SplitRule(carve_val=0.2, seed=3), given=given, scene=scene)
    assert splits["test"] == ids[25:] and len(splits["val"]) == 5 and not notes
    assert sorted(splits["train"] + splits["val"]) == ids[:25] and info["carved_val"]["method"] == "whole-groups"
    assert labels_crossing_splits(splits, scene) == {}
    assert info["achieved_fractions"]["test"] == round(5 / 30, 4)


def test_settle_split_without_lists_keeps_scenes_whole_and_is_seeded():
    ids = [f"{i:05d}" for i in range(60)]
    scene = {i: f"s{int(i) // 6}" for i in ids}
    a = settle_split(ids, SplitRule(seed=1), scene=scene)
    assert a[1]["method"] == "scenario-scenes" and all(a[0].values()) and labels_crossing_splits(a[0], scene) == {}
    assert settle_split(ids, SplitRule(seed=1), scene=scene)[0] == a[0]
    assert settle_split(ids, SplitRule(seed=1, block_size=6))[1]["method"] == "id-blocks"


def test_carve_val_from_a_single_scene_takes_its_last_frames_and_says_so():
    train = [f"01{f:04d}" for f in range(1, 21)]
    kept, val, info, notes = carve_val(train, SplitRule(carve_val=0.15), scene={i: "01" for i in train})
    assert val == train[-3:] and kept == train[:-3]
    assert info["method"] == "last-frames" and info["shares_scenes_with_train"] == ["01"]
    assert len(notes) == 1 and "val and train share it" in notes[0]
