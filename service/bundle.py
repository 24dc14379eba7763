"""One loaded artifact version: everything a request needs, held together.

Tree, scorer, item catalog, the manifest's settings, and the bundle's own micro-batcher. The
data only: loading, verifying and warming it is `service.model_store`, searching it
`service.retrieval`; both import this module and not each other's internals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from service.batcher import MicroBatcher
from service.core.items import ItemCatalog
from service.core.tree import Tree
from service.scorer import OnnxScorer, RowScorer


@dataclass(eq=False)
class ModelBundle:
    version: str
    path: Path
    manifest: dict
    tree: Tree
    scorer: OnnxScorer
    catalog: ItemCatalog
    hierarchical: bool
    history_length: int
    default_k: int
    default_beam: int
    loaded_at: float = field(default_factory=time.time)
    batcher: MicroBatcher | None = None

    @property
    def score_rows(self) -> RowScorer:
        """(user states, node rows) -> logits: through the micro-batcher when there is one."""
        return self.batcher.score if self.batcher is not None else self.scorer.score_state

    def summary(self) -> dict:
        """What /v1/model shows of this version. Not the request defaults: the k a request gets
        without naming one is the API's, not the manifest's `defaults.k` (`service.recommend`)."""
        m = self.manifest
        return {
            "version": self.version, "method": m.get("method"), "created": m.get("created"),
            "path": str(self.path), "items": self.tree.n_items, "tree": m.get("tree"),
            "hierarchical": self.hierarchical, "history_length": self.history_length,
            "metrics": {k: m.get("metrics", {}).get(k) for k in ("precision", "recall", "f_measure", "m")
                        if k in m.get("metrics", {})},
            "parity": m.get("parity"), "providers": self.scorer.providers,
            "data_fingerprint": m.get("data_fingerprint"),
            "retired_items": len(self.catalog.retired),
            "fresh_items": len(self.catalog.fresh),  # added since training: what `fresh` requests rank
            "catalogue": {k: m["catalogue"].get(k) for k in ("operation", "base_version", "trained_version",
                                                              "added_total", "retired_total")}
            if isinstance(m.get("catalogue"), dict) else None,
        }

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
