"""The training benchmarks run end to end at tiny sizes, so they cannot rot between the runs
that produce docs/PERFORMANCE.md and docs/SCALING.md figures (speed is not asserted here,
only that each script completes and writes the JSON its docs cite, with consistent fields)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.data.synth import SynthConfig, generate, write

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_bench_training_profiles_both_methods(tmp_path: Path) -> None:
    log = tmp_path / "synth.parquet"
    write(generate(SynthConfig(n_items=400, n_users=300, n_interactions=9_000, seed=1)), log)
    out = tmp_path / "profile.json"
    result = _run("-m", "bench.bench_training", "--data", f"tiny={log}", "--rounds", "1", "--steps", "3", "--warmup",
                  "1", "--batch-size", "32", "--json", str(out))
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["results"]} == {"tdm", "jtm"}
    for row in report["results"]:
        ours = row["ours"]
        assert ours["samples_per_s"] > 0 and ours["pairs_per_sample"] > 0
        assert ours["phases_ms"], "the per-phase profile is empty"
    assert "GEMM rate" in result.stdout


@pytest.mark.slow
def test_bench_gpu_smoke_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    _run("-m", "bench.bench_gpu", "--device", "cpu", "--quick", "--json", str(out))
    report = json.loads(out.read_text())
    kinds = {(r["method"], r["kernel"], r["precision"]) for r in report["throughput"]}
    assert ("jtm", "fused", "fp32") in kinds and ("tdm", "autograd", "bf16") in kinds
    assert all(stage["ok"] for stage in report["pipeline"].values())


@pytest.mark.slow
def test_bench_scale_runs_every_stage_with_two_ranks(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    _run("-m", "bench.bench_scale", "--events", str(tmp_path / "log.parquet"), "--generate", "--items", "500",
         "--users", "300", "--interactions", "12000", "--steps", "2", "--warmup", "1", "--batch-size", "32",
         "--json", str(out))
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench.bench_scale --events ")  # as the docs run it
    assert report["prepare"]["interactions"] > 0
    one, two = report["train_1_process"], report["train_2_ranks"]
    assert two["world_size"] == 2 and one["world_size"] == 1
    for method in ("jtm-h", "tdm"):
        assert one[method]["samples_per_s"] > 0 and two[method]["samples_per_s"] > 0
    # a second run reuses the prepared arrays instead of indexing the log again (one rank: the
    # ranks were tested above, and every gloo group started is one more chance of a teardown abort)
    _run("-m", "bench.bench_scale", "--events", str(tmp_path / "log.parquet"), "--steps", "2", "--warmup", "1",
         "--batch-size", "32", "--methods", "tdm", "--ranks", "1", "--json", str(out))
    assert json.loads(out.read_text())["prepare"].get("reused") is True


def test_bench_scale_repeats_a_stage_once_only_after_a_rank_abort(tmp_path: Path) -> None:
    """A torchrun stage whose rank died of std::terminate runs once more (and says so); any
    other failure, or a second abort, still fails the benchmark."""
    import pytest

    from bench.bench_scale import _RANK_ABORT, run_stage

    marker = tmp_path / "ran-once"
    flaky = ("import pathlib, sys\n"
             f"m = pathlib.Path({str(marker)!r})\n"
             "if not m.exists():\n"
             f"    m.touch(); sys.stderr.write({_RANK_ABORT!r}); sys.exit(1)\n"
             "print('{\"ok\": 1}')\n")
    out = run_stage([sys.executable, "-c", flaky], "flaky", retry_rank_abort=True)
    assert out["ok"] == 1 and out["retried_after_rank_abort"] is True
    always = f"import sys; sys.stderr.write({_RANK_ABORT!r}); sys.exit(1)"
    with pytest.raises(SystemExit, match="failed"):
        run_stage([sys.executable, "-c", always], "aborts twice", retry_rank_abort=True)
    marker.unlink()
    with pytest.raises(SystemExit, match="failed"):
        run_stage([sys.executable, "-c", flaky], "not retried", retry_rank_abort=False)
    with pytest.raises(SystemExit, match="failed"):
        run_stage([sys.executable, "-c", "import sys; sys.exit(3)"], "another failure", retry_rank_abort=True)
