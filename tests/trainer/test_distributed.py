"""torchrun: DistributedDataParallel training and tree learning spread over ranks (gloo, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service.core.tree import Tree
from tests.conftest import ROOT
from tests.trainer.test_tree_learning import tiny_problem
from trainer.synth import SynthConfig, generate, write
from trainer.tree_learning import TreeLearningConfig, learn_tree


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_tree_learning_over_two_ranks_equals_one_process(tmp_path: Path) -> None:
    out = tmp_path / "tree.npz"
    result = torchrun(str(ROOT / "tests" / "trainer" / "dist_tree_learning.py"), str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    tree, model, samples = tiny_problem(60, seed=3)
    expected, report = learn_tree(model, tree, samples, False, TreeLearningConfig(gap=3))
    assert Tree.load(out).equals(expected)
    assert int(Path(str(out) + ".evaluations").read_text()) == report.evaluations


def test_torchrun_trains_a_joint_model(tmp_path: Path) -> None:
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=300, n_users=300, seed=0)), data)
    run = tmp_path / "run"
    result = torchrun("-m", "trainer", "train", "--data", str(data), "--method", "jtm-j", "--out", str(run),
                      "--epochs", "1", "--iterations", "1", "--retrain-epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["recall"] > 0
    joint = json.loads((run / "joint.json").read_text())
    assert len(joint["iterations"]) == 2
    assert result.stdout.count("wrote run to") == 1  # only rank 0 reports
