"""The convergence report from real compare results: every scorer run records its validation
curve (epochs, then joint iterations, seconds increasing), and bench.convergence reads the
plateau off it and pairs the test users across configurations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.evaluate.test_given_split import synthetic_split
from tests.trainer.test_errors import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_curves_are_recorded_and_the_plateau_read_from_them(tmp_path: Path) -> None:
    train, test = synthetic_split(tmp_path)
    common = ["compare", "--train", str(train), "--test", str(test), "--methods", "jtm", "--m", "20",
              "--valid-fraction", "0.1", "--per-user", "--iterations", "1", "--retrain-epochs", "1"]
    assert run_cli(*common, "--epochs", "3", "--json", str(tmp_path / "constant.json")).returncode == 0
    assert run_cli(*common, "--epochs", "2", "--lr-schedule", "cosine", "--lr-warmup", "2",
                   "--json", str(tmp_path / "cosine.json")).returncode == 0
    record = json.loads((tmp_path / "constant.json").read_text())["per_seed"]["jtm"][0]
    curve = record["curve"]
    epochs = [p for p in curve if p["phase"] == "epoch"]
    assert [p["epoch"] for p in epochs] == list(range(1, len(epochs) + 1)) and len(epochs) == sum(record["epochs"][:1])
    assert [p["phase"] for p in curve[len(epochs):]] == ["iteration"]
    assert all(b["seconds"] > a["seconds"] for a, b in zip(curve, curve[1:], strict=False))
    assert all(0 <= p["valid"] <= 1 for p in curve)

    out, png = tmp_path / "convergence.json", tmp_path / "convergence.png"
    result = subprocess.run(
        [sys.executable, "-m", "bench.convergence", f"constant={tmp_path / 'constant.json'}:jtm",
         f"cosine={tmp_path / 'cosine.json'}:jtm", "--json", str(out), "--plot", str(png)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())["configurations"]
    best = max(curve, key=lambda p: p["valid"])
    assert summary["constant"]["seconds_to_plateau"] == best["seconds"]
    assert summary["constant"]["best_validation"] == best["valid"]
    assert summary["constant"]["test"] == pytest.approx(np.mean(record["users"]["recall@20"]))
    cosine = json.loads((tmp_path / "cosine.json").read_text())["per_seed"]["jtm"][0]
    paired = summary["cosine"]["vs_reference"]
    assert paired["users"] == 300
    assert paired["mean"] == pytest.approx(np.mean(np.subtract(cosine["users"]["recall@20"],
                                                               record["users"]["recall@20"])))
    assert "| cosine | 1 |" in result.stdout and png.stat().st_size > 0
