"""`add-items` and `retire-items`: an artifact in, a complete new artifact out.

The new artifact goes through the same writer as an export (`service.core.artifact.
write_artifact`: staged, checksummed, renamed in one step), carries the same parity section
(the grown scorer against the old one on every row they share, and top-k lists of sampled
users before and after), and is read back with the checks `trainer publish` and the service
apply before this returns. Its manifest's ``catalogue`` section says what changed and from
which version.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from service.core.artifact import MANIFEST, TRAINER_FILE, Artifact, ArtifactError, read_artifact, sha256_file
from service.core.artifact import write_artifact as core_write_artifact
from service.core.items import ItemCatalog
from service.core.tree import Tree
from trainer.catalogue.placement import REASONS, PlacementConfig, co_consumption, place
from trainer.catalogue.scorer_table import parity, read_table, write_grown
from trainer.data.item_lists import read_events, read_item_list
from trainer.errors import DataError

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5  # same rows, same graph: the grown scorer must agree to float rounding
PARITY_USERS = 64
_COPIED_SECTIONS = ("method", "data_fingerprint", "dataset", "tree", "scorer", "items", "defaults", "metrics")


def load(artifact: Path) -> Artifact:
    try:
        return read_artifact(artifact)
    except ArtifactError as exc:
        raise DataError(f"not a readable artifact: {exc}") from exc


def add_items(artifact: Path, items: Path, out: Path, events: Path | None = None, fmt: str = "auto",
              config: PlacementConfig | None = None) -> dict:
    """Place the items listed in `items` (item_id[,category_id]) into `artifact`'s tree, give
    each an embedding row and bias, and write the grown artifact to `out`. Returns its manifest."""
    config = config or PlacementConfig()
    window, top_sources = config.window, config.top_sources
    if window < 1 or top_sources < 1:
        raise DataError(f"--window and --top-sources must be positive, got {window} and {top_sources}")
    base = load(artifact)
    catalog, tree = base.catalog, base.tree
    listed = read_item_list(items, catalog, with_categories=True)
    known = catalog.items.lookup_keys(listed.ids)
    if (known >= 0).any():
        first = listed.ids[known >= 0][0]
        raise DataError(f"item {first} is already in the catalogue ({int((known >= 0).sum())} of "
                        f"{len(listed.ids)} listed are); add-items takes new items only", items)
    n_old, n_new = tree.n_items, len(listed.ids)
    category_ids, new_category, placement_category, given = _categories(catalog, listed.categories, n_new, items)

    new_order = np.argsort(listed.ids, kind="stable")
    popularity_rank = np.full(n_old, len(catalog.popular), dtype=np.int64)
    popularity_rank[catalog.popular] = np.arange(len(catalog.popular))
    served = ~catalog.retired_mask()
    event_counts = np.zeros(n_new, dtype=np.int64)
    if events is not None:
        log_events = read_events(events, fmt, catalog.items.numeric)
        index = catalog.items.lookup_keys(log_events.item)
        position = np.minimum(np.searchsorted(listed.ids[new_order], log_events.item), n_new - 1)
        is_new = listed.ids[new_order][position] == log_events.item
        index = np.where(is_new, n_old + new_order[position], index)
        event_counts = np.bincount(index[index >= n_old] - n_old, minlength=n_new)
        co = co_consumption(log_events.user, index, n_old, n_new, served, popularity_rank, window, top_sources)
    else:
        co = co_consumption(np.zeros(0, np.int64), np.zeros(0, np.int64), n_old, n_new, served, popularity_rank,
                            window, top_sources)
    placement = place(tree, ~served, catalog.item_category, catalog.popular, placement_category, co, top_sources)
    new_tree = Tree.from_leaves(placement.item_leaf, arity=tree.arity, depth=placement.depth)
    # An item listed without a category takes its first source's (its anchor's): category filters then treat it
    # like the items it was placed by.
    item_category = np.concatenate([catalog.item_category, np.where(
        given, new_category, [catalog.item_category[s[0]] if len(s) else 0 for s in placement.sources])])
    by_events = np.lexsort((np.arange(n_new), -event_counts))
    new_catalog = ItemCatalog.create(
        item_ids=np.concatenate([catalog.items.ids, listed.ids]), category_ids=category_ids,
        item_category=item_category, popular=np.concatenate([catalog.popular, n_old + by_events]),
        retired=catalog.retired, fresh=np.concatenate([n_old + by_events, catalog.fresh]))  # this update's first

    scorer = read_table(base.scorer_file)
    table, old_to_new = _grown_table(scorer.table, tree, new_tree, placement)
    placed = {name: int((placement.reason == code).sum()) for code, name in enumerate(REASONS)}
    operation = {"operation": "add-items", "added": n_new, "placed_by": placed, "grown_levels": placement.grown,
                 "parked_retired": placement.parked, "far_from_anchor": placement.far,
                 "events_file": None if events is None else str(events), "window": window}

    def write_files(staging: Path) -> dict:
        new_tree.save(staging / "tree.npz")
        write_grown(scorer, table, sha256_file(staging / "tree.npz"), staging / "scorer.onnx")
        _keep_trainer_state(base, staging)
        new_catalog.save(staging / "items.npz")
        max_abs = parity(base.scorer_file, staging / "scorer.onnx", old_to_new, base.history_length)
        if max_abs > PARITY_TOLERANCE:
            raise DataError(f"the grown scorer differs from the old one by {max_abs:.2e} on shared rows "
                            f"(> {PARITY_TOLERANCE})", out)
        topk = _unchanged_lists(base, staging, new_tree, new_catalog, old_to_new)
        return _sections(base, new_tree, operation, {"grown_vs_base_max_abs": max_abs,
                                                     "tolerance": PARITY_TOLERANCE, "topk": topk})

    manifest = _write(out, write_files)
    log.info("added %d items (%s) to %s: version %s, %d levels grown, %d retired items parked", n_new,
             ", ".join(f"{v} by {k}" for k, v in placed.items()), base.version, manifest["version"],
             placement.grown, placement.parked)
    return manifest


def retire_items(artifact: Path, items: Path, out: Path) -> dict:
    """Mark the items listed in `items` as retired in a new artifact `out`: never served again
    (the beam search skips them), kept as history features, their leaves reusable by add-items."""
    base = load(artifact)
    catalog = base.catalog
    listed = read_item_list(items, catalog, with_categories=False)
    index = catalog.items.lookup_keys(listed.ids)
    if (index < 0).any():
        raise DataError(f"item {listed.ids[index < 0][0]} is not in the catalogue ({int((index < 0).sum())} of "
                        f"{len(index)} listed are not); retire-items takes catalogue items only", items)
    already = np.isin(index, catalog.retired)
    if already.any():
        raise DataError(f"item {listed.ids[already][0]} is already retired", items)
    retired = np.union1d(catalog.retired, index)
    if len(retired) >= catalog.n_items:
        raise DataError(f"retiring these {len(index)} items would leave nothing to serve", items)
    gone = np.zeros(catalog.n_items, dtype=bool)
    gone[retired] = True
    new_catalog = ItemCatalog(items=catalog.items, categories=catalog.categories,
                              item_category=catalog.item_category, popular=catalog.popular[~gone[catalog.popular]],
                              retired=retired.astype(np.int32), fresh=catalog.fresh[~gone[catalog.fresh]])
    operation = {"operation": "retire-items", "retired": len(index)}
    identity = np.arange(base.tree.n_rows, dtype=np.int64)

    def write_files(staging: Path) -> dict:
        shutil.copyfile(base.path / base.manifest["tree"].get("file", "tree.npz"), staging / "tree.npz")
        shutil.copyfile(base.scorer_file, staging / "scorer.onnx")  # same tree: the binding still holds
        _keep_trainer_state(base, staging)
        new_catalog.save(staging / "items.npz")
        topk = _unchanged_lists(base, staging, base.tree, new_catalog, identity)
        if topk["retired_served"]:
            raise DataError(f"{topk['retired_served']} retired items came back from the beam search", out)
        return _sections(base, base.tree, operation, {"topk": topk})

    manifest = _write(out, write_files)
    log.info("retired %d items of %s: version %s (%d retired in all)", len(index), base.version,
             manifest["version"], len(retired))
    return manifest


def _categories(catalog: ItemCatalog, given: np.ndarray | None, n_new: int,
                path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(category ids of the new catalogue; each new item's category index in them, -1 when not
    given; the category placement uses, -1 also when no old item has it; whether it was given)."""
    ids = catalog.categories.ids
    none = np.full(n_new, -1, dtype=np.int64)
    if given is None:
        return ids, none, none, np.zeros(n_new, dtype=bool)
    has = np.array([v is not None for v in given], dtype=bool)
    values = [v for v in given if v is not None]
    if catalog.categories.numeric and any(not isinstance(v, int) for v in values):
        bad = next(v for v in values if not isinstance(v, int))
        raise DataError(f"category {bad!r} is not an integer, and the catalogue's categories are", path)
    category = none.copy()
    if values:
        category[has] = catalog.categories.lookup(values)
    unseen = sorted({v for v, i in zip(given, category, strict=True) if v is not None and i < 0}, key=str)
    if unseen:
        extra = {v: len(ids) + k for k, v in enumerate(unseen)}
        for j in np.flatnonzero(has & (category < 0)):
            category[j] = extra[given[j]]
        ids = np.concatenate([ids, np.array(unseen, dtype=ids.dtype)])
    counts = np.bincount(catalog.item_category, minlength=len(ids))
    placement = np.where((category >= 0) & (counts[np.maximum(category, 0)] > 0), category, -1)
    return ids, category, placement, has


