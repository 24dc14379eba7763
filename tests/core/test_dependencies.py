"""The numpy core is what the trainer and the service share, so it must stay importable with
nothing but numpy and the standard library: no FastAPI, onnxruntime, torch, pandas, nor the
rest of the service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_core_imports_only_numpy_and_the_standard_library() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "before = set(sys.modules)\n"
        "import service.core\n"
        "for m in pkgutil.walk_packages(service.core.__path__, 'service.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert any(name.startswith("service.core.") for name in loaded)
    allowed = set(sys.stdlib_module_names) | {"numpy", "service"}
    foreign = sorted({name.split(".")[0] for name in loaded} - allowed)
    assert not foreign, f"service/core pulled in {foreign}"
    outside_core = sorted(n for n in loaded if n.startswith("service.") and not n.startswith("service.core"))
    assert not outside_core, f"service/core imports the rest of the service: {outside_core}"
