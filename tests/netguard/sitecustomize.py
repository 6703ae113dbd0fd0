"""Start-up hook of every Python subprocess a test starts (this folder is first on their ``PYTHONPATH``): install
the network guard (``netguard.py`` beside this file, loaded by its path), then run the ``sitecustomize`` this one
shadows, if the interpreter has one, so a system's start-up customisation still happens."""
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, spec) -> None:
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("fusebench_netguard", importlib.util.spec_from_file_location(
    "fusebench_netguard", os.path.join(_HERE, "netguard.py")))

_shadowed = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE])
if _shadowed is not None:
    try:
        _load("sitecustomize", _shadowed)
    except Exception as err:  # noqa: BLE001 - as site.py treats a failing sitecustomize: report and go on
        print(f"Error in shadowed sitecustomize {_shadowed.origin}: {err!r}", file=sys.stderr)
