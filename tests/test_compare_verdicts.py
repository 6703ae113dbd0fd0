"""benchmarks/compare_verdicts.py: two runs contradict each other only when their intervals claim opposite orders."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_verdicts.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_verdicts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(gains, reference="ir", top=None, n_seeds=3):
    ivs = {n: {"point": (lo + hi) / 2, "low": lo, "high": hi, "n_seeds": n_seeds} for n, (lo, hi) in gains.items()}
    section = {"reference": reference, "gains": ivs, "map50": {n: {"point": 0.5, "low": 0.4, "high": 0.6,
                                                                     "n_seeds": n_seeds} for n in gains}}
    if top:
        section["top_two"] = {"first": top[0], "second": top[1], "point": 0.05, "low": top[2], "high": 0.1,
                              "n_seeds": n_seeds}
    return {"config": {"seeds": [0, 1, 2], "preset": "quick"}, "bootstrap": {"protocols": {"deployed": section}}}


def test_opposite_claims_are_a_contradiction_and_one_sided_claims_are_not(tool):
    a = _run({"max": (0.02, 0.10), "mean": (-0.3, -0.1), "dae": (-0.05, 0.05)})
    b = _run({"max": (-0.12, -0.01), "mean": (-0.2, 0.01), "dae": (-0.04, 0.06)})
    result = tool.compare(a, b, "deployed")
    assert result["contradict"] == [("max", "ir")]
    assert result["only_a"] == [("ir", "mean")] and result["only_b"] == [] and result["agree"] == []


def test_claims_from_either_reference_and_the_top_two_and_none_when_provisional(tool):
    a = _run({"max": (0.01, 0.1), "ir": (-0.2, -0.05)}, reference="vis", top=("max", "vis", 0.01))
    assert tool.claims(a, "deployed") == {("max", "vis"): "gain +0.055 [+0.010, +0.100]",
                                          ("vis", "ir"): "gain of `ir` -0.125 [-0.200, -0.050]"}
    b = _run({"dae": (-0.01, 0.1)}, reference="ir", top=("ir", "dae", 0.01))
    assert tool.claims(b, "deployed") == {("ir", "dae"): "top two +0.050 [+0.010, +0.100]"}
    assert tool.claims(_run({"max": (0.01, 0.1)}, n_seeds=1), "deployed") == {}


def test_cli_writes_the_summary_and_exits_1_on_a_contradiction(tool, tmp_path):
    import json

    paths = []
    for k, gains in enumerate(({"max": (0.02, 0.1)}, {"max": (-0.1, -0.02)})):
        path = tmp_path / f"r{k}.json"
        path.write_text(json.dumps(_run(gains)))
        paths.append(str(path))
    out = tmp_path / "cmp.md"
    assert tool.main(paths + ["--out", str(out)]) == 1
    assert "**contradictions** (A beats B in one run, B beats A in the other): `max` over `ir`" in out.read_text()
    assert tool.main([paths[0], paths[0]]) == 0
