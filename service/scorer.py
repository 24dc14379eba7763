"""The ONNX scorer and the per-level score function the shared beam search calls.

An artifact's graph has two halves (`trainer.export`, the "split" interface):
`OnnxScorer.user_state(history_rows)` computes each row's user state once, and
`OnnxScorer.score_state(states, node_rows) -> logits` scores candidates against them, one call
per (batch of) beam-search level(s). Graphs exported before the split take the history rows in
every call (``(history, nodes) -> logits``); for those the "state" is the history rows
themselves, so the same code serves both. `OnnxScorer.score(history, nodes)` does both steps.

`level_score_fn` adapts a scorer to the beam search's ``score(level, node_ids)``: with the
hierarchical representation it maps the user's behaviours to their ancestors at each level
(the same numpy mapping training used) and, given `user_state`, computes the states of every
level the search will visit in one call.
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

    def levels(self, tree: Tree, histories: np.ndarray, hierarchical: bool,
               score_states: RowScorer | None = None) -> ScoreFn:
        """The served score function for a beam search over `tree` (see `level_score_fn`);
        score_states: how state rows are scored, `score_state` unless given (the batcher's)."""
        return level_score_fn(score_states or self.score_state, tree, histories, hierarchical, self.user_state)


def level_score_fn(score_rows: RowScorer, tree: Tree, histories: np.ndarray, hierarchical: bool,
                   user_state: Callable[[np.ndarray], np.ndarray] | None = None) -> ScoreFn:
    """Bind users' histories (U, L) item ids to a beam-search score function.

    Plain: every level uses the item rows. Hierarchical: level l uses the ancestors' rows at l
    (`Tree.ancestor_ids_by_level`: the training mapping), computed from the behaviours' leaf
    positions, which are looked up once. `score_rows` gets `user_state` of those rows (None:
    the rows themselves): computed once for plain features, and for the hierarchical
    representation for the first level scored and every level below it in one call (a search
    walks them all), other levels as they are asked for.
    """
    ids_at = tree.ancestor_ids_by_level(histories) if hierarchical else None
    to_state = user_state or (lambda rows: rows)
    states: dict[int, np.ndarray] = {}
    n_users = len(histories)

    def score(level: int, node_ids: np.ndarray) -> np.ndarray:
        if ids_at is None:
            state = states.get(0)
            if state is None:
                state = states[0] = to_state(histories)
        else:
            state = states.get(level)
            if state is None:
                missing = [lv for lv in range(level, tree.depth + 1) if lv not in states]
                computed = to_state(np.concatenate([ids_at(lv) for lv in missing]))
                for i, lv in enumerate(missing):
                    states[lv] = computed[i * n_users:(i + 1) * n_users]
                state = states[level]
        return score_rows(state, node_ids)

    return score
