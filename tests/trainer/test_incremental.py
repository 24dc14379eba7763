"""`train --start-from RUN --data NEW_LOG`: a trained run continues on new events
with its learnt tree and its item space, and exports, evaluates and publishes as any run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from service.core.tree import Tree
from trainer.cli import main as trainer_main
from trainer.data.interactions import DataConfig
from trainer.evaluate.protocol import EvalProtocol
from trainer.export import export_run
from trainer.publish import publish
from trainer.run import RunSpec, evaluate_run, train_run


def test_a_run_continues_on_new_events_with_its_tree(trained, tmp_path: Path, capsys) -> None:
    run, _ = trained["tdm"]
    log = pd.read_parquet(run.parent / "log.parquet")
    # New events: the later half of the log, plus events of an item the run has never seen.
    recent = log[log["timestamp"] >= log["timestamp"].median()].copy()
    unknown = recent.iloc[:30].copy()
    unknown["item_id"] = 123
    new_log = tmp_path / "new.csv"
    pd.concat([recent, unknown]).to_csv(new_log, index=False)
    out = tmp_path / "continued"
    metrics = train_run(RunSpec(data=DataConfig(path=str(new_log)), method="tdm", start_from=str(run),
                                protocol=EvalProtocol(m=50), fidelity=False), out, {"epochs": 1})
    assert metrics["users"] > 0
    assert Tree.load(out / "tree.npz").equals(Tree.load(run / "tree.npz"))  # the learnt tree is kept
    before = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    after = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)  # and the model trained on
    config = json.loads((out / "config.json").read_text())
    assert config["continued_from"]["run"] == str(run) and config["continued_from"]["dropped_events"] > 0
    with np.load(out / "items.npz") as new_items, np.load(run / "items.npz") as old_items:
        assert np.array_equal(new_items["item_ids"], old_items["item_ids"])  # the run's item space
    assert evaluate_run(out, None, None, None, fidelity=False)["users"] == metrics["users"]
    export_run(out, tmp_path / "artifact")
    publish(tmp_path / "artifact", tmp_path / "registry")
    # Continuing with another method is refused in one line.
    argv = ["train", "--data", str(new_log), "--method", "jtm-h", "--start-from", str(run), "--out",
            str(tmp_path / "other")]
    assert trainer_main(argv) == 2
    assert "pass --method tdm" in capsys.readouterr().err


def test_retired_items_leave_at_the_next_full_training(trained, tmp_path: Path) -> None:
    """train --exclude-items ARTIFACT drops the events of the artifact's retired items: the new
    run's catalogue (and tree) no longer holds them."""
    from trainer.catalogue.update import retire_items

    run, artifact = trained["tdm"]
    with np.load(artifact / "items.npz") as archive:
        gone = archive["item_ids"][:5]
    pd.DataFrame({"item_id": gone}).to_csv(tmp_path / "gone.csv", index=False)
    retire_items(artifact, tmp_path / "gone.csv", tmp_path / "retired")
    out = tmp_path / "fresh"
    train_run(RunSpec(data=DataConfig(path=str(run.parent / "log.parquet"), exclude_items=str(tmp_path / "retired")),
                      method="tdm", protocol=EvalProtocol(m=50), fidelity=False), out, {"epochs": 1})
    with np.load(out / "items.npz") as archive:
        assert not np.isin(gone, archive["item_ids"]).any() and len(archive["item_ids"]) > 400
    assert json.loads((out / "config.json").read_text())["data"]["exclude_items"] == str(tmp_path / "retired")
    assert evaluate_run(out, None, None, None, fidelity=False)["users"] > 0


@pytest.mark.slow
def test_continuing_with_one_tree_step_exports(trained, tmp_path: Path, capsys) -> None:
    """--tree-step: one Algorithm-2 step and a retraining after the epochs; the joint record
    says whether the step was kept (validation decides), and the run exports either way."""
    run, _ = trained["tdm"]
    log = pd.read_parquet(run.parent / "log.parquet")
    new_log = tmp_path / "new.csv"
    log[log["timestamp"] >= log["timestamp"].quantile(0.3)].to_csv(new_log, index=False)
    out = tmp_path / "stepped"
    train_run(RunSpec(data=DataConfig(path=str(new_log)), method="tdm", start_from=str(run),
                      protocol=EvalProtocol(m=50), fidelity=False, tree_step=True), out,
              {"epochs": 1, "retrain_epochs": 1})
    joint = json.loads((out / "joint.json").read_text())
    assert len(joint["iterations"]) == 2 and joint["iterations"][1]["moved_fraction"] is not None
    assert Tree.load(out / "tree.npz").n_items == Tree.load(run / "tree.npz").n_items
    export_run(out, tmp_path / "artifact")
    assert trainer_main(["train", "--data", str(run.parent / "log.parquet"), "--method", "tdm", "--tree-step",
                         "--out", str(tmp_path / "x")]) == 2
    assert "needs --start-from" in capsys.readouterr().err
