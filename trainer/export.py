"""`export`: turn a run directory into a versioned, self-describing artifact for the service.

The scorer becomes one ONNX graph with two halves that share the embedding table:
``history (H, L) rows -> user_state (H, d + 2, H1)``, the user part (window pooling, a_u and
M_u), and ``(user (B, d + 2, H1), nodes (B, C) rows) -> logits (B, C)``, the candidates. The
service computes the user states of every level a search will visit in one call per request
and then calls the candidate half once per beam-search level (the "split" interface; a graph
that recomputed the user part in every level's call cost ~8% more search time). With the
hierarchical representation the service maps behaviours to level-l ancestors (numpy, from the
tree in the same artifact) before the call, exactly as training did.

Beside them, `trainer.npz` keeps the method's configuration and the scorer's weights other than
the embedding table (which the graph holds), so `load_method` rebuilds the served model for
`trainer refresh` to continue training it, new items' rows included once add-items has grown
the table.

Parity is checked before the artifact is written: ONNX vs PyTorch logits on random inputs
(max abs difference, must be <= 1e-4), and the service's beam search over ONNX scores vs the
offline evaluator's over PyTorch scores on the run's test users (identical top-k lists).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from service.core.artifact import TRAINER_FILE, Artifact, ArtifactError, sha256_file
from service.core.artifact import write_artifact as core_write_artifact
from trainer.data.split import sampled_histories
from trainer.deep_retrieval import DeepConfig, DeepRetrieval
from trainer.errors import DataError
from trainer.model.scorer import TreeScorer

log = logging.getLogger(__name__)

ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4
_TABLE_WEIGHTS = ("embedding.weight", "bias.weight")  # in scorer.onnx's table, not in trainer.npz
_CONFIG_MEMBER = "method_config"  # trainer.npz's member holding DeepConfig as JSON


class _ScorerGraph(torch.nn.Module):
    """`TreeScorer.forward` as served: the same function, laid out so that onnxruntime does
    less per beam-search level (the parity checks below compare it with the model itself).

    The table the graph gathers from is [embedding | 1 | bias] (rows, d + 2): one Gather per
    candidate brings its embedding, a constant 1 and its bias. The user part becomes one
    (d + 2, H1) matrix per row, [M_u^T; a_u; 0], so the first layer including a_u is a single
    MatMul over all candidates, and the bias is a column of what was gathered. The window-target
    products are summed over the outer window axis (a contiguous ReduceSum). Against the plain
    export this removes the per-candidate Add of a_u, the second Gather (bias) and the strided
    ReduceSum: 7-9% less time per 400-candidate call for one row, 12-14% for 4-16 rows.
    """

    def __init__(self, model: TreeScorer) -> None:
        super().__init__()
        self.rest = model.rest
        self.n_rows = model.n_rows
        d, n_windows = model.config.dim, model.n_windows
        with torch.no_grad():
            embedding, bias = model.embedding.weight, model.bias.weight
            a_w, b_w, c_w = model.first_layer_blocks()  # (H1, W d), (H1, d), (H1, W, d)
            hidden = a_w.shape[0]
            a_aug = torch.zeros(hidden, n_windows, d + 2)
            a_aug[:, :, :d] = a_w.reshape(hidden, n_windows, d)
            c_aug = torch.zeros(n_windows, d + 2, hidden)
            c_aug[:, :d] = c_w.permute(1, 2, 0)
            b_aug = torch.zeros(d + 2, hidden)
            b_aug[:d] = b_w.T
            one_hot = torch.zeros(d + 2, 1)
            one_hot[d] = 1.0
            self.register_buffer("table", torch.cat([embedding, torch.ones_like(bias), bias], dim=1).clone())
            self.register_buffer("a_aug", a_aug.reshape(hidden, -1).T.contiguous())  # (W (d + 2), H1)
            self.register_buffer("first_bias", model.first.bias.detach().clone())
            self.register_buffer("c_aug", c_aug)
            self.register_buffer("b_aug", b_aug)
            self.register_buffer("one_hot", one_hot)
            self.register_buffer("windows", model.pool.weights.detach().float().clone())  # (W, L)
            self.register_buffer("windows_t", model.pool.weights.detach().float().T.contiguous())

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        """(H, L) behaviour rows -> (H, d + 2, H1) per-row matrices [M_u^T; a_u; 0]."""
        pad = torch.tensor(self.n_rows, dtype=history.dtype)
        mask = history >= 0
        embedded = self.table[torch.where(mask, history, pad)]  # (H, L, d + 2)
        sums = torch.matmul(self.windows, embedded)  # (H, W, d + 2)
        counts = torch.matmul(mask.to(embedded.dtype), self.windows_t)  # (H, W)
        pooled = sums / counts.clamp(min=1.0).unsqueeze(-1)
        a = torch.matmul(pooled.flatten(1), self.a_aug) + self.first_bias  # (H, H1)
        return (pooled.unsqueeze(-1) * self.c_aug).sum(1) + self.b_aug + a.unsqueeze(1) * self.one_hot

    def logits(self, user: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """(B, d + 2, H1) user states, (B, C) candidate rows -> (B, C) logits."""
        pad = torch.tensor(self.n_rows, dtype=nodes.dtype)
        target = self.table[torch.where(nodes >= 0, nodes, pad)]  # (B, C, d + 2)
        hidden = torch.matmul(target, user)  # (B, C, H1): a_u + M_u t for every candidate
        logits = self.rest(hidden.reshape(-1, hidden.shape[-1])).reshape(nodes.shape)
        return logits + target[:, :, -1]

    def forward(self, history: torch.Tensor, user: torch.Tensor,
                nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both halves in one graph; a caller asks for the output it needs and feeds the other
        half's inputs empty (0 rows), which costs a few empty kernels."""
        return self.user_state(history), self.logits(user, nodes)


