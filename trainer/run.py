"""Run directories: what `train` writes and `evaluate` (and later `export`) reads.

A run directory holds everything needed to reproduce its evaluation:

    config.json     data config, split fractions and seed, protocol, method config
    split.npz       the user split (original user ids) and the data fingerprint
    model.pt        scorer weights + the config that rebuilds it (torch, weights only)
    tree.npz        the tree (tree methods)
    training.json   per-epoch loss, samples/s and validation recall
    metrics.json    test metrics (and beam-search fidelity) at training time

A run trained on a published split (`train --train FILE --test FILE`) records the two files
instead of a log (config.json's "given_split"), and its metrics are the split's: recall@k and
NDCG@k of the test users, scored through the exported artifact as the service searches it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service.core.items import ItemCatalog
from trainer.data.given_split import GivenSplit, GivenSplitConfig, load_given_split
from trainer.data.interactions import DataConfig, Interactions, load_interactions
from trainer.data.split import EvalSet, UserSplit, make_eval_set
from trainer.deep_retrieval import DeepRetrieval
from trainer.errors import DataError
from trainer.evaluate.protocol import EvalProtocol, evaluate
from trainer.fit.step import TrainConfig
from trainer.methods import METHODS, TRAINABLE, build_method

log = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    data: DataConfig
    method: str
    seed: int = 0
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    start_from: str | None = None  # a fixed-tree run (tdm / jtm-h) whose model is iteration 0
    fidelity: bool = True  # compare beam search with a brute-force scan on the test users (slow at scale)
    tree_step: bool = False  # continuing on a new log (start_from): one tree-learning step after the epochs


def evaluate_method(method: DeepRetrieval, test: EvalSet, m: int, exclude_seen: bool, fidelity: bool,
                    beam: int | None = None) -> dict:
    """Test P/R/F@m (mean and per-user SE) and, for tree methods, beam-search fidelity."""
    scored = evaluate(method, test, m, exclude_seen, fidelity, beam)
    result = {
        "m": m, "exclude_seen": exclude_seen, "users": len(test), **scored.metrics.means(),
        "user_se": scored.metrics.standard_errors(), "retrieval_seconds": scored.seconds,
        "retrieval": "beam search" if method.config.uses_tree else "brute force",
    }
    if scored.beam is not None:
        result["beam"] = scored.beam
    if scored.fidelity is not None:
        result["fidelity"] = scored.fidelity
        result["brute_force_recall"] = scored.brute_force_recall
    return result


def train_run(spec: RunSpec, out: Path, given: Mapping[str, Any] | None = None) -> dict:
    """Load data, split, fit, evaluate on test users, and write the run directory. `given`:
    the method flags the command line gave (each of the method's configurations keeps its own
    defaults for the rest)."""
    if spec.method not in TRAINABLE:
        if spec.method in METHODS:  # a baseline: compare fits and scores it, it has no run directory
            raise DataError(f"--method {spec.method} is a baseline that only compare evaluates "
                            f"(compare --methods {spec.method}); train supports {', '.join(TRAINABLE)}")
        raise DataError(f"unknown --method {spec.method!r}; train supports {', '.join(TRAINABLE)}")
    from trainer.fit import distributed

    given = {**(given or {}), "max_history": spec.protocol.max_history}
    device = given.get("device", TrainConfig.device)
    dist_ctx = distributed.init_from_env(device)
    data = load_interactions(spec.data)
    log.info("data: %d users, %d items, %d interactions", data.n_users, data.n_items, len(data))
    continued = _continued_base(spec, data)
    if continued is not None:  # new events for a trained run: its items, its tree (trainer.incremental)
        from trainer.incremental import reindex

        data, dropped = reindex(data, continued.catalog)
        continued.record["dropped_events"] = dropped
        log.info("continuing %s on %d events of its items (%d events of unknown items dropped)",
                 spec.start_from, len(data), dropped)
    split = spec.protocol.split(data, spec.seed)
    ctx = spec.protocol.fit_context(data, split, spec.seed, device)
    method = build_method(spec.method, given)
    assert isinstance(method, DeepRetrieval)
    started = time.perf_counter()
    if continued is not None:
        from trainer.fit.epochs import train_on_tree
        from trainer.incremental import continued_config

        method = continued_config(continued.method, given.get("epochs"))
        assert method.model is not None and method.tree is not None
        config = method.config
        method.history = train_on_tree(method.model, method.tree, ctx, config.train, config.search_beam(ctx.m),
                                       config.method)
        if spec.tree_step:
            from trainer.incremental import one_tree_step

            one_tree_step(method, ctx, method.history)
    elif spec.start_from:
        base = _start_from(Path(spec.start_from), data, spec, method)
        method.fit(ctx, start_from=base)
    else:
        method.fit(ctx)
    fit_seconds = time.perf_counter() - started
    if dist_ctx is not None and not dist_ctx.is_main:
        distributed.barrier()  # rank 0 evaluates and writes the run directory
        return {}
    metrics = evaluate_method(method, make_eval_set(data, split.test), spec.protocol.m, spec.protocol.exclude_seen,
                              fidelity=spec.fidelity)
    metrics["fit_seconds"] = fit_seconds
    out.mkdir(parents=True, exist_ok=True)
    method.save(out)
    item_catalog(data, split).save(out / "items.npz")
    if method.joint_history is not None:
        from trainer.joint import plot_joint

        plot_joint({spec.method: method.joint_history}, out / "joint.png", spec.protocol.m)
    if dist_ctx is not None:
        metrics["world_size"] = dist_ctx.world_size
        distributed.barrier()
    split.save(out / "split.npz", data)
    config = _config_json(spec, method, data)
    if continued is not None:
        config["continued_from"] = continued.record
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def given_split_of(config: dict) -> tuple[GivenSplit, GivenSplitConfig]:
    """A published-split run's split files, read again, and its validation settings."""
    recorded = config["given_split"]
    split_config = GivenSplitConfig(valid_fraction=recorded["valid_fraction"], valid_holdout=recorded["valid_holdout"])
    return load_given_split(Path(recorded["train"]), Path(recorded["test"])), split_config