def _grown_table(old: np.ndarray, tree: Tree, new_tree: Tree, placement) -> tuple[np.ndarray, np.ndarray]:
    """The new tree's table (items, then internal nodes, then the padding row) and the row each
    old row moved to. New items: the weighted mean of their sources' rows (embedding, the
    constant 1 and bias alike). Internal nodes keep their rows (a level's rows keep their offset
    among the internal rows); levels added by growing take the row of the old item at that
    position, or of its old parent when there was none."""
    n_old, n_total = tree.n_items, new_tree.n_items
    table = np.zeros((new_tree.n_rows + 1, old.shape[1]), dtype=np.float32)
    table[:n_old] = old[:n_old]
    for j, (sources, weights) in enumerate(zip(placement.sources, placement.weights, strict=True)):
        table[n_old + j] = (weights[:, None] * old[sources]).sum(axis=0) / weights.sum()
    table[n_total:n_total + tree.n_internal] = old[n_old:n_old + tree.n_internal]
    for level in range(tree.depth, new_tree.depth):
        positions = np.arange(new_tree.level_size(level))
        old_leaf = positions // tree.arity ** (level - tree.depth)
        item = tree.leaf_item[old_leaf].astype(np.int64)
        parent = n_old + tree.level_offset(tree.depth - 1) + old_leaf // tree.arity
        table[n_total + new_tree.level_offset(level) + positions] = old[np.where(item >= 0, item, parent)]
    table[-1] = old[-1]
    old_to_new = np.arange(tree.n_rows, dtype=np.int64)
    old_to_new[n_old:] += n_total - n_old
    if not np.isfinite(table).all():
        raise DataError("the grown table has non-finite rows")
    return table, old_to_new


