"""Benchmarks. Each script runs as a module from the repository root, where `trainer` and
`service` import from: `python -m bench.NAME --help`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line() -> str:
    """How the running benchmark (or experiment) was invoked, in the form the docs give
    (`python -m bench.NAME ARGS`), for the `command` its JSON records."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec is not None else f"bench.{Path(sys.argv[0]).stem}"
    return shlex.join(["python", "-m", module, *sys.argv[1:]])
