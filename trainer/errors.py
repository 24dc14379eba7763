"""User-facing errors: the CLI turns these into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Bad input data or arguments: reported as one line naming the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
