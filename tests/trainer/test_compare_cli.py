"""`compare` end to end through the CLI: the table and the JSON shape the issue names."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.cli import main
from trainer.synth import SynthConfig, generate, write


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
