"""Scene-preserving train/val/test splits for datasets of consecutive video frames (pure functions).

M3FD's 4,200 frames are consecutive video frames: neighbouring ids are near-duplicates of one scene. A split
that scatters frames at random puts the same scene in train and val, and the detector's mAP then measures
memory, not fusion. Everything here therefore splits *groups* of frames, never single frames:

* **Scenes** from the dataset's own ``meta/scenario.json`` (M3FD's file: a list of scenarios
  ``{name, scene: [{name, range: [{min, max}, ...]}]}``, frame number = integer id). A scene is identified as
  ``"<scenario>/<scene>"`` (``"night/alley"``): M3FD reuses scene names across scenarios (``alley`` is in
  night, daytime and overcast), and the shared sample's published lists treat those as different scenes. All
  ranges of one scene form one group, and scenes that share a frame (M3FD lists 81 frames in two scenes, e.g.
  ``daytime/mountain`` and ``daytime/tunnel``) are merged into one group so the shared frames cannot leak.
* **Contiguous id blocks** where no scene is known (:func:`id_blocks`): a new block starts where the id
  sequence jumps (a gap larger than ``max_gap``), where the label (e.g. scenario) changes, or after
  ``block_size`` frames. Inside a block neighbours stay together; at a ``block_size`` cut two adjacent frames of
  one long run may land in different splits, so a larger ``block_size`` leaks less and balances worse. Blocks
  cannot know that a scene comes back later in the sequence (M3FD records most scenes in several runs): on
  M3FD's 4,200 ids without ``scenario.json``, 16 of its 36 scenes would cross splits. Use the scene file when
  there is one.

:func:`split_groups` assigns the groups to splits: groups are visited largest first (sizes jittered by a
seeded random factor, :data:`ORDER_JITTER`), and each goes to the split with the largest shortfall, counted as
the shortfall within the group's stratum (e.g. its scenario, so that every scenario shows up in val and test
when it has enough scenes) plus the overall shortfall. Every split with a positive fraction ends up non-empty
when there are enough groups (the smallest group of the split most above its target is moved otherwise). The
result is deterministic for a seed.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
# Frames per block for the id-block fallback. In M3FD's scenario.json a scene has 24-440 frames (median about
# 95) in contiguous runs of 1-208 frames (median 32): a 100-frame block is about one scene, and 4,200 frames
# give about 42 blocks, enough for 80/10/10 to come out close to target.
DEFAULT_BLOCK_SIZE = 100
# Groups are placed largest first (as in greedy bin balancing, which keeps the shares close to target), with
# each size multiplied by a seeded random factor from this range so that the seed changes the split. Measured
# on M3FD's scenario.json over 20 seeds: shares within 1.3 points of 80/10/10, every scenario in val and test
# (a plain shuffled order missed by up to 6 points).
ORDER_JITTER: tuple[float, float] = (0.5, 1.5)
# Largest step between consecutive ids that still counts as "the same run" (1: any missing frame starts a block).
DEFAULT_MAX_GAP = 1

_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class SceneTable:
    """What a ``scenario.json`` says about each frame number.

    Attributes:
        scenario: frame number -> scenario name (``"night"``).
        scene: frame number -> scene key ``"<scenario>/<scene>"``; the first listed scene when a frame is
            listed in several.
        group: scene key -> split group label; scenes that share a frame get the same label (their keys
            joined with ``+``), every other scene keeps its own key.
        multi_scene_frames: frame numbers listed in more than one scene.
        scene_order: scene keys in file order.
    """

    scenario: dict[int, str]
    scene: dict[int, str]
    group: dict[str, str]
    multi_scene_frames: tuple[int, ...]
    scene_order: tuple[str, ...]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions (three non-negative numbers, positive sum); return them normalised."""
    values = tuple(float(f) for f in fractions)
    if len(values) != len(SPLIT_NAMES) or any(not np.isfinite(f) or f < 0 for f in values) or sum(values) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) with a positive sum; got {fractions}")
    total = sum(values)
    return tuple(f / total for f in values)  # type: ignore[return-value]


