"""Artifacts: manifest and checksums, ONNX vs PyTorch parity, service top-k == offline top-k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.config import Settings
from service.core.artifact import ArtifactError, verify_artifact
from service.core.beam import beam_search
from service.core.index import SearchParams, level_scores
from service.model_store import load_bundle
from service.retrieval import search
from service.scorer import OnnxScorer
from trainer.data.split import make_eval_set
from trainer.errors import DataError
from trainer.evaluate.recommend import torch_index
from trainer.export import export_onnx, export_run
from trainer.run import load_run

METHODS = ["tdm", "jtm-h"]


@pytest.mark.parametrize("method", METHODS)
def test_manifest_describes_the_artifact(trained, method: str) -> None:
    run, artifact = trained[method]
    manifest = verify_artifact(artifact)  # checksums and sizes of every file
    assert manifest["method"] == method and manifest["format_version"] == 1
    assert set(manifest["files"]) == {"scorer.onnx", "tree.npz", "items.npz", "trainer.npz"}
    config = json.loads((run / "config.json").read_text())
    assert manifest["data_fingerprint"] == config["dataset"]["fingerprint"]
    assert manifest["scorer"]["hierarchical"] == (method == "jtm-h")
    assert manifest["scorer"]["interface"] == "split"
    assert [i["name"] for i in manifest["scorer"]["inputs"]] == ["history", "user", "nodes"]
    assert [o["name"] for o in manifest["scorer"]["outputs"]] == ["user_state", "logits"]
    assert manifest["metrics"]["recall"] > 0
    assert manifest["parity"]["onnx_vs_torch_max_abs"] <= 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_onnx_logits_match_pytorch(trained, method: str) -> None:
    run, artifact = trained[method]
    _, _, _, model = load_run(run)
    scorer = OnnxScorer(artifact / "scorer.onnx", threads=1)
    rng = np.random.default_rng(1)
    n_rows = model.model.n_rows
    for batch, candidates in ((1, 3), (7, 120), (64, 500)):
        history = rng.integers(-1, n_rows, size=(batch, 69))
        nodes = rng.integers(-1, n_rows, size=(batch, candidates))
        with torch.no_grad():
            expected = model.model(torch.from_numpy(history), torch.from_numpy(nodes)).numpy()
        assert np.abs(scorer.score(history, nodes) - expected).max() <= 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_service_search_equals_offline_evaluator(trained, method: str) -> None:
    """Same users, same beam: the service (ONNX, one request at a time) returns the offline
    evaluator's (PyTorch, batched) top-k. Float differences of ~1e-6 between the two may only
    swap items whose scores are tied to that precision, so ranked scores must agree and the
    item lists must be identical except at such ties."""
    run, artifact = trained[method]
    config, data, split, offline = load_run(run)
    histories = make_eval_set(data, split.test).histories(69)
    expected = torch_index(offline.model, offline.tree).search(histories, 50, SearchParams(beam=50))
    bundle = load_bundle(artifact, Settings(batching=False))
    same_position = 0
    for row, history in enumerate(histories):
        got = search(bundle, history[history >= 0].astype(np.int64), k=50, beam=50)
        want_items, want_scores = expected.items[row], expected.scores[row]
        np.testing.assert_allclose(got.scores, want_scores, atol=1e-4)
        mismatch = got.items != want_items
        tie = np.abs(got.scores - want_scores[[list(want_items).index(i) if i in want_items else 0
                                               for i in got.items]]) <= 1e-4
        assert (~mismatch | tie).all(), (got.items, want_items)
        same_position += int((~mismatch).sum())
    bundle.close()
    assert same_position >= 0.98 * 50 * len(histories)


def test_export_refuses_to_overwrite(trained, tmp_path: Path) -> None:
    run, artifact = trained["tdm"]
    with pytest.raises(DataError, match="immutable"):
        export_run(run, artifact)


def test_tampered_artifacts_are_refused(trained, tmp_path: Path) -> None:
    import shutil

    _, artifact = trained["tdm"]
    copy = tmp_path / "a"
    shutil.copytree(artifact, copy)
    (copy / "tree.npz").write_bytes((copy / "tree.npz").read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="tree.npz.*truncated"):
        verify_artifact(copy)


@pytest.mark.parametrize("method", METHODS)
def test_split_scorer_serves_what_the_single_call_graph_served(trained, method: str, tmp_path: Path) -> None:
    """The served path (user states of every level in one call, then one candidate call per
    level) against the graph exported before the split, which recomputes the user part in
    every call: same logits, and the same beam search, with a filter that forces the search
    to widen and rerun (so states are reused across reruns)."""
    run, artifact = trained[method]
    config, data, split, offline = load_run(run)
    full_path = tmp_path / "full.onnx"
    spec = export_onnx(offline.model, full_path, interface="full")
    assert spec["interface"] == "full" and [i["name"] for i in spec["inputs"]] == ["history", "nodes"]
    served, single = OnnxScorer(artifact / "scorer.onnx", threads=1), OnnxScorer(full_path, threads=1)
    assert served.split and not single.split
    rng = np.random.default_rng(2)
    n_rows = offline.model.n_rows
    history = rng.integers(-1, n_rows, size=(5, 69))
    nodes = rng.integers(-1, n_rows, size=(5, 33))
    np.testing.assert_allclose(served.score(history, nodes), single.score(history, nodes), atol=1e-5)
    np.testing.assert_allclose(served.score_state(served.user_state(history), nodes),
                               single.score(history, nodes), atol=1e-5)

    tree, hierarchical = offline.tree, offline.config.scorer.hierarchical
    histories = make_eval_set(data, split.test).histories(69)[:16]
    banned = np.zeros(tree.n_items, dtype=bool)
    banned[rng.permutation(tree.n_items)[: tree.n_items * 3 // 4]] = True

    def allowed(ids: np.ndarray) -> np.ndarray:
        return (ids >= 0) & ~banned[np.maximum(ids, 0)]

    calls = []

    class Counted:
        """The served scorer, counting the user-state rows it computes per call."""

        def user_states(self, rows: list[np.ndarray]) -> list[np.ndarray]:
            calls.append(sum(len(r) for r in rows))
            return served.user_states(rows)

        score_state = served.score_state

    for flt in (None, allowed):
        calls.clear()
        fast = beam_search(tree, level_scores(Counted(), tree, histories, hierarchical), len(histories), 30, 8, flt)
        # the single-call graph's "state" is the rows themselves: the user part runs in every call
        slow = beam_search(tree, level_scores(single, tree, histories, hierarchical), len(histories), 30, 8, flt)
        np.testing.assert_array_equal(fast.items, slow.items)
        np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-5)
        # Plain features: one state per user. Hierarchical: one call covers the start level and
        # everything below; a rerun with a wider beam may start higher and adds only those levels.
        assert len(calls) == 1 or (flt is not None and hierarchical)
        assert sum(calls) <= len(histories) * (tree.depth + 1 if hierarchical else 1)


def test_service_serves_an_artifact_exported_before_the_split(trained, tmp_path: Path) -> None:
    """An artifact whose scorer is the older single-call graph still loads and answers the
    same as the current export."""
    import shutil

    from service.core.artifact import sha256_file
    from trainer.export import bind_tree

    run, artifact = trained["jtm-h"]
    _, data, split, offline = load_run(run)
    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    export_onnx(offline.model, old / "scorer.onnx", interface="full")
    manifest = json.loads((old / "manifest.json").read_text())
    bind_tree(old / "scorer.onnx", manifest["files"]["tree.npz"]["sha256"])
    manifest["files"]["scorer.onnx"] = {"sha256": sha256_file(old / "scorer.onnx"),
                                        "bytes": (old / "scorer.onnx").stat().st_size}
    (old / "manifest.json").write_text(json.dumps(manifest))
    current, before = load_bundle(artifact, Settings(batching=False)), load_bundle(old, Settings(batching=False))
    assert not before.scorer.split
    for history in make_eval_set(data, split.test).histories(69)[:10]:
        a = search(current, history[history >= 0].astype(np.int64), k=40, beam=40)
        b = search(before, history[history >= 0].astype(np.int64), k=40, beam=40)
        np.testing.assert_array_equal(a.items, b.items)
    current.close()
    before.close()


@pytest.mark.parametrize("method", METHODS)
def test_load_method_rebuilds_the_exported_model(trained, method: str) -> None:
    """`trainer refresh` continues the served model from the artifact alone: configuration and
    dense weights from trainer.npz, embedding rows and biases from the scorer's table."""
    from service.core.artifact import read_artifact
    from trainer.export import load_method

    run, artifact = trained[method]
    _, _, _, offline = load_run(run)
    rebuilt = load_method(read_artifact(artifact))
    assert rebuilt.config == offline.config
    original, loaded = offline.model.state_dict(), rebuilt.model.state_dict()
    assert set(original) == set(loaded)
    for name, value in original.items():
        assert torch.equal(value, loaded[name]), name
    assert np.array_equal(rebuilt.tree.item_leaf, offline.tree.item_leaf)
