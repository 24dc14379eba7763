"""The ONNX scorer and the per-level score function the shared beam search calls.

`OnnxScorer.score(history_rows, node_rows) -> logits` runs the exported graph: one row per
(user, level), all that row's candidates in one call. `level_score_fn` adapts it to the beam
search's ``score(level, node_ids)``: with the hierarchical representation it maps the user's
behaviours to their ancestors at `level` (the same numpy mapping training used).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import ArtifactError
from service.core.beam import ScoreFn
from service.core.tree import Tree

RowScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def available_providers(device: str) -> list[str]:
    """Execution providers for `device` ("cpu" or "cuda"); cuda falls back to CPU if absent."""
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxScorer:
    def __init__(self, path: str | Path, threads: int = 1, device: str = "cpu") -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Don't spin worker threads between requests: latency-bound service, bursty load.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=available_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ArtifactError(f"{path}: onnxruntime cannot load it ({' '.join(str(exc).split())[:200]})") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"history", "nodes"} or [o.name for o in self.session.get_outputs()] != ["logits"]:
            raise ArtifactError(f"{path}: expected inputs history, nodes and output logits")
        self.history_length = inputs["history"].shape[1]
        self.providers = self.session.get_providers()
        # sha256 of the tree the scorer was trained with (written by the exporter).
        self.tree_sha256 = self.session.get_modelmeta().custom_metadata_map.get("tree_sha256")

    def score(self, history: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """history (B, L) int64 rows, nodes (B, C) int64 rows -> (B, C) float32 logits."""
        return self.session.run(["logits"], {"history": np.ascontiguousarray(history, dtype=np.int64),
                                             "nodes": np.ascontiguousarray(nodes, dtype=np.int64)})[0]


def level_score_fn(score_rows: RowScorer, tree: Tree, histories: np.ndarray, hierarchical: bool) -> ScoreFn:
    """Bind users' histories (U, L) item ids to a beam-search score function.

    Plain: every level uses the item rows. Hierarchical: level l uses the ancestors' rows at l
    (`Tree.ancestor_ids_by_level`: the training mapping), computed once per level and user
    batch from the behaviours' leaf positions, which are looked up once.
    """
    cache: dict[int, np.ndarray] = {}
    ids_at = tree.ancestor_ids_by_level(histories) if hierarchical else None

    def score(level: int, node_ids: np.ndarray) -> np.ndarray:
        if ids_at is not None:
            rows = cache.get(level)
            if rows is None:
                rows = cache[level] = ids_at(level)
        else:
            rows = histories
        return score_rows(rows, node_ids)

    return score
