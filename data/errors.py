"""One error type for bad datasets: it carries every problem found, not just the first."""
from __future__ import annotations

from collections.abc import Iterable


class DatasetError(ValueError):
    """A dataset failed validation.

    Raised once, after validation has looked at every file, so the message names every offending file.

    Args:
        what: which dataset (usually its root path) failed.
        problems: one human-readable line per problem, each naming the file it is about.
    """

    def __init__(self, what: str, problems: Iterable[str]):
        self.what = what
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{what}: {len(self.problems)} problem(s) found\n{lines}")


class DatasetWarning(UserWarning):
    """Something harmless in a dataset was repaired or skipped (boxes clipped by a pixel or two, unlisted images).

    A category of its own so callers can capture or escalate it: ``warnings.simplefilter("error", DatasetWarning)``.
    """