def frame_number(image_id: str) -> int | None:
    """The frame number of an id (M3FD: ``"00042"`` -> 42); None when the id is not all digits."""
    return int(image_id) if image_id.isdigit() else None


def _sequence_key(image_id: str) -> tuple[str, int]:
    """(prefix, number) for ordering ids as frame sequences: ``"clip3_0012"`` -> (``"clip3_"``, 12)."""
    match = _TRAILING_NUMBER.match(image_id)
    if match is None:
        return image_id, -1
    return match.group(1), int(match.group(2))


def parse_scenario_json(obj: Any) -> SceneTable:
    """Read the structure of M3FD's ``meta/scenario.json`` (already loaded with ``json.load``).

    Raises:
        ValueError: the structure is not a list of ``{name, scene: [{name, range: [{min, max}]}]}`` with
            integer ``min <= max``; the message says where.
    """
    if not isinstance(obj, list):
        raise ValueError("expected a list of scenarios")
    scenario: dict[int, str] = {}
    scene: dict[int, str] = {}
    frames_of: dict[str, list[int]] = {}
    owners: dict[int, list[str]] = defaultdict(list)
    for i, entry in enumerate(obj):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("scene"), list):
            raise ValueError(f"scenario #{i}: expected {{'name': str, 'scene': [...]}}")
        for j, sc in enumerate(entry["scene"]):
            if not isinstance(sc, dict) or not isinstance(sc.get("name"), str) or not isinstance(sc.get("range"), list):
                raise ValueError(f"scenario '{entry['name']}' scene #{j}: expected {{'name': str, 'range': [...]}}")
            key = f"{entry['name']}/{sc['name']}"
            frames = frames_of.setdefault(key, [])
            for r in sc["range"]:
                lo, hi = (r.get("min"), r.get("max")) if isinstance(r, dict) else (None, None)
                if not isinstance(lo, int) or not isinstance(hi, int) or isinstance(lo, bool) or lo > hi:
                    raise ValueError(f"scene '{key}': bad range {r!r} (expected integer min <= max)")
                for frame in range(lo, hi + 1):
                    if key not in owners[frame]:
                        owners[frame].append(key)
                    scenario.setdefault(frame, entry["name"])
                    scene.setdefault(frame, key)
                frames.append(lo)
    # Union-find over scene keys: scenes sharing any frame end up in one group.
    parent = {key: key for key in frames_of}

    def find(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    multi = sorted(frame for frame, keys in owners.items() if len(keys) > 1)
    for frame in multi:
        first, *rest = owners[frame]
        for other in rest:
            a, b = find(first), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = defaultdict(list)
    for key in frames_of:
        members[find(key)].append(key)
    group = {key: "+".join(sorted(members[find(key)])) for key in frames_of}
    return SceneTable(scenario, scene, group, tuple(multi), tuple(frames_of))


def id_blocks(
    ids: Sequence[str],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_gap: int = DEFAULT_MAX_GAP,
    labels: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Cut ids into contiguous blocks of consecutive frames; return id -> block label (``"block:<first id>"``).

    Ids are ordered as frame sequences (same prefix, trailing number). A new block starts where the prefix
    changes, where the number jumps by more than ``max_gap``, where ``labels`` (e.g. the scenario) differs
    from the previous id's, or when the block already holds ``block_size`` ids. An id without a trailing
    number is a block of its own.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    labels = labels or {}
    out: dict[str, str] = {}
    prev_key: tuple[str, int] | None = None
    prev_id: str | None = None
    current, count = "", 0
    for image_id in sorted(ids, key=lambda i: (_sequence_key(i), i)):
        key = _sequence_key(image_id)
        new_block = (
            prev_key is None
            or key[1] < 0
            or key[0] != prev_key[0]
            or key[1] - prev_key[1] > max_gap
            or labels.get(image_id) != labels.get(prev_id)  # type: ignore[arg-type]
            or count >= block_size
        )
        if new_block:
            current, count = f"block:{image_id}", 0
        out[image_id] = current
        count += 1
        prev_key, prev_id = key, image_id
    return out


def scene_groups(
    ids: Sequence[str],
    scene_of: Mapping[str, str | None],
    *,
    merged: Mapping[str, str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_gap: int = DEFAULT_MAX_GAP,
    block_labels: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """id -> split group: its scene (via ``merged``, e.g. :attr:`SceneTable.group`) or, for ids with no scene,
    a contiguous block of such ids (:func:`id_blocks`; ``block_labels`` start new blocks where they change)."""
    merged = merged or {}
    groups: dict[str, str] = {}
    unlabelled = []
    for image_id in ids:
        scene = scene_of.get(image_id)
        if scene is None:
            unlabelled.append(image_id)
        else:
            groups[image_id] = "scene:" + merged.get(scene, scene)
    groups.update(id_blocks(unlabelled, block_size=block_size, max_gap=max_gap, labels=block_labels))
    return groups


def split_groups(
    group_sizes: Mapping[str, int],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    strata: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Assign whole groups to train/val/test; returns group -> split name.

    Args:
        group_sizes: group label -> number of images in it.
        fractions: target (train, val, test) shares of the images; normalised to sum 1. A zero share gives
            an empty split.
        seed: the shuffle seed; the same inputs and seed always give the same assignment.
        strata: group label -> stratum (e.g. scenario); targets are met within each stratum first.

    Raises:
        ValueError: fewer groups than splits with a positive share, so some split would be empty.
    """
    shares = np.asarray(check_fractions(fractions))
    active = [k for k in range(len(SPLIT_NAMES)) if shares[k] > 0]
    names = sorted(group_sizes)
    if len(names) < len(active):
        raise ValueError(
            f"cannot make {len(active)} non-empty splits that keep scenes whole from only {len(names)} scene group(s); "
            "add data, provide meta/{train,val,test}.txt, or set a zero fraction"
        )
    strata = strata or {}
    rng = np.random.default_rng(seed)
    stratum_total: dict[str | None, float] = defaultdict(float)
    for name in names:
        stratum_total[strata.get(name)] += group_sizes[name]
    total = float(sum(group_sizes.values()))
    in_stratum: dict[str | None, np.ndarray] = defaultdict(lambda: np.zeros(len(SPLIT_NAMES)))
    overall = np.zeros(len(SPLIT_NAMES))
    members: list[list[str]] = [[] for _ in SPLIT_NAMES]
    assignment: dict[str, int] = {}
    jittered = np.array([group_sizes[n] for n in names], float) * rng.uniform(*ORDER_JITTER, len(names))
    for index in np.argsort(-jittered, kind="stable"):
        name = names[int(index)]
        stratum = strata.get(name)
        local = shares * stratum_total[stratum] - in_stratum[stratum]
        global_ = shares * total - overall
        tie_break = rng.random(len(SPLIT_NAMES))
        k = max(active, key=lambda s: (local[s] + global_[s], tie_break[s]))
        assignment[name] = k
        members[k].append(name)
        in_stratum[stratum][k] += group_sizes[name]
        overall[k] += group_sizes[name]
    # Repair: a split with a positive share must not stay empty; take the smallest group of the split most
    # above its target (among those with at least two groups).
    for k in active:
        if members[k]:
            continue
        donor = max((d for d in active if len(members[d]) > 1), key=lambda d: overall[d] - shares[d] * total)
        moved = min(members[donor], key=lambda n: (group_sizes[n], n))
        members[donor].remove(moved)
        members[k].append(moved)
        assignment[moved] = k
        overall[donor] -= group_sizes[moved]
        overall[k] += group_sizes[moved]
    return {name: SPLIT_NAMES[k] for name, k in sorted(assignment.items())}


def split_ids(
    ids: Sequence[str],
    groups: Mapping[str, str],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    strata: Mapping[str, str | None] | None = None,
) -> dict[str, list[str]]:
    """Split ids so that every group (``groups``: id -> group label) lies in exactly one split.

    ``strata`` maps an id to its stratum (e.g. scenario); a group's stratum is that of its first id. Returns
    ``{"train": [...], "val": [...], "test": [...]}`` with sorted ids. See :func:`split_groups`.
    """
    strata = strata or {}
    sizes: dict[str, int] = defaultdict(int)
    group_stratum: dict[str, str | None] = {}
    for image_id in sorted(ids):
        label = groups[image_id]
        sizes[label] += 1
        group_stratum.setdefault(label, strata.get(image_id))
    assignment = split_groups(sizes, fractions=fractions, seed=seed, strata=group_stratum)
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for image_id in sorted(ids):
        out[assignment[groups[image_id]]].append(image_id)
    return out


def split_of(splits: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Invert ``{split: ids}`` to ``{id: split}``."""
    return {image_id: name for name, members in splits.items() for image_id in members}


def labels_crossing_splits(splits: Mapping[str, Sequence[str]], labels: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Labels (scenes, groups) whose ids sit in more than one split: label -> the splits, in split order."""
    seen: dict[str, set[str]] = defaultdict(set)
    for name, members in splits.items():
        for image_id in members:
            label = labels.get(image_id)
            if label is not None:
                seen[label].add(name)
    order = {name: i for i, name in enumerate(splits)}
    return {label: sorted(s, key=order.__getitem__) for label, s in sorted(seen.items()) if len(s) > 1}


def adjacent_frames_split_apart(
    splits: Mapping[str, Sequence[str]], scene_of: Mapping[str, str | None] | None = None
) -> list[tuple[str, str]]:
    """Pairs of consecutive frames (same prefix, numbers n and n+1) that sit in different splits.

    Pairs whose two frames both have a known scene and the scenes differ are not reported: that is a scene
    boundary, not a leak. What remains are possible near-duplicate leaks where no scene says otherwise.
    """
    scene_of = scene_of or {}
    where = split_of(splits)
    by_key = {_sequence_key(i): i for i in where}
    out = []
    for (prefix, number), image_id in sorted(by_key.items()):
        if number < 0:
            continue
        neighbour = by_key.get((prefix, number + 1))
        if neighbour is None or where[neighbour] == where[image_id]:
            continue
        a, b = scene_of.get(image_id), scene_of.get(neighbour)
        if a is not None and b is not None and a != b:
            continue
        out.append((image_id, neighbour))
    return out


# ------------------------------------------------------------------------------------- settling a dataset's split


@dataclass(frozen=True)
class SplitRule:
    """How a reader settles its split: the dataset's own lists when it has them, else a split made here.

    Attributes:
        seed: seed of a split made here.
        fractions: target (train, val, test) shares of a split made here.
        block_size: frames per block where no scene is known (:func:`id_blocks`).
        given_method: ``split_info["method"]`` for given lists (M3FD's reader says ``"meta-lists"``).
        carve_val: when given lists have a train list but no val list, this share of train becomes val,
            keeping scenes whole (LLVIP gives train and test only). None leaves val as given (empty).
    """

    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    block_size: int = DEFAULT_BLOCK_SIZE
    given_method: str = "given-lists"
    carve_val: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", check_fractions(self.fractions))
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.carve_val is not None and not 0 < self.carve_val < 1:
            raise ValueError(f"the val share carved from train must lie in (0, 1), got {self.carve_val}")


def settle_split(
    ids: Sequence[str],
    rule: SplitRule,
    *,
    given: Mapping[str, Sequence[str]] | None = None,
    given_sources: Sequence[str] = (),
    scenario: Mapping[str, str] | None = None,
    scene: Mapping[str, str] | None = None,
    scene_group: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[str]], dict, dict[str, str], list[str]]:
    """A dataset's split: (split -> ids, ``split_info``, id -> split group, notes worth a warning).

    ``given`` lists (already restricted to ``ids``) are used as they are, with val carved from train when
    ``rule.carve_val`` says so. Otherwise the ids are split here: whole scenes (``scene``; ``scene_group``
    merges scenes that share frames) where the dataset names them, contiguous id blocks elsewhere, stratified
    by ``scenario``. ``split_info["method"]``: ``rule.given_method``, ``"scenario-scenes"`` or ``"id-blocks"``.

    Raises:
        ValueError: too few groups to make every split with a positive share non-empty.
    """
    scenario, scene = dict(scenario or {}), dict(scene or {})
    if given is not None:
        splits = {name: list(given.get(name, [])) for name in SPLIT_NAMES}
        info: dict[str, Any] = {"method": rule.given_method, "seed": None, "fractions": None,
                                "sources": list(given_sources)}
        notes: list[str] = []
        if rule.carve_val is not None and splits["train"] and not splits["val"]:
            splits["train"], splits["val"], carved, notes = carve_val(
                splits["train"], rule, scene=scene, scene_group=scene_group)
            info.update(seed=rule.seed, carved_val=carved)
        info["unassigned"] = len(ids) - len(split_of(splits))
        return splits, _with_achieved(info, splits), {i: scene[i] for i in ids if i in scene}, notes

    if scene:
        method = "scenario-scenes"
        groups = scene_groups(ids, scene, merged=scene_group, block_size=rule.block_size, block_labels=scenario)
    else:
        method = "id-blocks"
        groups = id_blocks(ids, block_size=rule.block_size, labels=scenario)
    splits = split_ids(ids, groups, fractions=rule.fractions, seed=rule.seed, strata=scenario or None)
    info = {
        "method": method,
        "seed": rule.seed,
        "fractions": list(rule.fractions),
        "block_size": rule.block_size,
        "max_gap": DEFAULT_MAX_GAP,
        "stratified_by": "scenario" if scenario else None,
        "groups": len(set(groups.values())),
        "ids_without_scene": sum(1 for i in ids if i not in scene),
        "unassigned": 0,
    }
    return splits, _with_achieved(info, splits), groups, []


def carve_val(
    train: Sequence[str],
    rule: SplitRule,
    *,
    scene: Mapping[str, str],
    scene_group: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str], dict, list[str]]:
    """Move ``rule.carve_val`` of the train ids to val, whole scenes (or id blocks where no scene is known)
    at a time. Returns (train, val, what was done, notes).

    With a single group there is no way to keep it whole: val is then the last frames of the sequence (one
    contiguous run, so one cut), and the note and ``shares_scenes_with_train`` say that val and train share
    those scenes, which flatters val scores and therefore the epoch picked on them.
    """
    share = float(rule.carve_val or 0)
    groups = scene_groups(train, scene, merged=scene_group, block_size=rule.block_size)
    info: dict[str, Any] = {"fraction": share, "from": "train"}
    if len(set(groups.values())) >= 2:
        sizes: dict[str, int] = defaultdict(int)
        for image_id in train:
            sizes[groups[image_id]] += 1
        where = split_groups(sizes, fractions=(1 - share, share, 0), seed=rule.seed)
        kept = sorted(i for i in train if where[groups[i]] == "train")
        val = sorted(i for i in train if where[groups[i]] == "val")
        info.update(method="whole-groups", groups=len(sizes), shares_scenes_with_train=[])
        return kept, val, info, []
    ordered = sorted(train, key=lambda i: (_sequence_key(i), i))
    n_val = max(1, math.ceil(share * len(ordered))) if len(ordered) > 1 else 0
    kept, val = sorted(ordered[: len(ordered) - n_val]), sorted(ordered[len(ordered) - n_val:])
    shared = sorted({scene[i] for i in val if i in scene})
    info.update(method="last-frames", groups=1, shares_scenes_with_train=shared)
    where = f"scene {', '.join(shared)}" if shared else "one run of frames"
    note = (f"train holds a single {'scene' if shared else 'block of frames'} ({where}): val is its last {n_val} "
            f"frame(s) ({val[0]}..{val[-1]}), so val and train share it and val scores are optimistic"
            if val else "train holds a single id: no val could be carved")
    return kept, val, info, [note]


def _with_achieved(info: dict, splits: Mapping[str, Sequence[str]]) -> dict:
    total = sum(len(v) for v in splits.values()) or 1
    info["achieved_fractions"] = {name: round(len(v) / total, 4) for name, v in splits.items()}
    return info