class _FullScorerGraph(torch.nn.Module):
    """The interface before the split, ``(history, nodes) -> logits``, one call doing both
    halves: what artifacts exported before it contain. Kept so that tests can build such an
    artifact and prove the service still serves it."""

    def __init__(self, graph: _ScorerGraph) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, history: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return self.graph.logits(self.graph.user_state(history), nodes)


def export_onnx(model: TreeScorer, path: Path, interface: str = "split") -> dict:
    """Write the scorer as ONNX with dynamic batch and candidate axes; return its I/O spec.
    interface: "split" (user half and candidate half, the default) or "full" (the older
    single-output graph, for compatibility tests)."""
    if model.config.attention:
        raise DataError("the attention variant cannot be exported: it has no user/node split")
    if interface not in ("split", "full"):
        raise ValueError(f"interface must be 'split' or 'full', got {interface!r}")
    model = model.cpu().eval()
    graph = _ScorerGraph(model)
    history = torch.full((2, model.config.max_history), -1, dtype=torch.long)
    history[:, :3] = torch.arange(3)
    nodes = torch.arange(6, dtype=torch.long).reshape(2, 3) % model.n_rows
    width, hidden = model.config.dim + 2, model.config.hidden[0]
    history_spec = {"name": "history", "dtype": "int64", "shape": ["rows", model.config.max_history],
                    "meaning": "embedding rows of the behaviours, most recent first, -1 padded"}
    nodes_spec = {"name": "nodes", "dtype": "int64", "shape": ["batch", "candidates"],
                  "meaning": "embedding rows of candidate nodes, -1 = none"}
    logits_spec = {"name": "logits", "dtype": "float32", "shape": ["batch", "candidates"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if interface == "split":
            with torch.no_grad():
                user = graph.user_state(history)
            torch.onnx.export(
                graph, (history, user, nodes), str(path), input_names=["history", "user", "nodes"],
                output_names=["user_state", "logits"], opset_version=ONNX_OPSET, dynamo=False,
                dynamic_axes={"history": {0: "rows"}, "user": {0: "batch"}, "nodes": {0: "batch", 1: "candidates"},
                              "user_state": {0: "rows"}, "logits": {0: "batch", 1: "candidates"}},
            )
            user_spec = {"name": "user", "dtype": "float32", "shape": ["batch", width, hidden],
                         "meaning": "user states (the user_state output) of the rows to score"}
            state_spec = {"name": "user_state", "dtype": "float32", "shape": ["rows", width, hidden]}
            io = {"inputs": [history_spec, user_spec, nodes_spec], "outputs": [state_spec, logits_spec]}
        else:
            torch.onnx.export(
                _FullScorerGraph(graph), (history, nodes), str(path), input_names=["history", "nodes"],
                output_names=["logits"], opset_version=ONNX_OPSET, dynamo=False,
                dynamic_axes={"history": {0: "batch"}, "nodes": {0: "batch", 1: "candidates"},
                              "logits": {0: "batch", 1: "candidates"}},
            )
            io = {"inputs": [{**history_spec, "shape": ["batch", model.config.max_history]}, nodes_spec],
                  "outputs": [logits_spec]}
    return {
        "file": "scorer.onnx", "opset": ONNX_OPSET, "interface": interface, **io,
        "n_rows": model.n_rows, "max_history": model.config.max_history,
        "hierarchical": model.config.hierarchical, "windows": [list(w) for w in model.config.windows],
        "dim": model.config.dim, "hidden": list(model.config.hidden),
    }


def bind_tree(onnx_path: Path, tree_sha256: str) -> None:
    """Record the tree's sha256 in the ONNX model's metadata: the scorer was trained with that
    tree (its node rows mean that tree's nodes), and the service refuses any other tree."""
    import onnx

    model = onnx.load(str(onnx_path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "tree_sha256", tree_sha256
    onnx.save(model, str(onnx_path))


def logits_parity(model: TreeScorer, onnx_path: Path, seed: int = 0) -> float:
    """Max |ONNX - PyTorch| over random histories and candidates of several shapes."""
    from service.scorer import OnnxScorer

    scorer = OnnxScorer(onnx_path, threads=1)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch, candidates in ((1, 1), (4, 57), (32, 400)):
        history = rng.integers(-1, model.n_rows, size=(batch, model.config.max_history))
        nodes = rng.integers(-1, model.n_rows, size=(batch, candidates))
        with torch.no_grad():
            expected = model(torch.from_numpy(history), torch.from_numpy(nodes)).numpy()
        worst = max(worst, float(np.abs(scorer.score(history, nodes) - expected).max()))
    return worst


def topk_parity(method: DeepRetrieval, onnx_path: Path, histories: np.ndarray, k: int, beam: int) -> dict:
    """Offline (PyTorch) vs service (ONNX) beam search on the same users: identical lists?"""
    from service.core.index import SearchParams, TreeIndex
    from service.scorer import OnnxScorer
    from trainer.evaluate.recommend import retrieve

    assert method.model is not None and method.tree is not None
    offline = retrieve(method.model, histories, k, method.tree, beam)
    served = TreeIndex(method.tree, OnnxScorer(onnx_path), method.config.scorer.hierarchical, batch_users=64)
    online = served.search(histories, k, SearchParams(beam=beam)).items
    identical = int((offline == online).all(axis=1).sum())
    overlap = float(np.mean([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max((a >= 0).sum(), 1)
                             for a, b in zip(offline, online, strict=True)]))
    return {"users": len(histories), "identical_lists": identical, "mean_overlap": overlap, "k": k, "beam": beam}


def export_run(run: Path, out: Path, parity_users: int = 200) -> dict:
    """Write the artifact for `run` into `out` (which must not exist yet); return the manifest."""
    run, out = Path(run), Path(out)
    for name in ("config.json", "model.pt", "items.npz"):
        if not (run / name).exists():
            raise DataError(f"not an exportable run directory (no {name})", run)
    config = json.loads((run / "config.json").read_text())
    method = DeepRetrieval.load(run)
    if method.tree is None:
        raise DataError(f"method {config['method']!r} has no tree: only tree methods can be served", run)
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    beam = method.config.beam or config.get("m", 200)
    k = min(config.get("m", 200), method.tree.n_items)
    return write_artifact(
        method, run / "items.npz", out, method_name=config["method"], metrics=metrics, k=k, beam=beam,
        parity_histories=_parity_histories(run, method, parity_users), dataset=config.get("dataset", {}),
    )


def save_trainer_state(method: DeepRetrieval, path: Path) -> None:
    """The method's configuration (JSON) and the scorer's weights except the embedding table,
    as plain arrays: artifacts hold no pickle."""
    assert method.model is not None
    dense = {k: v.detach().cpu().numpy() for k, v in method.model.state_dict().items() if k not in _TABLE_WEIGHTS}
    with open(path, "wb") as fh:
        np.savez(fh, **dense, **{_CONFIG_MEMBER: np.array(json.dumps(method.config.to_json()))})


def load_method(artifact: Artifact) -> DeepRetrieval:
    """The served model as a method that trains: configuration and dense weights from
    `trainer.npz`, embedding rows and biases from the scorer's table (`[embedding | 1 | bias]`,
    padding row last), the artifact's tree."""
    from trainer.catalogue.scorer_table import read_table

    path = artifact.path / TRAINER_FILE
    if TRAINER_FILE not in artifact.manifest["files"]:
        raise DataError(f"artifact {artifact.version} has no {TRAINER_FILE} (exported before refresh existed): "
                        "export it again from its run directory", artifact.path)
    with np.load(path, allow_pickle=False) as archive:
        config = json.loads(str(archive[_CONFIG_MEMBER]))
        dense = {name: torch.from_numpy(archive[name].copy()) for name in archive.files if name != _CONFIG_MEMBER}
    method = DeepRetrieval(DeepConfig.from_json(config))
    table = torch.from_numpy(read_table(artifact.scorer_file).table)
    d = method.config.scorer.dim
    model = TreeScorer(artifact.tree.n_rows, method.config.scorer)
    if table.shape != (artifact.tree.n_rows + 1, d + 2):
        raise DataError(f"the scorer's table is {tuple(table.shape)}, the tree needs ({artifact.tree.n_rows + 1}, "
                        f"{d + 2})", artifact.path)
    model.load_state_dict({**dense, "embedding.weight": table[:, :d].clone(),
                           "bias.weight": table[:, d + 1:].clone()})
    method.model, method.tree = model.eval(), artifact.tree
    return method


def write_artifact(
    method: DeepRetrieval, items_file: Path, out: Path, *, method_name: str, metrics: dict, k: int, beam: int,
    parity_histories: np.ndarray, dataset: dict, sections: dict | None = None,
) -> dict:
    """Export the scorer and tree, check parity, and write the artifact through
    `service.core.artifact.write_artifact` (staged, checksummed, renamed in one step)."""
    assert method.model is not None and method.tree is not None
    tree = method.tree

    def write_files(staging: Path) -> dict:
        tree.save(staging / "tree.npz")
        save_trainer_state(method, staging / TRAINER_FILE)
        scorer_spec = export_onnx(method.model, staging / "scorer.onnx")
        bind_tree(staging / "scorer.onnx", sha256_file(staging / "tree.npz"))
        shutil.copyfile(items_file, staging / "items.npz")
        max_abs = logits_parity(method.model, staging / "scorer.onnx")
        if max_abs > PARITY_TOLERANCE:
            raise DataError(f"ONNX and PyTorch logits differ by {max_abs:.2e} (> {PARITY_TOLERANCE})", out)
        topk = topk_parity(method, staging / "scorer.onnx", parity_histories, k, beam)
        return {
            "method": method_name,
            "data_fingerprint": dataset.get("fingerprint"),
            "dataset": {key: dataset.get(key) for key in ("source", "format", "users", "items")},
            "tree": {"file": "tree.npz", "arity": tree.arity, "depth": tree.depth, "n_items": tree.n_items,
                     "n_rows": tree.n_rows},
            "scorer": scorer_spec,
            "items": {"file": "items.npz", "count": tree.n_items},
            "defaults": {"k": k, "beam": beam},
            "metrics": metrics,
            "parity": {"onnx_vs_torch_max_abs": max_abs, "tolerance": PARITY_TOLERANCE, "topk": topk},
            **(sections or {}),
        }

    try:
        manifest = core_write_artifact(out, write_files)
    except ArtifactError as exc:  # `out` is not empty
        raise DataError(str(exc).removeprefix(f"{out}: "), out) from exc
    parity = manifest["parity"]
    log.info("artifact %s: ONNX max |diff| %.2e, top-%d identical for %d/%d users", manifest["version"],
             parity["onnx_vs_torch_max_abs"], k, parity["topk"]["identical_lists"], parity["topk"]["users"])
    return manifest


def _parity_histories(run: Path, method: DeepRetrieval, count: int) -> np.ndarray:
    """Histories of the run's test users when the data is at hand, else sampled item sequences."""
    length = method.config.scorer.max_history
    try:
        from trainer.data.split import make_eval_set
        from trainer.run import load_run

        _, data, split, _ = load_run(run)
        histories = make_eval_set(data, split.test).histories(length)
        return histories[:count]
    except DataError as exc:
        log.warning("parity on sampled histories: the run's data is not available (%s)", exc)
    assert method.tree is not None
    return sampled_histories(method.tree.n_items, length, count)
