"""What a dataset is to the rest of fusebench: the :class:`Dataset` Protocol (what the pipeline, the trainers and
the CLIs may ask) and :class:`CheckedDataset`, the one implementation every reader returns (built by
:func:`data.datasets.checks.build_dataset` after the shared checks).

Vocabulary: an *id* is one sample (the file stem shared by its images); a *modality* is a named image source
(``"ir"``, ``"vis"``, ``"nir"``, ...); the *colour* modality is the one whose chroma a fused image keeps (None
when no image is in colour). *Labelled* ids have an annotation; only they are in the splits (detection trains
and scores on them). *Unlabelled* ids (LLVIP publishes images whose labels are not public) still have every
image, so fusion may use them; ``pairs()`` without a split returns them too.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..io import atomic_write_json
from ..splits import adjacent_frames_split_apart, labels_crossing_splits, split_of
from ..types import Annotation, Pair


@runtime_checkable
class Dataset(Protocol):
    """What callers may rely on. Readers return a :class:`CheckedDataset`, which is one."""

    name: str  # the reader's registry name ("m3fd", "llvip", "folder", ...)
    root: Path
    modalities: tuple[str, ...]  # in the dataset's order, e.g. ("ir", "vis") or ("vis", "nir", "lwir")
    colour: str | None  # the colour modality, or None
    ids: list[str]  # every sample with all its modalities, sorted; labelled or not
    unlabelled: tuple[str, ...]  # ids without annotation (in no split)
    class_names: tuple[str, ...]  # label-index order, as the export, the detector and the report name them
    splits: dict[str, list[str]]  # "train"/"val"/"test" -> labelled ids
    split_info: dict  # how the split came about: "method", "seed", "fractions", details

    def path(self, image_id: str, modality: str) -> Path: ...
    def sources(self, image_id: str) -> Mapping[str, Path]: ...
    def annotation(self, image_id: str) -> Annotation: ...
    def annotations(self, split: str | None = None) -> dict[str, Annotation]: ...
    def pairs(self, split: str | None = None) -> list[Pair]: ...
    def scenario_of(self, image_id: str) -> str | None: ...
    def scene_of(self, image_id: str) -> str | None: ...
    def split_of(self, image_id: str) -> str | None: ...
    def scenario_ids(self, split: str) -> dict[str, list[str]]: ...
    def write_split(self, path: Path) -> None: ...
    def summary(self) -> dict: ...


class CheckedDataset:
    """A validated dataset: ids, image paths per modality, annotations, classes, scenarios/scenes and the split.

    Readers build it through :func:`data.datasets.checks.build_dataset`; see :class:`Dataset` for the members.
    ``ir_path``/``vis_path`` serve two-band callers and say clearly when the dataset has no such modality.
    """

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        modalities: Sequence[str],
        colour: str | None,
        sources: Mapping[str, Mapping[str, Path]],
        annotations: Mapping[str, Annotation],
        class_names: Sequence[str],
        splits: dict[str, list[str]],
        split_info: dict,
        scenario: Mapping[str, str] | None = None,
        scene: Mapping[str, str] | None = None,
        groups: Mapping[str, str] | None = None,
        scenario_order: Sequence[str] = (),
    ):
        self.name = name
        self.root = Path(root)
        self.modalities = tuple(modalities)
        self.colour = colour
        self.ids = sorted(sources)
        self.unlabelled = tuple(i for i in self.ids if i not in annotations)
        self.class_names = tuple(class_names)
        self.splits = splits
        self.split_info = split_info
        self._sources = {i: dict(sources[i]) for i in self.ids}
        self._annotations = dict(annotations)
        self._scenario = dict(scenario or {})
        self._scene = dict(scene or {})
        self._groups = dict(groups or {})
        self._split_of = split_of(splits)
        self._scenario_order = tuple(scenario_order)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(ids)}" for name, ids in self.splits.items())
        unlabelled = f", {len(self.unlabelled)} unlabelled" if self.unlabelled else ""
        return (f"{type(self).__name__}({self.name!r}, {str(self.root)!r}, {'+'.join(self.modalities)}, "
                f"{len(self.ids)} images{unlabelled}, {sizes}, method={self.split_info.get('method')!r})")

    # ----------------------------------------------------------------------------------------------- lookups

    @property
    def labelled_ids(self) -> list[str]:
        return [i for i in self.ids if i in self._annotations]

    def _check(self, image_id: str) -> None:
        if image_id not in self._sources:
            raise KeyError(f"no image '{image_id}' in {self.root}")

    def _ids_of(self, split: str | None) -> list[str]:
        if split is None:
            return self.ids
        if split not in self.splits:
            raise KeyError(f"unknown split '{split}'; known: {', '.join(self.splits)}")
        return self.splits[split]

    def path(self, image_id: str, modality: str) -> Path:
        """The image of ``modality`` for ``image_id``; a KeyError naming the dataset's modalities otherwise."""
        self._check(image_id)
        if modality not in self.modalities:
            raise KeyError(f"dataset '{self.name}' at {self.root} has no '{modality}' modality; it has: "
                           f"{', '.join(self.modalities)}")
        return self._sources[image_id][modality]

    def sources(self, image_id: str) -> Mapping[str, Path]:
        """modality -> image file of one id, in the dataset's modality order."""
        self._check(image_id)
        return dict(self._sources[image_id])

    def ir_path(self, image_id: str) -> Path:
        return self.path(image_id, "ir")

    def vis_path(self, image_id: str) -> Path:
        return self.path(image_id, "vis")

    def annotation(self, image_id: str) -> Annotation:
        """The validated annotation: known classes, boxes clipped into the image, width/height of the image."""
        self._check(image_id)
        if image_id not in self._annotations:
            raise KeyError(f"image '{image_id}' in {self.root} has no annotation (it is unlabelled)")
        return self._annotations[image_id]

    def annotations(self, split: str | None = None) -> dict[str, Annotation]:
        """id -> annotation for a split (every labelled id when None), in split order."""
        return {i: self._annotations[i] for i in self._ids_of(split) if i in self._annotations}

    def pairs(self, split: str | None = None) -> list[Pair]:
        """The samples of a split (every id, unlabelled ones too, when None) with their sources by modality;
        ``meta`` holds ``scenario`` and ``scene``."""
        return [Pair(i, self._sources[i], colour=self.colour,
                     meta={"scenario": self._scenario.get(i), "scene": self._scene.get(i)})
                for i in self._ids_of(split)]

    def scenario_of(self, image_id: str) -> str | None:
        """The id's scenario (e.g. M3FD's ``daytime``/``night``), or None when the dataset does not say."""
        self._check(image_id)
        return self._scenario.get(image_id)

    def scene_of(self, image_id: str) -> str | None:
        """The id's scene (e.g. ``"night/alley"``); ids of one scene never cross splits. None when unknown."""
        self._check(image_id)
        return self._scene.get(image_id)

    def split_of(self, image_id: str) -> str | None:
        """The split an id is in, or None when it is in none (unlabelled, or left out of given lists)."""
        self._check(image_id)
        return self._split_of.get(image_id)

    def scenario_ids(self, split: str) -> dict[str, list[str]]:
        """scenario -> ids of that scenario within ``split``; only scenarios present, the dataset's order first."""
        found: dict[str, list[str]] = {}
        for image_id in self._ids_of(split):
            scenario = self._scenario.get(image_id)
            if scenario is not None:
                found.setdefault(scenario, []).append(image_id)
        return {name: found[name] for name in self._ordered_scenarios(found)}

    def _ordered_scenarios(self, names: Iterable[str]) -> list[str]:
        names = set(names)
        return [n for n in self._scenario_order if n in names] + sorted(names - set(self._scenario_order))

    # ------------------------------------------------------------------------------------------------ output

    def write_split(self, path: Path) -> None:
        """Write ``split.json`` (atomically): ids per split, and the split/scenario/scene/group of each id,
        with the method, seed and fractions that made it."""
        atomic_write_json(
            path,
            {
                "dataset": str(self.root),
                "reader": self.name,
                "method": self.split_info["method"],
                "seed": self.split_info.get("seed"),
                "fractions": self.split_info.get("fractions"),
                "split_info": self.split_info,
                "splits": self.splits,
                "ids": {
                    i: {
                        "split": self._split_of.get(i),
                        "scenario": self._scenario.get(i),
                        "scene": self._scene.get(i),
                        "group": self._groups.get(i),
                        **({"labelled": False} if i not in self._annotations else {}),
                    }
                    for i in self.ids
                },
            },
        )

    def summary(self) -> dict:
        """Images and boxes per class per split and per scenario, and the scene leakage check.

        Returns a JSON-ready dict: ``dataset`` (reader name), ``root``, ``modalities``, ``colour``,
        ``class_names``, ``method``, ``images``, ``labelled``, ``unlabelled``, ``boxes``, ``unassigned``
        (labelled images in no split), ``splits`` (split -> ``{"images", "boxes": {class: n}, "total_boxes"}``),
        ``scenarios`` (split -> scenario -> the same), and ``leakage``: ``scenes_crossing_splits`` (scene ->
        splits), ``ok`` (no scene crosses splits), ``scenes_checked``, and ``adjacent_frames_split_apart``:
        consecutive frames in different splits with no known scene boundary between them (possible
        near-duplicates where the dataset names no scene, e.g. at a block cut of the id-block fallback).
        """

        def counts(ids: Iterable[str]) -> dict[str, Any]:
            ids = [i for i in ids if i in self._annotations]
            per_class = Counter(b.name for i in ids for b in self._annotations[i].boxes)
            boxes = {name: per_class.get(name, 0) for name in self.class_names}
            return {"images": len(ids), "boxes": boxes, "total_boxes": sum(boxes.values())}

        crossing = labels_crossing_splits(self.splits, self._scene)
        adjacent = adjacent_frames_split_apart(self.splits, self._scene)
        labelled = len(self._annotations)
        return {
            "dataset": self.name,
            "root": str(self.root),
            "modalities": list(self.modalities),
            "colour": self.colour,
            "class_names": list(self.class_names),
            "method": self.split_info["method"],
            "images": len(self.ids),
            "labelled": labelled,
            "unlabelled": len(self.unlabelled),
            "boxes": sum(len(a.boxes) for a in self._annotations.values()),
            "unassigned": labelled - len(self._split_of),
            "splits": {name: counts(ids) for name, ids in self.splits.items()},
            "scenarios": {
                name: {scenario: counts(ids) for scenario, ids in self.scenario_ids(name).items()}
                for name in self.splits
            },
            "leakage": {
                "scenes_checked": len(set(self._scene.values())),
                "scenes_crossing_splits": crossing,
                "adjacent_frames_split_apart": [list(p) for p in adjacent],
                "ok": not crossing,
            },
        }


