"""benchmarks/compare_verdicts.py: two runs contradict each other only when their intervals claim opposite orders."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from detection.bootstrap import Interval
from pipelines.config import PipelineConfig, load_pipeline_preset
from pipelines.records import Bootstrap, DatasetInfo, ProtocolIntervals, RunConfig, RunResults, SplitInfo, TopTwo

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_verdicts.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_verdicts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(gains, reference="ir", top=None, n_seeds=3) -> RunResults:
    """A run's results with only what a verdict reads: its deployed-protocol intervals."""
    section = ProtocolIntervals(
        map50={n: Interval(0.5, 0.4, 0.6, n_seeds=n_seeds) for n in gains},
        gains={n: Interval((lo + hi) / 2, lo, hi, n_seeds=n_seeds) for n, (lo, hi) in gains.items()},
        reference=reference, top_two=TopTwo(top[0], top[1], Interval(0.05, top[2], 0.1, n_seeds=n_seeds)) if top
        else None)
    config = RunConfig.of(PipelineConfig(preset="quick"), seeds=[0, 1, 2], detection={},
                          preset=load_pipeline_preset("quick"))
    return RunResults(config=config, data=DatasetInfo("d", n_images=0, split=SplitInfo()), candidates=[],
                      bootstrap=Bootstrap(protocols={"deployed": section}))


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
    paths = []
    for k, gains in enumerate(({"max": (0.02, 0.1)}, {"max": (-0.1, -0.02)})):
        path = tmp_path / f"r{k}.json"
        path.write_text(json.dumps(_run(gains).to_dict()))  # results.json as the pipeline writes it
        paths.append(str(path))
    out = tmp_path / "cmp.md"
    assert tool.main(paths + ["--out", str(out)]) == 1
    text = out.read_text()
    assert "**contradictions** (A beats B in one run, B beats A in the other): `max` over `ir`" in text
    assert "seeds [0, 1, 2], preset `quick`, reference `ir`" in text
    assert ("| `max` | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | +0.060 [+0.020, +0.100] | "
            "-0.060 [-0.100, -0.020] |") in text
    assert tool.main([paths[0], paths[0]]) == 0
    no_bootstrap = tmp_path / "none.json"  # --bootstrap 0: no intervals, no claims
    no_bootstrap.write_text(json.dumps({**_run({}).to_dict(), "bootstrap": {}}))
    assert tool.main([paths[0], str(no_bootstrap)]) == 0
