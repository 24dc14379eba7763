"""Build a servable artifact of any size without training data, for latency benchmarks.

The scorer has random weights (latency does not depend on them), the tree holds the items in a
random order, ids look like a real catalog's. Goes through the real export path (ONNX export,
parity checks, manifest), so what is benchmarked is what `trainer export` produces.

    .venv/bin/python -m bench.synthetic_artifact --items 1000000 --out bench/.cache/artifact-1000000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from service.core.items import ItemCatalog
from trainer.config import MAX_HISTORY
from trainer.data.split import sampled_histories
from trainer.deep_retrieval import DeepConfig, DeepRetrieval
from trainer.export import write_artifact
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import tree_from_order


def build(n_items: int, out: Path, hierarchical: bool = True, seed: int = 0, parity_users: int = 20) -> dict:
    rng = np.random.default_rng(seed)
    tree = tree_from_order(rng.permutation(n_items))
    torch.manual_seed(seed)
    method = DeepRetrieval(DeepConfig(method="jtm" if hierarchical else "tdm",
                                      scorer=ScorerConfig(hierarchical=hierarchical)))
    method.model = TreeScorer(tree.n_rows, method.config.scorer).eval()
    method.tree = tree
    categories = rng.integers(0, 100, size=n_items)
    catalog = ItemCatalog.create(item_ids=10_000_000 + np.arange(n_items) * 3, category_ids=np.arange(100),
                                 item_category=categories, popular=rng.permutation(n_items)[:10_000])
    with tempfile.TemporaryDirectory() as tmp:
        items = Path(tmp) / "items.npz"
        catalog.save(items)
        return write_artifact(method, items, out, method_name=method.config.method, metrics={}, k=200, beam=200,
                              parity_histories=sampled_histories(n_items, MAX_HISTORY, parity_users, seed),
                              dataset={"source": f"synthetic {n_items} items"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plain", action="store_true", help="no hierarchical representation")
    args = parser.parse_args()
    manifest = build(args.items, Path(args.out), hierarchical=not args.plain)
    print(f"{args.out}: version {manifest['version']}, parity {manifest['parity']}")


if __name__ == "__main__":
    main()