class ContinuedBase(NamedTuple):
    """A trained run that `train --start-from` continues on a new log."""

    method: DeepRetrieval  # the run's model and tree, loaded
    catalog: ItemCatalog  # its item ids: the new log is re-indexed into them
    record: dict  # what config.json records under "continued_from"


def _continued_base(spec: RunSpec, data: Interactions) -> ContinuedBase | None:
    """The `--start-from` run when the log is not the one it was trained on (continue it on
    new events); None otherwise (the joint loop's iteration 0)."""
    if not spec.start_from:
        if spec.tree_step:
            raise DataError("--tree-step continues a run on a new log: it needs --start-from RUN")
        return None
    run = Path(spec.start_from)
    config_path = run / "config.json"
    if not config_path.exists():
        raise DataError("not a run directory (no config.json)", run)
    config = json.loads(config_path.read_text())
    if config.get("dataset", {}).get("fingerprint") == data.fingerprint():
        if spec.tree_step:
            raise DataError("--tree-step continues a run on a new log; this is the run's own log", run)
        return None
    from trainer.incremental import load_base

    base, catalog, _ = load_base(run, spec.method)
    return ContinuedBase(base, catalog, {"run": str(run), "fingerprint": config["dataset"]["fingerprint"],
                                         "method": config["method"]})


def figure2_run(spec: RunSpec, out: Path, given: Mapping[str, Any] | None = None,
                learners: tuple[str, ...] = ("jtm", "jtm-cluster")) -> dict:
    """The paper's Figure 2: JTM's tree learning vs TDM's k-means re-clustering, both with the
    hierarchical representation, on one split: validation recall and L(theta, pi) per iteration."""
    from trainer.joint import plot_joint

    given = {**(given or {}), "max_history": spec.protocol.max_history}
    data = load_interactions(spec.data)
    split = spec.protocol.split(data, spec.seed)
    ctx = spec.protocol.fit_context(data, split, spec.seed, given.get("device", TrainConfig.device))
    base = build_method("jtm-h", given)  # iteration 0 of both loops: trained once
    assert isinstance(base, DeepRetrieval)
    base.fit(ctx)
    histories = {}
    for name in learners:
        method = build_method(name, given)
        assert isinstance(method, DeepRetrieval)
        method.fit(ctx, start_from=base)
        assert method.joint_history is not None
        histories[name] = method.joint_history
    out.mkdir(parents=True, exist_ok=True)
    plot_joint(histories, out / "figure2.png", spec.protocol.m)
    result = {name: h.to_json() for name, h in histories.items()}
    (out / "figure2.json").write_text(json.dumps(result, indent=2))
    return result


