"""torchrun: DistributedDataParallel training and tree learning spread over ranks (gloo, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.tree import Tree
from tests.conftest import ROOT
from tests.trainer.tree.test_learning import tiny_problem
from trainer.cli import main as trainer_main
from trainer.data.synth import SynthConfig, generate, write
from trainer.tree.learning import TreeLearningConfig, learn_tree


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_tree_learning_over_two_ranks_equals_one_process(tmp_path: Path) -> None:
    out = tmp_path / "tree.npz"
    result = torchrun(str(ROOT / "tests" / "trainer" / "fit" / "dist_tree_learning.py"), str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    tree, model, samples = tiny_problem(60, seed=3)
    expected, report = learn_tree(model, tree, samples, False, TreeLearningConfig(gap=3))
    assert Tree.load(out).equals(expected)
    assert int(Path(str(out) + ".evaluations").read_text()) == report.evaluations


@pytest.mark.slow
def test_torchrun_trains_a_joint_model_like_one_process(tmp_path: Path) -> None:
    """Two gloo ranks train a JTM-J model whose test recall matches single-process training
    within noise, on the same split; both far above random retrieval (M / items)."""
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=1000, n_users=400, seed=0)), data)
    # (No --m here: torchrun's own parser takes "--m" for an abbreviation of one of its flags.)
    args = ["train", "--data", str(data), "--method", "jtm-j", "--epochs", "1", "--iterations", "1",
            "--retrain-epochs", "1"]
    result = torchrun("-m", "trainer", *args, "--out", str(tmp_path / "dist"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote run to") == 1  # only rank 0 reports
    assert trainer_main([*args, "--out", str(tmp_path / "single")]) == 0
    dist, single = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("dist", "single"))
    assert dist["world_size"] == 2 and "world_size" not in single
    assert len(json.loads((tmp_path / "dist" / "joint.json").read_text())["iterations"]) == 2
    noise = (dist["user_se"]["recall"] ** 2 + single["user_se"]["recall"] ** 2) ** 0.5
    print(f"\nR@200 two ranks {dist['recall']:.4f} ± {dist['user_se']['recall']:.4f}, "
          f"one process {single['recall']:.4f} ± {single['user_se']['recall']:.4f}")
    assert abs(dist["recall"] - single["recall"]) <= 2 * noise
    random_recall = 200 / 1000
    assert min(dist["recall"], single["recall"]) > random_recall + 0.15
