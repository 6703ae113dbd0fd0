"""``python -m data --dataset NAME --root DIR --summary``: read and validate any dataset and print its summary
(images and boxes per class per split and per scenario, whether any scene crosses splits).

Exit 2 with every problem listed when the data fails the checks; nothing is written then.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .datasets import add_dataset_arguments, dataset_from_args, dataset_names, format_summary
from .errors import DatasetError, DatasetWarning
from .io import atomic_write_json


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m data") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser, root_required=False)
    parser.add_argument("--list", action="store_true", help="print the dataset reader names and exit")
    parser.add_argument("--summary", action="store_true", help="print images and boxes per split and scenario")
    parser.add_argument("--seed", type=int, help="split seed where the split is made here")
    parser.add_argument("--fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                        help="target shares of a split made here")
    parser.add_argument("--block-size", type=int, help="frames per block where no scene is known")
    parser.add_argument("--no-validate", action="store_true", help="skip decoding images")
    parser.add_argument("--write-split", type=Path, metavar="SPLIT_JSON", help="write the split as JSON")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the summary as JSON")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(dataset_names()))
        return 0
    if args.root is None:
        parser.error("--root (or --data) is required")
    outputs = [p for p in (args.write_split, args.json) if p is not None]
    unwritable = [f"cannot write {p}: its folder {p.parent} does not exist or is not a folder" for p in outputs
                  if not p.parent.is_dir()] + [f"cannot write {p}: it is a folder" for p in outputs if p.is_dir()]
    if unwritable:  # checked before the dataset is read, so that nothing is half written
        parser.exit(2, "error: " + "; ".join(unwritable) + "\n")
    given = {"seed": args.seed, "fractions": tuple(args.fractions) if args.fractions else None,
             "block_size": args.block_size, "validate": False if args.no_validate else None}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DatasetWarning)
            dataset = dataset_from_args(args, **{k: v for k, v in given.items() if v is not None})
    except DatasetError as err:
        print(err, file=sys.stderr)
        return 2
    except ValueError as err:  # unknown reader or option, --fractions or --block-size out of range
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    summary = dataset.summary()
    print(format_summary(summary) if args.summary else repr(dataset))
    try:
        if args.write_split:
            dataset.write_split(args.write_split)
        if args.json:
            atomic_write_json(args.json, summary)
    except OSError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
