"""The layout of ``fusion/``: every import points one way, and every command runs under its documented name.

Subpackages, bottom to top: ``models`` and ``metrics`` (neither imports the other), ``fusers``, ``video``,
``training``; within each, modules in the order of ``MODULES``. Every import counts, those inside functions too,
so a function-level import cannot hide a loop. Nothing in ``fusion`` imports ``detection``, ``pipelines`` or
Ultralytics.
"""
from __future__ import annotations

import ast
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

FUSION = Path(__file__).resolve().parents[1] / "fusion"

# Subpackage -> layer: a module may import its own subpackage and those of lower layers only.
LAYERS: dict[str, int] = {"models": 0, "metrics": 0, "fusers": 1, "video": 2, "training": 3}
# Within a subpackage, a module imports only the modules listed before it (``__init__`` holds a docstring only).
MODULES: dict[str, tuple[str, ...]] = {
    "models": ("dae_fuse", "inference", "checkpoint"),
    "metrics": ("image", "__main__"),
    "fusers": ("base", "baselines", "prefused", "dae_fuse", "catalog", "fuse"),
    "video": ("sources", "flow", "temporal", "streaming", "sudden_change", "__main__"),
    "training": ("losses", "config", "data", "train", "ablate", "temporal_train"),
}
# Data packages beside the subpackages: importable from anywhere in ``fusion``, importing nothing of it.
DATA_PACKAGES = ("configs", "weights")
FORBIDDEN = ("detection", "pipelines", "ultralytics")

# Every command, by the name users type; each module's parser must announce the same name.
COMMANDS = (
    "fusion.metrics",
    "fusion.fusers.fuse",
    "fusion.video",
    "fusion.video.temporal",
    "fusion.video.sudden_change",
    "fusion.models.checkpoint",
    "fusion.training.train",
    "fusion.training.ablate",
    "fusion.training.temporal_train",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(FUSION.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth. ``from X import name`` counts as an
    import of ``X.name`` when that is a module of ``fusion`` (``from . import baselines``), else of ``X``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = candidate.startswith("fusion.") and (
                    (FUSION.parent / candidate.replace(".", "/")).with_suffix(".py").is_file()
                    or (FUSION.parent / candidate.replace(".", "/") / "__init__.py").is_file())
                found.append((node.lineno, candidate if is_module else base))
    return found


def fusion_files() -> list[Path]:
    return sorted(p for p in FUSION.rglob("*.py") if "__pycache__" not in p.parts)


def place(name: str) -> tuple[str, str] | None:
    """(subpackage, module) of a fusion module name; None for ``fusion`` itself and the data packages."""
    parts = name.split(".")
    if len(parts) < 2 or parts[1] in DATA_PACKAGES:
        return None
    return parts[1], parts[2] if len(parts) > 2 else "__init__"


def test_every_module_has_a_place():
    """A new subpackage or module must be given its layer and its place in the order."""
    unplaced = []
    for path in fusion_files():
        where = place(module_name(path))
        if where is None:
            continue
        sub, mod = where
        if sub not in LAYERS or (mod != "__init__" and mod not in MODULES[sub]):
            unplaced.append(module_name(path))
    assert not unplaced, f"add these to LAYERS / MODULES: {unplaced}"
    listed = {f"fusion.{sub}.{mod}" for sub, mods in MODULES.items() for mod in mods}
    existing = {module_name(p) for p in fusion_files()}
    assert listed <= existing, f"listed but missing: {sorted(listed - existing)}"


def test_imports_point_one_way():
    wrong = []
    for path in fusion_files():
        source = module_name(path)
        for line, target in imported_modules(path):
            where = f"{path.relative_to(FUSION.parent)}:{line}: {source} imports {target}"
            if target.split(".")[0] in FORBIDDEN:
                wrong.append(f"{where} (fusion never imports {target.split('.')[0]})")
                continue
            if target != "fusion" and not target.startswith("fusion."):
                continue
            here, there = place(source), place(target)
            if there is None:
                if target != "fusion" and target.split(".")[1] in DATA_PACKAGES:
                    continue
                wrong.append(f"{where} (import the module itself, not the package)")
            elif here is None:
                wrong.append(f"{where} (the top package and the data packages import no subpackage)")
            elif here[0] != there[0]:
                if LAYERS[there[0]] >= LAYERS[here[0]]:
                    wrong.append(f"{where} ({there[0]} is not below {here[0]})")
            elif there[1] != "__init__":
                order = MODULES[here[0]]
                if here[1] == "__init__" or order.index(there[1]) >= order.index(here[1]):
                    wrong.append(f"{where} ({there[1]} is not before {here[1]} in fusion.{here[0]})")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_the_direction_check_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative one are resolved and judged."""
    fake = tmp_path / "fusion"
    (fake / "video").mkdir(parents=True)
    (fake / "training").mkdir()
    (fake / "training" / "train.py").write_text("")
    (fake / "video" / "streaming.py").write_text("def f():\n    from ..training import train\n    from . import flow\n")
    (fake / "video" / "flow.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "FUSION", fake)
    assert imported_modules(fake / "video" / "streaming.py") == [(2, "fusion.training.train"), (3, "fusion.video.flow")]


def test_fusers_by_name_without_torch_until_dae_fuse():
    """``fusion.fusers.catalog`` builds every fuser by name from below: the interface and the simple rules import no
    torch, DAE-Fuse and the installed plug-ins join the registry when a name is not yet in it."""
    probe = ("import sys\n"
             "from fusion.fusers.base import FUSERS\n"
             "from fusion.fusers.catalog import create_fuser, fuser_names\n"
             "assert create_fuser('max').name == 'max' and 'torch' not in sys.modules, sorted(sys.modules)\n"
             "assert 'dae_fuse' not in FUSERS\n"
             "assert 'dae_fuse' in fuser_names() and fuser_names() == FUSERS.names()\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=FUSION.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_runs_under_its_name(command, monkeypatch, capsys):
    """``python -m NAME --help`` (run in this process, as ``-m`` runs it) prints a usage line naming NAME."""
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as stop:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before (by other tests)
        runpy.run_module(command, run_name="__main__", alter_sys=True)
    assert stop.value.code in (0, None)
    assert capsys.readouterr().out.startswith(f"usage: python -m {command} ")
