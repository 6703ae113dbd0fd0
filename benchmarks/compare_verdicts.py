#!/usr/bin/env python
"""Do two runs' verdicts contradict each other? (issue 21: runs with disjoint detector seed sets)

    python benchmarks/compare_verdicts.py RUN_A/results.json RUN_B/results.json [--protocol deployed] [--out F.md]

A run *claims* "A beats B" when an interval it reports excludes 0: a candidate's gain over the better single
modality (either sign) or the top two's gap. Two runs contradict each other when one claims "A beats B" and the
other "B beats A". Claims only one run makes are listed too (the other found the pair not distinguishable, or did
not compare it): that is disagreement in confidence, not in direction. A provisional run (one detector seed) makes no
claims. Prints (and with --out writes) a markdown summary; exits 1 on a contradiction. The results files are read
through the pipeline's own records (``pipelines.records.RunResults``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.records import ProtocolIntervals, RunResults  # noqa: E402
from pipelines.report import _fmt_interval, is_provisional  # noqa: E402


def intervals_of(results: RunResults, protocol: str) -> ProtocolIntervals:
    """The run's bootstrap intervals under ``protocol`` (empty when it computed none: ``--bootstrap 0``)."""
    section = None if results.bootstrap is None else results.bootstrap.protocols.get(protocol)
    return ProtocolIntervals() if section is None else section


def claims(results: RunResults, protocol: str) -> dict[tuple[str, str], str]:
    """``{(winner, loser): "how"}`` for every interval of ``protocol`` that excludes 0 (none when provisional)."""
    section = intervals_of(results, protocol)
    if is_provisional(section):
        return {}
    out: dict[tuple[str, str], str] = {}
    for name, iv in section.gains.items():
        if iv.low > 0:
            out[(name, section.reference)] = f"gain {_fmt_interval(iv)}"
        elif iv.high < 0:
            out[(section.reference, name)] = f"gain of `{name}` {_fmt_interval(iv)}"
    top = section.top_two
    if top and top.gain.low > 0:
        out.setdefault((top.first, top.second), f"top two {_fmt_interval(top.gain)}")
    return out


def compare(a: RunResults, b: RunResults, protocol: str) -> dict[str, list]:
    ca, cb = claims(a, protocol), claims(b, protocol)
    return {"agree": sorted(set(ca) & set(cb)),
            "contradict": sorted(pair for pair in ca if pair[::-1] in cb),
            "only_a": sorted(pair for pair in ca if pair not in cb and pair[::-1] not in cb),
            "only_b": sorted(pair for pair in cb if pair not in ca and pair[::-1] not in ca),
            "claims_a": ca, "claims_b": cb}


def render(paths: list[Path], runs: list[RunResults], protocol: str, result: dict[str, list]) -> str:
    lines = [f"# Verdicts of two runs compared ({protocol} protocol)", ""]
    sections = [intervals_of(run, protocol) for run in runs]
    for label, path, run, section in zip("AB", paths, runs, sections):
        lines.append(f"- run {label}: `{path}`, seeds {run.config.seeds}, preset `{run.config.preset}`, reference "
                     f"`{section.reference}`; command `{run.command}`")
    lines += ["", "| candidate | " + " | ".join(f"run {x} mAP@50 [95%]" for x in "AB") + " | "
              + " | ".join(f"run {x} gain vs best single" for x in "AB") + " |", "|---|---|---|---|---|"]
    names = list(dict.fromkeys(n for s in sections for n in s.map50))
    for name in names:
        cells = []
        for s in sections:
            iv = s.map50.get(name)
            cells.append("-" if iv is None else f"{iv.point:.3f} [{iv.low:.3f}, {iv.high:.3f}]")
        for s in sections:
            iv = s.gains.get(name)
            cells.append("reference" if s.reference == name else "-" if iv is None else _fmt_interval(iv))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append("")

    def say(pairs, source):
        return ", ".join(f"`{w}` over `{lo}` ({source[(w, lo)]})" for w, lo in pairs) or "none"

    lines += [f"- claims both runs make: {say(result['agree'], result['claims_a'])}",
              f"- claims only run A makes (run B: not distinguishable): {say(result['only_a'], result['claims_a'])}",
              f"- claims only run B makes (run A: not distinguishable): {say(result['only_b'], result['claims_b'])}",
              f"- **contradictions** (A beats B in one run, B beats A in the other): "
              f"{say(result['contradict'], result['claims_a'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs=2, help="two results.json files")
    parser.add_argument("--protocol", default="deployed")
    parser.add_argument("--out", type=Path, help="also write the summary here (markdown)")
    args = parser.parse_args(argv)
    runs = [RunResults.from_dict(json.loads(p.read_text())) for p in args.results]
    result = compare(runs[0], runs[1], args.protocol)
    text = render(args.results, runs, args.protocol, result)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if result["contradict"] else 0


if __name__ == "__main__":
    sys.exit(main())
