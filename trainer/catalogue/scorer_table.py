"""The embedding table inside an exported scorer, and growing it for new items.

The exported graph (`trainer.export._ScorerGraph`) gathers every row from one initializer,
``table`` (n_rows + 1, d + 2) = [embedding | 1 | bias] with a zero padding row last, and uses
n_rows as the padding index in two int64 scalar constants. Growing the catalogue rewrites
exactly those: a new table laid out for the new tree (items first, then internal nodes) and the
two constants. Nothing else in the graph depends on the number of rows, so the grown graph
scores every row the two share exactly as the old one did, which `parity` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.errors import DataError

TABLE = "table"


@dataclass
class ScorerTable:
    model: object  # onnx.ModelProto
    table: np.ndarray  # (n_rows + 1, d + 2) float32, padding row last

    @property
    def n_rows(self) -> int:
        return len(self.table) - 1


def read_table(path: Path) -> ScorerTable:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == TABLE:
            return ScorerTable(model=model, table=numpy_helper.to_array(init).copy())
    raise DataError(f"no {TABLE!r} initializer: not a scorer exported by this trainer", path)


def write_grown(scorer: ScorerTable, table: np.ndarray, tree_sha256: str, path: Path) -> None:
    """Save the graph with `table` in place of the old one, the padding index moved to its new
    row count, and the scorer bound to the new tree (`tree_sha256` metadata)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(scorer.model)
    old_rows, new_rows = scorer.n_rows, len(table) - 1
    for i, init in enumerate(model.graph.initializer):
        if init.name == TABLE:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(table.astype(np.float32), TABLE))
    padding = 0
    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        if value.shape == () and value.dtype == np.int64 and int(value) == old_rows:
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(new_rows, dtype=np.int64)))
            padding += 1
    if padding != 2:  # history and nodes: anything else is a graph this code does not know
        raise DataError(f"expected 2 padding-index constants equal to {old_rows}, found {padding}: not a scorer "
                        "this version can grow", path)
    for entry in model.metadata_props:
        if entry.key == "tree_sha256":
            entry.value = tree_sha256
    onnx.save(model, str(path))


def parity(old_path: Path, new_path: Path, old_to_new: np.ndarray, history_length: int,
           samples: int = 64, seed: int = 0) -> float:
    """Max |old(history, nodes) - new(map(history), map(nodes))| over random rows the two
    scorers share (`old_to_new`: (old n_rows,) row in the new table); 0 when the rows moved
    intact. The independent reference for the grown graph is the old graph itself."""
    from service.scorer import OnnxScorer

    old, new = OnnxScorer(old_path, threads=1), OnnxScorer(new_path, threads=1)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch, candidates in ((1, 1), (4, 57), (samples, 200)):
        history = rng.integers(-1, len(old_to_new), size=(batch, history_length))
        nodes = rng.integers(-1, len(old_to_new), size=(batch, candidates))

        def moved(rows: np.ndarray) -> np.ndarray:
            return np.where(rows >= 0, old_to_new[np.maximum(rows, 0)], -1)

        diff = np.abs(old.score(history, nodes) - new.score(moved(history), moved(nodes)))
        worst = max(worst, float(diff.max()))
    return worst
