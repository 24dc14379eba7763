"""TDM and DNN end to end: training lowers the loss, runs are reproducible, the run directory
round-trips, and TDM beats popularity on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.baselines.popularity import Popularity
from trainer.cli import main
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_eval_set, make_samples, split_users
from trainer.data.synth import SynthConfig, generate, write
from trainer.deep_retrieval import DeepRetrieval
from trainer.evaluate.metrics import user_metrics
from trainer.fit.context import FitContext
from trainer.methods import deep_config


@pytest.fixture(scope="module")
def synth_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "log.parquet"
    write(generate(SynthConfig(n_items=300, n_users=600, seed=0)), path)
    return path


def fit(method: str, data, seed: int = 0, epochs: int = 2, m: int = 50) -> tuple[DeepRetrieval, FitContext]:
    split = split_users(data.n_users, seed)
    ctx = FitContext(data=data, split=split, samples=make_samples(data, split.train),
                     valid=make_eval_set(data, split.valid), m=m, exclude_seen=False, seed=seed)
    model = DeepRetrieval(deep_config(method, epochs=epochs))
    model.fit(ctx)
    return model, ctx


@pytest.mark.parametrize("method", ["tdm", "dnn"])
@pytest.mark.slow
def test_seeded_runs_are_identical(synth_path: Path, method: str) -> None:
    data = load_interactions(DataConfig(path=str(synth_path)))
    a, ctx = fit(method, data, epochs=1)
    b, _ = fit(method, data, epochs=1)
    test = make_eval_set(data, ctx.split.test)
    assert np.array_equal(a.recommend(test, 50, False), b.recommend(test, 50, False))


@pytest.mark.parametrize("method", ["tdm", "dnn"])
@pytest.mark.slow
def test_training_learns_personal_scores(synth_path: Path, method: str) -> None:
    data = load_interactions(DataConfig(path=str(synth_path)))
    a, ctx = fit(method, data, epochs=5)
    assert a.history is not None
    losses = [e.train_loss for e in a.history.epochs]
    assert losses[-1] < losses[0]
    test = make_eval_set(data, ctx.split.test)
    # Not the under-training symptom: probabilities are not stuck near 0.5, and the model
    # retrieves better than popularity for held-out users.
    from trainer.evaluate.recommend import torch_index

    leaf = a.tree.depth if a.tree is not None else 0
    score = torch_index(a.model, a.tree).score_fn(test.histories(69)[:20])
    logits = score(leaf, np.broadcast_to(np.arange(data.n_items), (20, data.n_items)).copy())
    probability = 1 / (1 + np.exp(-logits))
    assert (np.abs(probability - 0.5) > 0.1).mean() > 0.9
    pop = Popularity()
    pop.fit(ctx)
    recall = user_metrics(a.recommend(test, 30, False), test, 30).means()["recall"]
    assert recall > user_metrics(pop.recommend(test, 30, False), test, 30).means()["recall"]


@pytest.mark.slow
def test_train_and_evaluate_cli_round_trip(synth_path: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_path), "--method", "tdm", "--out", str(run), "--epochs", "1",
                 "--m", "50"]) == 0
    for name in ("config.json", "split.npz", "model.pt", "tree.npz", "training.json", "metrics.json"):
        assert (run / name).exists(), name
    trained = json.loads((run / "metrics.json").read_text())
    assert 0 < trained["fidelity"] <= 1
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--run", str(run), "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["recall"] == pytest.approx(trained["recall"])  # same split, model, tree
    assert evaluated["fidelity"] == pytest.approx(trained["fidelity"])
    assert "beam search" in capsys.readouterr().out


@pytest.mark.slow
def test_train_start_from_continues_a_fixed_tree_run(synth_path: Path, tmp_path: Path, capsys) -> None:
    """`train --start-from RUN`: the joint loop's iteration 0 is the named run's model, however
    many epochs that run trained (its own --epochs need not match); a run with other features
    (plain TDM for hierarchical JTM) is refused with one line, not a stack trace."""
    base = tmp_path / "tdm"
    assert main(["train", "--data", str(synth_path), "--method", "tdm", "--out", str(base), "--epochs", "2",
                 "--m", "20", "--no-fidelity"]) == 0
    joint = tmp_path / "jtm-j"
    assert main(["train", "--data", str(synth_path), "--method", "jtm-j", "--out", str(joint), "--start-from",
                 str(base), "--epochs", "1", "--iterations", "1", "--retrain-epochs", "1", "--m", "20",
                 "--no-fidelity"]) == 0
    history = json.loads((joint / "joint.json").read_text())
    assert [it["iteration"] for it in history["iterations"]] == [0, 1]
    assert history["iterations"][1]["epochs"] == 1
    capsys.readouterr()
    assert main(["train", "--data", str(synth_path), "--method", "jtm", "--out", str(tmp_path / "jtm"),
                 "--start-from", str(base), "--iterations", "1", "--m", "20"]) == 2
    assert "same scorer" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_refuses_a_changed_log(synth_path: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "log.parquet"
    data.write_bytes(synth_path.read_bytes())
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--method", "dnn", "--out", str(run), "--epochs", "1",
                 "--m", "20"]) == 0
    write(generate(SynthConfig(n_items=300, n_users=600, seed=1)), data)
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "fingerprint" in capsys.readouterr().err


@pytest.mark.slow
def test_tdm_beats_popularity_on_movielens(movielens_path: Path) -> None:
    data = load_interactions(DataConfig(path=str(movielens_path)))
    tdm, ctx = fit("tdm", data, epochs=3, m=200)
    pop = Popularity()
    pop.fit(ctx)
    test = make_eval_set(data, ctx.split.test)
    r_tdm = user_metrics(tdm.recommend(test, 200, False), test, 200).recall
    r_pop = user_metrics(pop.recommend(test, 200, False), test, 200).recall
    diff = r_tdm - r_pop
    assert diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(len(diff)), (r_tdm.mean(), r_pop.mean())


@pytest.mark.parametrize("retrain_unchanged", [False, True])
@pytest.mark.slow
def test_a_tree_step_that_moves_nothing_is_not_retrained(synth_path: Path, monkeypatch,
                                                         retrain_unchanged: bool) -> None:
    """A joint iteration whose tree step keeps every item in place (the guard rejected it)
    costs only the step: the model is already trained on that tree. `retrain_unchanged`
    restores the literal loop."""
    import trainer.joint as joint
    from trainer.tree.learning import TreeLearningReport

    monkeypatch.setattr(joint, "learn_tree", lambda model, tree, *args, **kwargs: (tree, TreeLearningReport()))
    data = load_interactions(DataConfig(path=str(synth_path)))
    split = split_users(data.n_users, 0)
    ctx = FitContext(data=data, split=split, samples=make_samples(data, split.train),
                     valid=make_eval_set(data, split.valid), m=50, exclude_seen=False, seed=0)
    method = DeepRetrieval(deep_config("jtm-j", epochs=1, iterations=2, retrain_epochs=1,
                                       retrain_unchanged=retrain_unchanged))
    method.fit(ctx)
    records = method.joint_history.records
    assert [r.epochs for r in records] == ([1, 1, 1] if retrain_unchanged else [1, 0, 0])
    assert all(r.moved_fraction == 0.0 for r in records[1:])
    if not retrain_unchanged:
        assert records[1].valid == records[0].valid and records[2].global_loss == records[0].global_loss
