"""The replay benchmark end to end on a tiny synthetic log: the table and the JSON have one row
per slice with every strategy, every strategy is scored on the same users (those with an event
in the slice, found here from the log itself), and the refresh runs through the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.replay import STRATEGIES
from trainer.data.synth import SynthConfig, generate, write

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_replay_scores_every_strategy_on_the_same_users(tmp_path: Path) -> None:
    log = tmp_path / "synth.csv"
    write(generate(SynthConfig(n_items=300, n_users=200, n_interactions=5_000, seed=1)).drop(columns="cluster"), log)
    out, png = tmp_path / "replay.json", tmp_path / "replay.png"
    result = subprocess.run(
        [sys.executable, "-m", "bench.replay", "--data", str(log), "--method", "tdm", "--slices", "3", "--epochs", "1",
         "--tree-every", "2", "--json", str(out), "--plot", str(png)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench.replay --data ")
    assert png.stat().st_size > 0

    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["slice", "users", "known", "new"]
    assert [int(line.split()[0]) for line in table[1:4]] == [0, 1, 2]

    frame = pd.read_csv(log).sort_values("timestamp", kind="stable").reset_index(drop=True)
    bounds = np.linspace(len(frame) // 2, len(frame), 4).astype(int)
    assert len(report["slices"]) == 3
    for s, row in enumerate(report["slices"]):
        users = frame["user_id"].iloc[bounds[s]:bounds[s + 1]].astype(str).unique()
        assert row["user_ids"] == list(users)
        assert set(row["strategies"]) == set(row["per_user"]) == set(STRATEGIES)
        for name in STRATEGIES:
            assert len(row["per_user"][name]) == len(users)
            assert row["strategies"][name]["recall"] == pytest.approx(np.mean(row["per_user"][name]))
            assert 0 <= row["strategies"][name]["recall"] <= 1 and row["strategies"][name]["cpu_seconds"] >= 0
        learnt = [row["per_user"][name] for name in ("static", "refresh", "full retrain")]
        if s == 0:  # one initial model serves every learnt strategy before the first update
            assert learnt[0] == learnt[1] == learnt[2] and row["refresh_decision"] is None
        else:
            assert row["refresh_decision"]["decision"] in ("publish", "refuse")
            assert row["strategies"]["refresh"]["cpu_seconds"] > 0
            assert row["strategies"]["full retrain"]["cpu_seconds"] > 0
    assert report["slices"][2]["refresh_decision"]["mode"] == "tree"  # --tree-every 2: the second refresh
    pairs = report["pooled"]["all users"]
    assert pairs["refresh - static"]["users"] == sum(r["users"] for r in report["slices"][1:])
    assert set(report["targets"]["met"]) == {"z >= 2", "recall >= 90%", "cpu <= 25%"}