def _start_from(run: Path, data: Interactions, spec: RunSpec, method: DeepRetrieval) -> DeepRetrieval:
    """Load a fixed-tree run as the joint loop's iteration 0, after checking it fits."""
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else None
    if config is None:
        raise DataError("not a run directory (no config.json)", run)
    if config["dataset"]["fingerprint"] != data.fingerprint() or config["seed"] != spec.seed:
        raise DataError("--start-from run used other data or another seed", run)
    base = DeepRetrieval.load(run)
    if base.config.scorer != method.config.scorer or base.config.joint.learns_tree or base.tree is None:
        raise DataError(f"--start-from needs a fixed-tree run with the same scorer ({base.config.method} "
                        f"cannot start {method.config.method})", run)
    base.history = None
    return base


def item_catalog(data: Interactions, split: UserSplit) -> ItemCatalog:
    """Original ids, categories and popularity (training users) for the artifact."""
    counts = data.item_counts(split.train)
    popular = np.lexsort((np.arange(data.n_items), -counts))
    return ItemCatalog.create(data.item_ids, data.category_ids, data.item_category, popular)


def load_run(run: Path) -> tuple[dict, Interactions, UserSplit, DeepRetrieval]:
    """Rebuild data, split and method from a run directory (the data must be unchanged)."""
    config_path = run / "config.json"
    if not config_path.exists():
        raise DataError("not a run directory (no config.json)", run)
    config = json.loads(config_path.read_text())
    if config.get("format") != RUN_FORMAT_VERSION:
        raise DataError(f"run format {config.get('format')}, this code reads {RUN_FORMAT_VERSION}", run)
    if "given_split" in config:  # trained on a published split: what it learnt from is the train file
        given_split, split_config = given_split_of(config)
        data, _ = given_split.for_training(config["seed"], split_config)
        return config, data, UserSplit.load(run / "split.npz", data), DeepRetrieval.load(run)
    data = load_interactions(DataConfig.from_json(config["data"]))
    if "continued_from" in config:  # a continued run's data is its log in the base run's item space
        from trainer.incremental import reindex

        with np.load(run / "items.npz") as archive:
            n_items = len(archive["item_ids"])
        data, _ = reindex(data, ItemCatalog.load(run / "items.npz", n_items))
    split = UserSplit.load(run / "split.npz", data)
    return config, data, split, DeepRetrieval.load(run)


def evaluate_run(run: Path, m: int | None, exclude_seen: bool | None, beam: int | None, fidelity: bool) -> dict:
    config, data, split, method = load_run(run)
    if "given_split" in config:
        raise DataError("a published-split run: trainer.evaluate.given.evaluate_given_run scores it", run)
    m = m or config["m"]
    exclude_seen = config["exclude_seen"] if exclude_seen is None else exclude_seen
    return {"run": str(run), "method": config["method"],
            **evaluate_method(method, make_eval_set(data, split.test), m, exclude_seen, fidelity, beam)}


def _config_json(spec: RunSpec, method: DeepRetrieval, data: Interactions) -> dict:
    return {
        "format": RUN_FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": spec.method,
        "seed": spec.seed,
        "data": spec.data.to_json(),
        "dataset": data.summary(),
        "split": {"valid_fraction": spec.protocol.valid_fraction, "test_fraction": spec.protocol.test_fraction},
        "max_history": spec.protocol.max_history,
        "sample_history": spec.protocol.sample_history,
        "m": spec.protocol.m,
        "exclude_seen": spec.protocol.exclude_seen,
        "method_config": method.config.to_json(),
    }
