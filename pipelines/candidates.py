"""The one candidate model: a row of the table is a ``CandidateSpec`` resolved through the fuser registry.

A spec names a fuser (a ``fusion.fusers.base.FUSERS`` name or a ``package.module:factory`` path) with its arguments,
or a folder of another method's fused images. The simple rules, DAE-Fuse checkpoints, plug-ins, installed
entry points and pre-fused folders all become specs here and are built by ``build_source``; nothing downstream
asks which kind a candidate is, except the report, which shows where each came from (``origin``).

Command-line forms (parsed here, so the pipeline and its tests share them):

* ``--fused NAME=DIR``: a folder of fused images named by image id;
* ``--fuser NAME=package.module:factory [key=value ...]`` or ``--fuser NAME=ENTRY_POINT [key=value ...]``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import SeedRun

# What a row is: an image fusion (baseline rule or single modality, checkpoint, released model, plug-in, folder,
# DAE-Fuse trained here), or one of the two alternatives that need no fused image: early fusion (the detector
# reads the modalities as channels) and late fusion (the single-modality detectors' boxes merged).
KINDS: tuple[str, ...] = ("baseline", "checkpoint", "released", "plugin", "folder", "trained", "stack", "late")
NO_FUSED_IMAGE: tuple[str, ...] = ("stack", "late")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names key folders (state/, runs/, tb/): no separators


class CandidateError(ValueError):
    """A candidate given on the command line cannot be used (bad name, clash, bad form); raised before any work."""


@dataclass(frozen=True)
class CandidateSpec:
    """What a row is made from; saved in results.json as it is.

    ``fuser`` + ``args`` are resolved by ``fusion.fusers.catalog.create_fuser``; a ``folder`` candidate has no fuser.
    """

    name: str
    kind: str                           # one of KINDS: what the report calls it
    fuser: str | None = None            # FUSERS name or package.module:factory
    args: Mapping[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CandidateError(f"unknown candidate kind '{self.kind}'; known: {', '.join(KINDS)}")
        if (self.folder is None) == (self.fuser is None) and self.kind not in ("trained", *NO_FUSED_IMAGE):
            raise CandidateError(f"candidate '{self.name}' needs exactly one of a fuser or a folder")

    @property
    def origin(self) -> str:
        """Where the row comes from, in words the report prints."""
        if self.kind == "folder":
            return f"fused images from {self.folder}"
        if self.kind in ("checkpoint", "released") or (self.kind == "trained" and self.args.get("checkpoint")):
            what = {"checkpoint": "DAE-Fuse checkpoint", "released": "the released DAE-Fuse (fusion/weights, see "
                    "its MODEL_CARD.md)", "trained": "DAE-Fuse trained by this run"}[self.kind]
            return f"{what} {self.args.get('checkpoint')}"
        if self.kind == "trained":
            return "DAE-Fuse trained by this run"
        if self.kind == "stack":
            return "early fusion: the detector reads the modalities as one image's channels (no fused image)"
        if self.kind == "late":
            return (f"late fusion: the single-modality detectors' boxes merged per image by "
                    f"{self.args.get('method', 'wbf')} (no fused image, no training)")
        if self.kind == "plugin":
            extra = " ".join(f"{k}={v}" for k, v in self.args.items())
            return f"plug-in {self.fuser}" + (f" ({extra})" if extra else "")
        return f"built-in rule '{self.fuser}'"

    @property
    def modality(self) -> str | None:
        """The one modality a single-modality row shows (its passthrough), else None."""
        if self.kind != "baseline":
            return None
        if self.fuser == "passthrough":
            return str(self.args.get("modality"))
        from fusion.fusers.baselines import PASSTHROUGH_NAMES

        return self.fuser if self.fuser in PASSTHROUGH_NAMES else None

    @property
    def fuses_images(self) -> bool:
        """Whether the row has fused images (every kind but early and late fusion)."""
        return self.kind not in NO_FUSED_IMAGE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "fuser": self.fuser, "args": {k: str(v) if isinstance(v, Path)
                else v for k, v in self.args.items()}, "folder": str(self.folder) if self.folder else None,
                "origin": self.origin}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateSpec:
        """The spec ``to_dict`` wrote (e.g. shipped to a worker); paths come back as paths."""
        args = {k: Path(v) if k == "checkpoint" and v is not None else v for k, v in data["args"].items()}
        return cls(name=data["name"], kind=data["kind"], fuser=data["fuser"], args=args,
                   folder=Path(data["folder"]) if data.get("folder") else None)


def check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise CandidateError(f"{what}: candidate name '{name}' must be letters, digits, '_', '-' or '.' (it names "
                             "folders), starting with a letter or digit")


def parse_fused(text: str) -> CandidateSpec:
    """``NAME=DIR`` -> a folder spec (the folder's content is checked later, against the pairs)."""
    name, sep, folder = text.partition("=")
    if not sep or not folder:
        raise CandidateError(f"--fused {text}: expected NAME=DIR")
    check_name(name, f"--fused {text}")
    return CandidateSpec(name=name, kind="folder", folder=Path(folder).expanduser().resolve())


def parse_fuser(tokens: Sequence[str]) -> CandidateSpec:
    """``["NAME=package.module:factory", "key=value", ...]`` (or ``NAME=ENTRY_POINT``) -> a plug-in spec."""
    from fusion.fusers.base import FuserSpecError
    from fusion.fusers.catalog import parse_fuser_args

    if not tokens:
        raise CandidateError("--fuser needs NAME=package.module:factory")
    name, sep, target = tokens[0].partition("=")
    if not sep or not target:
        raise CandidateError(f"--fuser {tokens[0]}: expected NAME=package.module:factory (or NAME=ENTRY_POINT)")
    check_name(name, f"--fuser {tokens[0]}")
    try:
        args = parse_fuser_args(list(tokens[1:]))
    except FuserSpecError as err:
        raise CandidateError(f"--fuser {name}: {err}") from None
    return CandidateSpec(name=name, kind="plugin", fuser=target, args=args)


def checkpoint_specs(paths: Sequence[Path], taken: set[str]) -> list[CandidateSpec]:
    """One spec per DAE-Fuse checkpoint, named by its file (``best``), or with its folder when that name is taken
    (``run2_best``), then numbered: names key the state/, runs/ and tb/ folders, so two rows never share one."""
    specs = []
    for path in paths:
        path = Path(path)
        name = path.stem if path.stem not in taken else f"{path.parent.name}_{path.stem}"
        base, k = name, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        specs.append(CandidateSpec(name=name, kind="checkpoint", fuser="dae_fuse",
                                   args={"checkpoint": path.resolve()}))
    return specs


def released_spec() -> CandidateSpec:
    """The released DAE-Fuse (``fusion.weights``) as a row."""
    from fusion.weights import RELEASED_CHECKPOINT, RELEASED_NAME

    return CandidateSpec(name=RELEASED_NAME, kind="released", fuser="dae_fuse", args={"checkpoint": RELEASED_CHECKPOINT})


def check_unique(specs: Sequence[CandidateSpec]) -> list[str]:
    """Problems: two candidates with one name (rows, caches and logs would mix)."""
    seen: dict[str, str] = {}
    problems = []
    for spec in specs:
        if spec.name in seen:
            problems.append(f"two candidates are named '{spec.name}' ({seen[spec.name]}; {spec.origin}): "
                            "give one another NAME")
        seen.setdefault(spec.name, spec.origin)
    return problems


def build_source(spec: CandidateSpec, *, device: str, pairs=None, sizes: Mapping[str, tuple[int, int]] | None = None):
    """The fuser of a spec (``create_fuser``), or the checked ``PrefusedFolder`` of a folder spec.

    Raises:
        data.errors.DatasetError: a folder misses ids or holds unreadable or wrongly sized images.
        fusion.fusers.base.FuserSpecError: a plug-in that does not import or returns no fuser.
        fusion.models.checkpoint.CheckpointError: a checkpoint that cannot be used.
    """
    if spec.folder is not None:
        from fusion.fusers.prefused import PrefusedFolder

        return PrefusedFolder.from_pairs(spec.folder, pairs or [], sizes or {}, name=spec.name)
    from fusion.fusers.catalog import create_fuser

    return create_fuser(spec.fuser, device=device, **spec.args)


@dataclass
class CandidateRecord:
    """What the stages produced for one candidate (``pipelines.engine.assemble_results`` reads it)."""

    fuse: Any = None                                 # stages.fuse.FuseOutput
    scores: Any = None                               # stages.score.Scores
    detection_runs: dict[int, SeedRun] = field(default_factory=dict)  # seed -> its detector's (or late fusion's) record
    yolo: str | None = None                          # the exported detector dataset's folder


@dataclass
class Candidate:
    """One row of the table: its spec and what this run made of it."""

    spec: CandidateSpec
    error: str | None = None
    record: CandidateRecord = field(default_factory=CandidateRecord)
    fuser: Any = None                  # the built fuser (or pre-fused folder), kept from validation: built once

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def baseline(self) -> str | None:
        return self.spec.fuser if self.spec.kind == "baseline" else None

    @property
    def checkpoint(self) -> Path | None:
        path = self.spec.args.get("checkpoint")
        return Path(path) if path else None

    def source(self, cfg) -> Any:
        """The candidate's fuser, built on first use and kept (validation has usually built it already)."""
        if self.fuser is None:
            from .config import torch_device

            self.fuser = build_source(self.spec, device=torch_device(cfg.device))
        return self.fuser
