"""One loaded artifact version: everything a request needs, held together.

The verified artifact (tree, item catalog, manifest), its ONNX scorer, the index that searches
them (`service.core.index.TreeIndex`, scoring through the bundle's own micro-batcher when there
is one). The data only: loading, verifying and warming it is `service.model_store`, searching
it `service.retrieval`; both import this module and not each other's internals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from service.batcher import MicroBatcher
from service.core.artifact import Artifact
from service.core.index import TreeIndex
from service.core.items import ItemCatalog
from service.core.tree import Tree
from service.scorer import BatchedScorer, OnnxScorer


@dataclass(eq=False)
class ModelBundle:
    artifact: Artifact
    scorer: OnnxScorer
    batcher: MicroBatcher | None = None
    loaded_at: float = field(default_factory=time.time)
    index: TreeIndex = field(init=False)

    def __post_init__(self) -> None:
        scorer = self.scorer if self.batcher is None else BatchedScorer(self.scorer, self.batcher.score)
        self.index = TreeIndex(self.artifact.tree, scorer, self.artifact.hierarchical)

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    @property
    def tree(self) -> Tree:
        return self.artifact.tree

    @property
    def catalog(self) -> ItemCatalog:
        return self.artifact.catalog

    @property
    def hierarchical(self) -> bool:
        return self.artifact.hierarchical

    @property
    def history_length(self) -> int:
        return self.artifact.history_length

    @property
    def default_k(self) -> int:
        return self.artifact.default_k

    @property
    def default_beam(self) -> int:
        return self.artifact.default_beam

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
