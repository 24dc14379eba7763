"""`train --start-from RUN --data NEW_LOG`: continue a trained run on new events, on its learnt tree.

A full training rebuilds the item vocabulary from the log; continuing must not: the model's
rows are the run's items and the tree's leaves hold them. So the new log is expressed in the
run's item space (`reindex`): events of items the run does not know are dropped and counted
(add them with `add-items`, or retrain), and users left with fewer than 2 events go. The run's
model and tree then train `--epochs` more epochs on the new log's training users, with the
same early stopping on its validation users, and the result is an ordinary run directory
(export, evaluate and publish read it as any other). Its config.json names the run it
continued (`continued_from`) so that `load_run` rebuilds the same reindexed data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from service.core.items import ItemCatalog
from trainer.data.interactions import Interactions
from trainer.deep_retrieval import DeepRetrieval
from trainer.errors import DataError

log = logging.getLogger(__name__)


def reindex(data: Interactions, catalog: ItemCatalog) -> tuple[Interactions, int]:
    """`data` with items numbered as in `catalog` (its ids, categories) and the events of
    unknown items dropped; returns it and how many events were dropped."""
    index = catalog.items.lookup(list(data.item_ids)) if not catalog.items.numeric or \
        data.item_ids.dtype.kind not in "iu" else catalog.items.lookup_keys(data.item_ids.astype(np.int64))
    mapped = index[data.item]
    keep = mapped >= 0
    lengths = np.bincount(data.user[keep], minlength=data.n_users)
    keep &= lengths[data.user] >= 2
    if not keep.any():
        raise DataError("no event of the new log is of an item the run knows (add them with add-items first, "
                        "or train from scratch)", data.source)
    kept_users = np.flatnonzero(lengths >= 2)
    new_user = np.full(data.n_users, -1, dtype=np.int64)
    new_user[kept_users] = np.arange(len(kept_users))
    user = new_user[data.user[keep]].astype(np.int32)
    offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=len(kept_users)), out=offsets[1:])
    result = Interactions(
        user=user, item=mapped[keep].astype(np.int32), timestamp=data.timestamp[keep], user_offsets=offsets,
        item_category=catalog.item_category.astype(np.int32), user_ids=data.user_ids[kept_users],
        item_ids=catalog.items.ids, category_ids=catalog.categories.ids, format=data.format, source=data.source,
        has_timestamp=data.has_timestamp, has_category=data.has_category)
    return result, int((~keep).sum())


def load_base(run: Path, method: str) -> tuple[DeepRetrieval, ItemCatalog, dict]:
    """The run to continue: its method, catalogue and config; refused when it cannot be."""
    for name in ("config.json", "model.pt", "items.npz", "tree.npz"):
        if not (run / name).exists():
            raise DataError(f"not a run directory of a tree method (no {name})", run)
    config = json.loads((run / "config.json").read_text())
    if config.get("method") != method:
        raise DataError(f"--start-from run is a {config.get('method')} run; continuing it on new data keeps its "
                        f"method, so pass --method {config.get('method')} (not {method})", run)
    base = DeepRetrieval.load(run)
    catalog = ItemCatalog.load(run / "items.npz", base.tree.n_items)
    return base, catalog, config


def continued_config(base: DeepRetrieval, epochs: int | None) -> DeepRetrieval:
    """The method that continues `base`: its configuration, its model and tree, `epochs` more
    (default: its own epoch count). The tree is kept (the learnt index is what is served)."""
    config = base.config
    if epochs is not None:
        config = replace(config, train=replace(config.train, epochs=epochs))
    method = DeepRetrieval(config)
    method.model, method.tree = base.model, base.tree
    return method


def one_tree_step(method: DeepRetrieval, ctx, history) -> None:
    """After continuing: one JTM tree-learning step (Algorithm 2, the model fixed) on the new
    log's samples, then the joint loop's retraining on the new tree; the loop keeps whichever
    of the two (before, after) validates better, so the step can only be taken when it helps.
    The method's own configuration (tdm's too) stays what it was: the tree is what changes."""
    from trainer.joint import joint_fit

    assert method.model is not None and method.tree is not None
    config = method.config
    joint = replace(config.joint, tree_learning="jtm", iterations=1)
    result = joint_fit(method.model, method.tree, ctx, config.train, joint, config.search_beam(ctx.m), config.method,
                       initial=history)
    method.model, method.tree, method.joint_history = result.model, result.tree, result.history