# ----------------------------------------------------------------------------------------------------- text


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def format_summary(summary: dict) -> str:
    """The summary of :meth:`CheckedDataset.summary` as readable tables."""
    classes = summary["class_names"]
    headers = ["split", "images", *classes, "boxes"]

    def row(label: str, c: dict) -> list:
        return [label, c["images"], *(c["boxes"][n] for n in classes), c["total_boxes"]]

    colour = summary["colour"] or "none"
    unlabelled = f" ({summary['unlabelled']} unlabelled, in no split)" if summary["unlabelled"] else ""
    out = [
        f"{summary['dataset']} dataset {summary['root']}: {summary['images']} images{unlabelled}, "
        f"{summary['boxes']} boxes, split method {summary['method']}"
        + (f", {summary['unassigned']} labelled image(s) in no split" if summary["unassigned"] else ""),
        f"Modalities: {', '.join(summary['modalities'])} (colour: {colour}); classes: {', '.join(classes)}",
        "",
        format_table(headers, [row(name, c) for name, c in summary["splits"].items()]),
    ]
    scenario_rows = [row(f"{name}/{sc}", c) for name, per in summary["scenarios"].items() for sc, c in per.items()]
    if scenario_rows:
        out += ["", "Per scenario:", format_table(["split/scenario", *headers[1:]], scenario_rows)]
    leak = summary["leakage"]
    out.append("")
    if leak["scenes_crossing_splits"]:
        out.append(f"Scene leakage: {len(leak['scenes_crossing_splits'])} scene(s) cross splits:")
        out += [f"  {scene}: {', '.join(splits)}" for scene, splits in leak["scenes_crossing_splits"].items()]
    elif leak["scenes_checked"]:
        out.append(f"Scene leakage: none (no scene crosses splits; {leak['scenes_checked']} scenes checked)")
    else:
        out.append("Scene leakage: no scene information (the dataset names no scenes)")
    adjacent = leak["adjacent_frames_split_apart"]
    if adjacent:
        shown = ", ".join(f"{a}/{b}" for a, b in adjacent[:10]) + (" ..." if len(adjacent) > 10 else "")
        out.append(f"Adjacent frames in different splits with no known scene boundary: {len(adjacent)} ({shown})")
    else:
        out.append("Adjacent frames in different splits with no known scene boundary: none")
    return "\n".join(out)
