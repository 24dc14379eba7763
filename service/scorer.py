"""The ONNX scorer: the served half of `service.core.index.UserScorer`.

An artifact's graph has two halves (`trainer.export`, the "split" interface):
`OnnxScorer.user_state(history_rows)` computes each row's user state once, and
`OnnxScorer.score_state(states, node_rows) -> logits` scores candidates against them, one call
per (batch of) beam-search level(s). Graphs exported before the split take the history rows in
every call (``(history, nodes) -> logits``); for those the "state" is the history rows
themselves, so the same code serves both. `OnnxScorer.score(history, nodes)` does both steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import ArtifactError

StateScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (states, node rows) -> logits


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
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) == {"history", "user", "nodes"} and outputs == ["user_state", "logits"]:
            self.split = True
            shape = inputs["user"].shape[1:]
            if len(shape) != 2 or not all(isinstance(n, int) for n in shape):
                raise ArtifactError(f"{path}: input user must be (batch, width, hidden) with fixed sizes, got {shape}")
            self._no_user = np.zeros((0, *shape), dtype=np.float32)
            self._no_nodes = np.zeros((0, 1), dtype=np.int64)
        elif set(inputs) == {"history", "nodes"} and outputs == ["logits"]:
            self.split = False  # exported before the split: the user part runs in every call
        else:
            raise ArtifactError(f"{path}: expected inputs history, user, nodes and outputs user_state, logits "
                                "(or, from older exports, inputs history, nodes and output logits)")
        self.history_length = inputs["history"].shape[1]
        self._no_history = np.zeros((0, self.history_length), dtype=np.int64)
        self.providers = self.session.get_providers()
        # sha256 of the tree the scorer was trained with (written by the exporter).
        self.tree_sha256 = self.session.get_modelmeta().custom_metadata_map.get("tree_sha256")

    def user_state(self, history: np.ndarray) -> np.ndarray:
        """history (H, L) int64 rows -> the rows' user states (H, ...), what `score_state` takes.
        For a graph without the split, the rows themselves."""
        history = np.ascontiguousarray(history, dtype=np.int64)
        if not self.split:
            return history
        return self.session.run(["user_state"], {"history": history, "user": self._no_user,
                                                 "nodes": self._no_nodes})[0]

    def score_state(self, states: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """states (B, ...) from `user_state`, nodes (B, C) int64 rows -> (B, C) float32 logits."""
        nodes = np.ascontiguousarray(nodes, dtype=np.int64)
        if not self.split:
            return self.session.run(["logits"], {"history": states, "nodes": nodes})[0]
        return self.session.run(["logits"], {"history": self._no_history, "user": states, "nodes": nodes})[0]

    def score(self, history: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """history (B, L) int64 rows, nodes (B, C) int64 rows -> (B, C) float32 logits."""
        return self.score_state(self.user_state(history), nodes)

    def user_states(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The states of several row matrices (one per level a search visits) in one call."""
        if len(rows) == 1:
            return [self.user_state(rows[0])]
        computed = self.user_state(np.concatenate(rows))
        bounds = np.cumsum([0, *(len(r) for r in rows)])
        return [computed[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class BatchedScorer:
    """An `OnnxScorer` whose candidate scoring goes through the service's micro-batcher, which
    joins concurrent requests' rows into one onnxruntime call (`service.batcher`)."""

    def __init__(self, scorer: OnnxScorer, score_state: StateScorer) -> None:
        self.scorer = scorer
        self.score_state = score_state

    def user_states(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.scorer.user_states(rows)
