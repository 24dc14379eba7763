"""The quality gate of `trainer refresh`: a candidate is published only if it is not worse than
the served model on the same held-out events, beyond a stated tolerance.

Both artifacts are scored the way the service serves them (ONNX scorer, `TreeIndex`, the
catalogue's retired-items filter, the artifact's default beam): next-event recall@k is, per
held-out user, whether the user's latest event is in the top k given the events before it. An
item a model does not know is a miss for it (the served model cannot recommend an item added
since), and history ids it does not know are dropped, as the service drops them. The paired
difference over the same users decides; the share of this refresh's new items that reach
anyone's top k (coverage) is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.core.artifact import Artifact
from service.core.index import SearchParams, TreeIndex
from trainer.evaluate.metrics import paired_difference


@dataclass(frozen=True)
class HeldOut:
    """Each held-out user's history (original item ids, oldest first) and next item."""

    histories: list[np.ndarray]
    truth: np.ndarray  # (U,) original item ids

    def __len__(self) -> int:
        return len(self.truth)


@dataclass(frozen=True)
class Scored:
    hits: np.ndarray  # (U,) 1.0 when the user's next item is in the top k
    recommended: list[np.ndarray]  # (U,) top-k original ids

    @property
    def recall(self) -> float:
        return float(self.hits.mean()) if len(self.hits) else 0.0


def score(artifact: Artifact, held_out: HeldOut, k: int, batch: int = 256) -> Scored:
    """Next-event recall@k of `held_out` through the served path of `artifact`."""
    from service.scorer import OnnxScorer

    catalog = artifact.catalog
    index = TreeIndex(artifact.tree, OnnxScorer(artifact.scorer_file, threads=1), artifact.hierarchical,
                      batch_users=batch)
    rows = np.full((len(held_out), artifact.history_length), -1, dtype=np.int64)
    for u, history in enumerate(held_out.histories):
        known = catalog.items.lookup(list(history[::-1]))  # most recent first, as the service maps them
        known = known[known >= 0][: artifact.history_length]
        rows[u, : len(known)] = known
    k = min(k, catalog.n_served)
    found = index.search(rows, k, SearchParams(beam=artifact.default_beam, allowed=catalog.served_filter)).items
    truth = catalog.items.lookup(list(held_out.truth))
    hits = np.array([t >= 0 and t in row for t, row in zip(truth, found, strict=True)], dtype=np.float64)
    recommended = [np.asarray(catalog.items.original(row[row >= 0]), dtype=object) for row in found]
    return Scored(hits, recommended)


def coverage(scored: Scored, new_items: Sequence[object]) -> float:
    """Share of `new_items` (original ids) in at least one held-out user's top k."""
    if not len(new_items):
        return 0.0
    shown = {str(i) for row in scored.recommended for i in row}
    return float(np.mean([str(i) in shown for i in new_items]))


def judge(served: Scored, candidate: Scored, tolerance: float) -> dict:
    """Publish unless the candidate's recall is below the served model's by more than
    `tolerance` (absolute recall, paired over the same users)."""
    paired = paired_difference(candidate.hits, served.hits)
    publish = len(served.hits) > 0 and paired["mean"] >= -tolerance
    return {"publish": bool(publish), "served_recall": served.recall, "candidate_recall": candidate.recall,
            "paired_difference": paired, "tolerance": tolerance}
