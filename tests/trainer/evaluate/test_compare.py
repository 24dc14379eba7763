"""`compare` end to end through the CLI: the table and the JSON shape the issue names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.data.synth import SynthConfig, generate, write


def test_compare_writes_table_and_json(tmp_path: Path, capsys) -> None:
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=400, n_users=300, seed=0)), data)
    out = tmp_path / "res.json"
    code = main(["compare", "--data", str(data), "--methods", "pop,itemcf", "--m", "20", "--seeds", "2",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| pop |" in printed and "| itemcf |" in printed and "filter: none (paper)" in printed
    result = json.loads(out.read_text())
    assert result["m"] == 20 and result["seeds"] == [0, 1]
    for name in ("pop", "itemcf"):
        r = result["results"][name]
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["f_measure"] <= 1
        assert set(r["std"]) == {"precision", "recall", "f_measure"}
    assert result["dataset"]["users"] > 0 and result["dataset"]["fingerprint"]
    assert "recall_vs_reference" in result["results"]["itemcf"]
    assert result["complete"] is True


def test_results_are_saved_after_every_method(tmp_path: Path) -> None:
    """A long compare writes its JSON after each fitted method (complete: false until the
    end), so stopping it keeps what was measured, and merge can complete it later."""
    from trainer.data.interactions import DataConfig, load_interactions
    from trainer.evaluate.compare import CompareConfig, run_compare
    from trainer.evaluate.protocol import EvalProtocol

    data_path = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=300, n_users=200, seed=2)), data_path)
    data = load_interactions(DataConfig(path=str(data_path)))
    seen: list[dict] = []
    config = CompareConfig(methods=("pop", "itemcf"), protocol=EvalProtocol(m=20), seeds=(0, 1), per_user=True)
    final = run_compare(data, config, {}, on_result=seen.append)
    assert [list(r["results"]) for r in seen] == [["pop"], ["pop", "itemcf"], ["pop", "itemcf"],
                                                   ["pop", "itemcf"], ["pop", "itemcf"]]
    assert [r["complete"] for r in seen] == [False, False, False, False, True] and seen[-1] == final
    # A stopped run contributes what it finished: merged with the rest it gives the full table,
    # alone it gives an incomplete one; a method that lacks a seed is refused.
    partial, rest = tmp_path / "partial.json", tmp_path / "rest.json"
    partial.write_text(json.dumps(seen[0]))  # pop on seed 0 only
    assert main(["merge", str(partial), "--json", str(tmp_path / "x.json")]) == 0
    alone = json.loads((tmp_path / "x.json").read_text())
    assert alone["complete"] is False and list(alone["results"]) == ["pop"]
    rest.write_text(json.dumps({**final, "per_seed": {"itemcf": final["per_seed"]["itemcf"][:1]}}))
    assert main(["merge", str(partial), str(rest), "--json", str(tmp_path / "x.json")]) == 0
    merged = json.loads((tmp_path / "x.json").read_text())
    assert merged["complete"] is True and merged["seeds"] == [0] and list(merged["results"]) == ["pop", "itemcf"]
    assert merged["per_seed"]["itemcf"] == final["per_seed"]["itemcf"][:1]
    (tmp_path / "inconsistent.json").write_text(json.dumps(seen[2]))  # itemcf lacks seed 1
    assert main(["merge", str(tmp_path / "inconsistent.json"), "--json", str(tmp_path / "x.json")]) == 2


def test_merging_seed_runs_equals_one_run(tmp_path: Path, capsys) -> None:
    """Seeds run separately (--per-user) and merged give exactly the table of one run."""
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=400, n_users=300, seed=0)), data)
    common = ["compare", "--data", str(data), "--methods", "pop,itemcf", "--m", "20", "--per-user"]
    assert main([*common, "--seeds", "2", "--json", str(tmp_path / "both.json")]) == 0
    for seed in (0, 1):
        assert main([*common, "--seed", str(seed), "--json", str(tmp_path / f"s{seed}.json")]) == 0
    assert main(["merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"), "--json",
                 str(tmp_path / "merged.json")]) == 0
    both, merged = (json.loads((tmp_path / f).read_text()) for f in ("both.json", "merged.json"))
    assert merged["environments"] == [both["environment"]]  # one machine ran both parts
    assert merged["seeds"] == [0, 1]
    for name in ("pop", "itemcf"):
        for key in ("precision", "recall", "f_measure", "std", "user_se", "recall_vs_reference"):
            if key in both["results"][name]:
                assert merged["results"][name][key] == pytest.approx(both["results"][name][key])
    # The same seed twice is kept once when its results are identical (a reproducible rerun),
    # refused when they differ; a result without per-user metrics is refused with one line.
    assert main(["merge", str(tmp_path / "s0.json"), str(tmp_path / "s0.json"), "--json", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x").read_text())["seeds"] == [0]
    altered = json.loads((tmp_path / "s0.json").read_text())
    altered["per_seed"]["pop"][0]["users"]["recall"][0] += 0.5
    (tmp_path / "altered.json").write_text(json.dumps(altered))
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "s0.json"), str(tmp_path / "altered.json"),
                 "--json", str(tmp_path / "x")]) == 2
    assert "pop on seed 0 appears twice with different results" in capsys.readouterr().err
    plain = tmp_path / "p.json"
    assert main(["compare", "--data", str(data), "--methods", "pop", "--m", "20", "--json", str(plain)]) == 0
    assert main(["merge", str(tmp_path / "p.json"), "--json", str(tmp_path / "x")]) == 2
    assert "--per-user" in capsys.readouterr().err


def test_merging_method_runs_equals_one_run(tmp_path: Path, capsys) -> None:
    """Methods of the same seeds run separately and merged give exactly the table of one run
    (paired differences included); a method without every seed, or parts trained with
    different options, are refused."""
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=400, n_users=300, seed=2)), data)
    common = ["compare", "--data", str(data), "--m", "20", "--per-user", "--seeds", "2"]
    assert main([*common, "--methods", "pop,itemcf", "--json", str(tmp_path / "both.json")]) == 0
    assert main([*common, "--methods", "pop", "--json", str(tmp_path / "pop.json")]) == 0
    assert main([*common, "--methods", "itemcf", "--json", str(tmp_path / "cf.json")]) == 0
    assert main(["merge", str(tmp_path / "pop.json"), str(tmp_path / "cf.json"), "--json",
                 str(tmp_path / "merged.json")]) == 0
    both, merged = (json.loads((tmp_path / f).read_text()) for f in ("both.json", "merged.json"))
    assert merged["environments"] == [both["environment"]]  # one machine ran both parts
    assert list(merged["results"]) == ["pop", "itemcf"] and merged["protocol"]["methods"] == ["pop", "itemcf"]
    for key in ("precision", "recall", "f_measure", "std", "user_se", "recall_vs_reference"):
        assert merged["results"]["itemcf"][key] == pytest.approx(both["results"]["itemcf"][key])
    # Re-based paired differences: itemcf - pop from the table equals -(pop - itemcf).
    assert main(["merge", str(tmp_path / "both.json"), "--reference", "itemcf", "--json",
                 str(tmp_path / "rebased.json"), "--plot", str(tmp_path / "rebased.png")]) == 0
    assert (tmp_path / "rebased.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rebased = json.loads((tmp_path / "rebased.json").read_text())
    assert rebased["reference"] == "itemcf" and "recall_vs_reference" not in rebased["results"]["itemcf"]
    assert rebased["results"]["pop"]["recall_vs_reference"]["mean"] == pytest.approx(
        -both["results"]["itemcf"]["recall_vs_reference"]["mean"])
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "both.json"), "--reference", "dnn", "--json", str(tmp_path / "x")]) == 2
    assert "reference method dnn is not in the results" in capsys.readouterr().err
    assert main([*common[:-2], "--seed", "2", "--methods", "pop", "--json", str(tmp_path / "pop2.json")]) == 0
    assert main(["merge", str(tmp_path / "both.json"), str(tmp_path / "pop2.json"), "--json", str(tmp_path / "x")]) == 2
    assert "method itemcf is missing seed(s) [2]" in capsys.readouterr().err
    assert main([*common, "--methods", "itemcf", "--itemcf-neighbours", "5", "--json", str(tmp_path / "cf5.json")]) == 0
    assert main(["merge", str(tmp_path / "pop.json"), str(tmp_path / "cf5.json"), "--json", str(tmp_path / "x")]) == 2
    assert "different options (itemcf_neighbours: None vs 5)" in capsys.readouterr().err


@pytest.mark.slow
def test_joint_history_is_kept_and_tabled(tmp_path: Path, capsys) -> None:
    """compare --per-user keeps each joint run's loop history (global loss per iteration, tree
    step before/after), merge carries it over, and the table prints it."""
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=200, n_users=200, seed=1)), data)
    out = tmp_path / "res.json"
    assert main(["compare", "--data", str(data), "--methods", "tdm,jtm-j", "--m", "20", "--per-user",
                 "--epochs", "1", "--iterations", "1", "--retrain-epochs", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    history = result["per_seed"]["jtm-j"][0]["joint"]
    assert result["per_seed"]["tdm"][0]["joint"] is None
    iterations = history["iterations"]
    assert [it["iteration"] for it in iterations] == [0, 1]
    assert iterations[1]["objective_after"] >= iterations[1]["objective_before"]  # -L: the step never loses
    assert f"| jtm-j | 0 | {iterations[0]['global_loss']:.4f} → {iterations[1]['global_loss']:.4f} |" in printed
    assert main(["merge", str(out), "--json", str(tmp_path / "merged.json")]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["per_seed"]["jtm-j"][0]["joint"] == history


@pytest.mark.slow
def test_kmeans_reclustering_loop_reports_its_tree_steps(tmp_path: Path) -> None:
    """TDM's re-clustering as a joint loop (Figure 2's comparison curve): continues from
    JTM-H's model and records each step's loss before and after with the model fixed."""
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=200, n_users=200, seed=4)), data)
    out = tmp_path / "res.json"
    assert main(["compare", "--data", str(data), "--methods", "jtm-h,jtm-cluster", "--m", "20", "--per-user",
                 "--epochs", "1", "--iterations", "1", "--retrain-epochs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    iterations = result["per_seed"]["jtm-cluster"][0]["joint"]["iterations"]
    assert [it["iteration"] for it in iterations] == [0, 1]
    assert iterations[0]["global_loss"] > 0 and 0 < iterations[1]["moved_fraction"] <= 1
    assert iterations[1]["objective_before"] < 0 and iterations[1]["objective_after"] < 0
    assert result["options"]["iterations"] == 1 and result["options"]["retrain_epochs"] == 1


@pytest.mark.slow
def test_equal_epochs_gives_fixed_tree_methods_the_joint_budget(tmp_path: Path, capsys) -> None:
    """--equal-epochs: TDM trains the epochs JTM-J's loop spends (1 + 1 x 1 = 2) and equals a
    plain 2-epoch TDM run; JTM-J still continues from TDM's model, taken after its own single
    epoch, and equals a JTM-J run that trained its iteration 0 itself. The table shows the
    epochs each row trained."""
    data = tmp_path / "log.parquet"
    write(generate(SynthConfig(n_items=200, n_users=200, seed=3)), data)
    common = ["compare", "--data", str(data), "--m", "20", "--per-user", "--iterations", "1", "--retrain-epochs", "1"]
    assert main([*common, "--methods", "tdm,jtm-j", "--epochs", "1", "--equal-epochs",
                 "--json", str(tmp_path / "equal.json")]) == 0
    printed = capsys.readouterr().out
    assert main([*common, "--methods", "tdm", "--epochs", "2", "--json", str(tmp_path / "tdm2.json")]) == 0
    assert main([*common, "--methods", "jtm-j", "--epochs", "1", "--json", str(tmp_path / "jtmj.json")]) == 0
    equal, tdm2, jtmj = (json.loads((tmp_path / f).read_text()) for f in ("equal.json", "tdm2.json", "jtmj.json"))
    assert equal["options"]["equal_epochs"] is True and tdm2["options"]["equal_epochs"] is False
    assert equal["per_seed"]["tdm"][0]["users"] == tdm2["per_seed"]["tdm"][0]["users"]
    assert equal["per_seed"]["tdm"][0]["epochs"] == [2]
    assert equal["per_seed"]["jtm-j"][0]["users"] == jtmj["per_seed"]["jtm-j"][0]["users"]
    assert equal["per_seed"]["jtm-j"][0]["epochs"] == [1, 1]
    losses = [[it["global_loss"] for it in r["per_seed"]["jtm-j"][0]["joint"]["iterations"]] for r in (equal, jtmj)]
    assert losses[0] == losses[1]
    assert "epochs trained |" in printed and printed.count("| 2 |") >= 2
    assert equal["environment"]["torch"] and equal["environment"]["cpus"] >= 1
    # Results with and without --equal-epochs do not pool.
    parts = [str(tmp_path / "equal.json"), str(tmp_path / "tdm2.json")]
    assert main(["merge", *parts, "--json", str(tmp_path / "x")]) == 2
    assert "equal_epochs: True vs False" in capsys.readouterr().err