def _unchanged_lists(base: Artifact, staging: Path, new_tree: Tree, catalog: ItemCatalog,
                     old_to_new: np.ndarray) -> dict:
    """Top-k of sampled histories (old, served items) before and after: how many lists are
    identical, and that no retired item is served."""
    from service.core.index import SearchParams, TreeIndex
    from service.scorer import OnnxScorer
    from trainer.data.split import sampled_histories

    histories = sampled_histories(base.tree.n_items, base.history_length, PARITY_USERS)
    k, beam = min(base.default_k, catalog.n_served), base.default_beam
    old = TreeIndex(base.tree, OnnxScorer(base.scorer_file, threads=1), base.hierarchical, batch_users=len(histories))
    new = TreeIndex(new_tree, OnnxScorer(staging / "scorer.onnx", threads=1), base.hierarchical,
                    batch_users=len(histories))
    before = old.search(histories, k, SearchParams(beam=beam, allowed=base.catalog.served_filter)).items
    moved = np.where(histories >= 0, old_to_new[np.maximum(histories, 0)], -1)
    after = new.search(moved, k, SearchParams(beam=beam, allowed=catalog.served_filter)).items
    retired = catalog.retired_mask()
    return {"users": len(histories), "k": k, "beam": beam,
            "identical_lists": int((before == after).all(axis=1).sum()),
            "retired_served": int(retired[after[after >= 0]].sum())}


def _sections(base: Artifact, tree: Tree, operation: dict, parity_section: dict) -> dict:
    manifest = base.manifest
    sections = {key: manifest[key] for key in _COPIED_SECTIONS if key in manifest}
    sections["tree"] = {**manifest["tree"], "file": "tree.npz", "arity": tree.arity, "depth": tree.depth,
                        "n_items": tree.n_items, "n_rows": tree.n_rows}
    sections["scorer"] = {**manifest["scorer"], "file": "scorer.onnx", "n_rows": tree.n_rows}
    sections["items"] = {**manifest["items"], "file": "items.npz", "count": tree.n_items}
    previous = manifest.get("catalogue", {})
    history = [*previous.get("history", []), {**operation, "base_version": base.version}]
    retired = operation.get("retired", 0) + int(len(base.catalog.retired))
    sections["catalogue"] = {**operation, "base_version": base.version, "retired_total": retired,
                             "added_total": previous.get("added_total", 0) + operation.get("added", 0),
                             "history": history,
                             "trained_version": previous.get("trained_version", base.version)}
    sections["parity"] = parity_section
    return sections


def _keep_trainer_state(base: Artifact, staging: Path) -> None:
    """Carry the dense weights over: adding or retiring items changes only the table's rows,
    which the grown scorer.onnx holds (`trainer.export.load_method` reads them from there)."""
    if TRAINER_FILE in base.manifest["files"]:
        shutil.copyfile(base.path / TRAINER_FILE, staging / TRAINER_FILE)


def _write(out: Path, write_files) -> dict:
    """Write through the export's own writer, then read the result back as `publish` will."""
    try:
        manifest = core_write_artifact(out, write_files)
    except ArtifactError as exc:  # `out` is not empty
        raise DataError(str(exc).removeprefix(f"{out}: "), out) from exc
    check_servable(out)
    return manifest


def check_servable(path: Path) -> None:
    """The checks `trainer publish` and the service's loader apply: manifest, checksums, tree,
    catalog, then the scorer's binding to the tree and a probe of its largest row."""
    from service.scorer import OnnxScorer

    try:
        loaded = read_artifact(path)
        scorer = OnnxScorer(loaded.scorer_file, threads=1)
        loaded.check_scorer(scorer.score, scorer.tree_sha256, scorer.history_length)
    except ArtifactError as exc:
        raise DataError(f"the written artifact does not verify ({exc}); see {path / MANIFEST}") from exc
