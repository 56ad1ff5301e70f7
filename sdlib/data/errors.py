"""The one exception type of the data layer.

Every problem with input data (a file that is missing, truncated, unsorted, out of range, or laid out differently
from what the reader expects) raises :class:`DataError`. Its message always names the file (or clip) and says what
was expected, so a failure in a long dataset build can be fixed without a debugger.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad or missing input data; the message names the source and the expectation.

    ``source`` is the file or clip the problem was found in (``None`` when it cannot be named) and ``expected`` a
    short phrase saying what a valid input looks like. Both are kept as attributes so callers (e.g. the dataset
    writer's failure log) can record them without parsing the message.
    """

    def __init__(self, message: str, *, source: str | Path | None = None, expected: str | None = None) -> None:
        super().__init__(message)
        self.source = None if source is None else str(source)
        self.expected = expected
