"""Command line: `python -m trainer <command>`. Each command is a few lines over library calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path

from trainer.data.formats import FORMATS
from trainer.errors import DataError
from trainer.tree.build import TREE_INITS

# The names `train --method` accepts (trainer.run.TRAINABLE; tests/trainer/test_errors.py checks).
TRAIN_METHODS = "dnn, tdm, jtm-j, jtm-h, jtm, jtm-cluster"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help shows its default: " (default: X)" is appended unless the help already
    says it in words (an option whose default is "each method's own" or "none" says which)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or action.required or "default" in text or unset:
            return text  # positionals and required options have none; a flag's is off
        return f"{text} (default: %(default)s)"


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="interaction log (CSV/TSV/Parquet, .gz ok), or a directory written by `prepare`")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="log format (auto: detect it from the file name and first line)")
    parser.add_argument("--min-interactions", type=int, default=10, help="keep users with at least this many")
    parser.add_argument("--behaviors", default=None,
                        help="UserBehavior only: comma list of pv,buy,cart,fav to keep (default: all)")


def _add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation protocol's options, shared by compare, train and figure2."""
    parser.add_argument("--m", type=int, default=200, help="M in P/R/F@M, for validation and test (paper: 200)")
    parser.add_argument("--exclude-seen", action="store_true",
                        help="never recommend an item of the user's feature half (not in the paper)")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="share of users held out for validation")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of users held out for test")
    parser.add_argument("--max-history", type=int, default=69, help="behaviours used as features")


def _data_config(args: argparse.Namespace):
    from trainer.data.interactions import DataConfig

    behaviors = None if args.behaviors is None else tuple(b.strip() for b in args.behaviors.split(","))
    return DataConfig(path=args.data, format=args.format, min_interactions=args.min_interactions,
                      behaviors=behaviors, exclude_items=getattr(args, "exclude_items", None))


def cmd_synth(args: argparse.Namespace) -> None:
    from trainer.data.synth import SynthConfig, generate, generate_chunks, write, write_chunks

    config = SynthConfig(n_items=args.items, n_users=args.users, n_interactions=args.interactions,
                         seed=args.seed)
    chunk_users = args.chunk_users
    if chunk_users is None and config.interactions > 20_000_000:
        chunk_users = max(1, config.n_users * 10_000_000 // config.interactions)  # ~10M events a chunk
    if chunk_users:
        started = time.perf_counter()
        rows = write_chunks(_progress(generate_chunks(config, chunk_users), config, chunk_users), Path(args.out))
        print(f"wrote {rows:,} interactions ({config.n_users:,} users, {config.n_items:,} items) to {args.out} "
              f"in {time.perf_counter() - started:.0f}s, {chunk_users:,} users per chunk")
        return
    frame = generate(config)
    write(frame, Path(args.out))
    print(f"wrote {len(frame):,} interactions ({config.n_users:,} users, {config.n_items:,} items) to {args.out}")


def _progress(chunks, config, chunk_users: int):
    """Log each chunk as it is written (a 100M-event log takes minutes)."""
    total = -(-config.n_users // chunk_users)
    for i, frame in enumerate(chunks, start=1):
        logging.getLogger("trainer.data.synth").info("synth: chunk %d/%d, %s events", i, total, f"{len(frame):,}")
        yield frame


def cmd_prepare(args: argparse.Namespace) -> None:
    from trainer.data.interactions import load_interactions
    from trainer.data.prepared import save_prepared

    started = time.perf_counter()
    config = _data_config(args)
    data = load_interactions(config)
    read_seconds = time.perf_counter() - started
    save_prepared(data, Path(args.out), config.min_interactions, config.behaviors)
    print(f"prepared {len(data):,} interactions ({data.n_users:,} users, {data.n_items:,} items) in "
          f"{read_seconds:.0f}s + {time.perf_counter() - started - read_seconds:.0f}s to write {args.out}; "
          f"use --data {args.out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from trainer.data.interactions import load_interactions
    from trainer.evaluate.compare import CompareConfig, format_table, run_compare
    from trainer.methods import parse_methods

    methods = parse_methods(args.methods)
    if args.reference is not None and args.reference not in methods:
        raise DataError(f"--reference {args.reference!r} is not among --methods {','.join(methods)}")
    if args.m < 1:
        raise DataError(f"--m must be >= 1, got {args.m}")
    if args.seeds < 1:
        raise DataError(f"--seeds must be >= 1, got {args.seeds}")
    if args.itemcf_neighbours is not None and args.itemcf_neighbours < 1:
        raise DataError(f"--itemcf-neighbours must be >= 1, got {args.itemcf_neighbours}")
    options = _method_options(args)  # checked before the (possibly long) read
    data = load_interactions(_data_config(args))
    logging.getLogger("trainer").info(
        "data: %d users, %d items, %d interactions", data.n_users, data.n_items, len(data))
    config = CompareConfig(
        methods=methods, m=args.m, seeds=tuple(range(args.seed, args.seed + args.seeds)),
        exclude_seen=args.exclude_seen, valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction, max_history=args.max_history, reference=args.reference,
        per_user=args.per_user,
    )
    save = None
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        save = partial(_write_json_atomically, Path(args.json))  # after every method: a stopped run keeps its rows
    result = run_compare(data, config, options, on_result=save)
    print(format_table(result))
    if args.json:
        print(f"\nwrote {args.json}")
    _plot(result, args.plot)


def _plot(result: dict, path: str | None) -> None:
    if path:
        from trainer.evaluate.table_plot import plot_table

        plot_table(result, Path(path))
        print(f"wrote {path}")


def _write_json_atomically(path: Path, value: dict) -> None:
    """Replace `path` in one step, so a reader (or a kill) never sees half a file."""
    from service.core.artifact import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(value, indent=2).encode())


def cmd_merge(args: argparse.Namespace) -> None:
    from trainer.evaluate.compare import format_table, merge_results

    parts = []
    for path in args.results:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise DataError(f"not a readable compare result ({exc.__class__.__name__})", path) from exc
    result = merge_results(parts, args.reference)
    print(format_table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomically(Path(args.json), result)
    print(f"\nwrote {args.json}")
    _plot(result, args.plot)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    # The defaults quoted below are the configurations' own (tests/trainer/test_errors.py checks them).
    group = parser.add_argument_group("model and training (defaults: each method's own)")
    group.add_argument("--epochs", type=int, default=None,
                       help="max epochs; validation recall picks the best (default 10; youtube 20, two-tower 40)")
    group.add_argument("--batch-size", type=int, default=None, help="training batch size (default 256)")
    group.add_argument("--lr", type=float, default=None,
                       help="Adam learning rate (default 2e-3; youtube 1e-3; two-tower tunes it)")
    group.add_argument("--dim", type=int, default=None, help="embedding size (default 32; two-tower tunes it)")
    group.add_argument("--arity", type=int, default=None, help="tree arity (default 2)")
    group.add_argument("--tree-init", default=None, choices=["auto", *TREE_INITS],
                       help="initial tree (default auto: category when the log has categories, else kmeans); "
                            "category-random shuffles items inside a category, id-order ignores categories")
    group.add_argument("--leaf-negatives", type=int, default=None,
                       help="negatives at the leaf level, halving upward (default 50)")
    group.add_argument("--beam", type=int, default=None, help="beam width (default: = M)")
    group.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:N) when present")
    group.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"],
                       help="training forward precision (default auto: bf16 on AMX/AVX512-BF16/CUDA)")
    group.add_argument("--kernel", default=None, choices=["auto", "fused", "autograd"],
                       help="training kernel (default auto: fused on the CPU, but autograd under bf16 for the "
                            "plain tower on a CPU with bf16 units; autograd on CUDA or with --precision bf16)")
    group.add_argument("--threads", type=int, default=None,
                       help="fused kernel worker threads (default: torch's thread count, i.e. the cores)")
    group.add_argument("--beam-aware", action="store_true",
                       help="tree methods: draw part of each level's negatives from the nodes the model's own "
                            "beam search compares there, mined before every epoch (OTM)")
    group.add_argument("--beam-aware-share", type=float, default=None,
                       help="with --beam-aware: share of each level's negatives from the beam (default 0.5)")
    group.add_argument("--beam-aware-beam", type=int, default=None,
                       help="with --beam-aware: beam width of the mining search (default 32)")
    group.add_argument("--beam-aware-min-items", type=int, default=None,
                       help="with --beam-aware: mine only at levels whose nodes hold at least this many items "
                            "on average (default 1: every level)")
    group.add_argument("--beam-aware-warmup", type=int, default=None,
                       help="with --beam-aware: epochs of each training run on uniform negatives before mining "
                            "starts (default 0)")
    joint = parser.add_argument_group("joint learning (jtm, jtm-j, jtm-cluster)")
    joint.add_argument("--iterations", type=int, default=None, help="joint iterations T (default 3)")
    joint.add_argument("--retrain-epochs", type=int, default=None, help="epochs per iteration (default 2)")
    joint.add_argument("--internal-init", default=None, choices=["keep", "mean"],
                       help="internal node rows after a new tree (default keep)")
    joint.add_argument("--gap", type=int, default=None, help="tree learning gap d (default 7)")
    joint.add_argument("--max-samples-per-item", type=int, default=None, help="tree learning cap (default 50)")
    joint.add_argument("--workers", type=int, default=None, help="tree learning processes (default 1)")
    joint.add_argument("--tree-guard", default=None, choices=["auto", "on", "off"],
                       help="keep the old tree when the learnt one scores worse with the model fixed; auto: on "
                            "for plain features, off with the hierarchical representation, where validation "
                            "recall after retraining decides (default auto)")
    joint.add_argument("--tree-judge", default=None, choices=["neutral", "trained"],
                       help="how the guard scores trees: each with its internal nodes at its items' mean rows "
                            "(neutral), or with the trained model's nodes, which favour the tree they were "
                            "trained on (default neutral)")
    joint.add_argument("--retrain-unchanged", action="store_true",
                       help="retrain even after a tree step that moved no item (the paper's loop, literally)")
    joint.add_argument("--equal-epochs", action="store_true",
                       help="dnn, tdm and jtm-h train the epochs a joint loop spends (epochs + iterations x "
                            "retrain-epochs), so methods compare at equal training")


def _method_options(args: argparse.Namespace):
    from trainer.methods import MethodOptions

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DataError(f"--device {args.device} asked for, but no CUDA device is available")
    # Sizes that make no training or no search: refused before the (possibly long) read, instead
    # of, e.g., --epochs 0 silently evaluating an untrained model.
    for flag, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                               ("--dim", args.dim, 1), ("--arity", args.arity, 2),
                               ("--leaf-negatives", args.leaf_negatives, 1), ("--beam", args.beam, 1),
                               ("--iterations", args.iterations, 0), ("--retrain-epochs", args.retrain_epochs, 1),
                               ("--gap", args.gap, 1), ("--max-samples-per-item", args.max_samples_per_item, 1),
                               ("--workers", args.workers, 1)):
        if value is not None and value < least:
            raise DataError(f"{flag} must be at least {least}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise DataError(f"--lr must be positive, got {args.lr}")
    if not args.beam_aware and any(v is not None for v in (args.beam_aware_share, args.beam_aware_beam,
                                                            args.beam_aware_min_items, args.beam_aware_warmup)):
        raise DataError("--beam-aware-share, --beam-aware-beam, --beam-aware-min-items and --beam-aware-warmup "
                        "need --beam-aware")
    if args.beam_aware_share is not None and not 0.0 < args.beam_aware_share <= 1.0:
        raise DataError(f"--beam-aware-share must be in (0, 1], got {args.beam_aware_share}")
    if args.beam_aware_beam is not None and args.beam_aware_beam < 1:
        raise DataError(f"--beam-aware-beam must be positive, got {args.beam_aware_beam}")
    if args.beam_aware_min_items is not None and args.beam_aware_min_items < 1:
        raise DataError(f"--beam-aware-min-items must be positive, got {args.beam_aware_min_items}")
    if args.beam_aware_warmup is not None and args.beam_aware_warmup < 0:
        raise DataError(f"--beam-aware-warmup must be >= 0, got {args.beam_aware_warmup}")
    return MethodOptions(
        epochs=args.epochs, device=args.device, max_history=args.max_history, batch_size=args.batch_size,
        lr=args.lr, dim=args.dim, arity=args.arity, tree_init=args.tree_init,
        leaf_negatives=args.leaf_negatives, beam=args.beam, iterations=args.iterations,
        retrain_epochs=args.retrain_epochs, internal_init=args.internal_init, gap=args.gap,
        max_samples_per_item=args.max_samples_per_item, workers=args.workers, precision=args.precision,
        guard=None if args.tree_guard in (None, "auto") else args.tree_guard == "on", tree_judge=args.tree_judge,
        retrain_unchanged=True if getattr(args, "retrain_unchanged", False) else None,
        kernel=args.kernel, threads=args.threads,
        itemcf_neighbours=getattr(args, "itemcf_neighbours", None),
        equal_epochs=getattr(args, "equal_epochs", False),
        beam_aware=args.beam_aware, beam_aware_share=args.beam_aware_share, beam_aware_beam=args.beam_aware_beam,
        beam_aware_min_items=args.beam_aware_min_items, beam_aware_warmup=args.beam_aware_warmup,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from trainer.run import RunSpec, train_run

    spec = RunSpec(data=_data_config(args), method=args.method, seed=args.seed,
                   valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
                   max_history=args.max_history, m=args.m, exclude_seen=args.exclude_seen,
                   start_from=args.start_from, fidelity=not args.no_fidelity, tree_step=args.tree_step)
    metrics = train_run(spec, Path(args.out), _method_options(args))
    if not metrics:  # a torch.distributed worker rank: rank 0 reports and writes
        return
    print(_metrics_line(metrics))
    print(f"wrote run to {args.out}")
    if args.export or args.publish:
        artifact = Path(args.export) if args.export else Path(args.out) / "artifact"
        _export(Path(args.out), artifact)
        if args.publish:
            _publish(artifact, Path(args.publish), args.redis_url)


def cmd_export(args: argparse.Namespace) -> None:
    _export(Path(args.run), Path(args.out))


def cmd_publish(args: argparse.Namespace) -> None:
    _publish(Path(args.artifact), Path(args.registry), args.redis_url)


def _export(run: Path, out: Path) -> None:
    from trainer.export import export_run

    manifest = export_run(run, out)
    parity = manifest["parity"]
    print(f"artifact {manifest['version']} written to {out}: ONNX vs PyTorch max |diff| "
          f"{parity['onnx_vs_torch_max_abs']:.1e}; top-{parity['topk']['k']} identical for "
          f"{parity['topk']['identical_lists']}/{parity['topk']['users']} users")


def _publish(artifact: Path, registry: Path, redis_url: str | None) -> None:
    from trainer.publish import publish

    version = publish(artifact, registry, redis_url)
    print(f"published {version}: now current in {registry}" + (f" (announced on {redis_url})" if redis_url else ""))


def cmd_add_items(args: argparse.Namespace) -> None:
    from trainer.catalogue.update import add_items

    manifest = add_items(Path(args.artifact), Path(args.items), Path(args.out), Path(args.events) if args.events
                         else None, args.format, args.window)
    change = manifest["catalogue"]
    placed = ", ".join(f"{n} by {reason.replace('_', '-')}" for reason, n in change["placed_by"].items())
    print(f"artifact {manifest['version']} written to {args.out}: {change['added']} items added ({placed}); "
          f"{manifest['tree']['n_items']} items, depth {manifest['tree']['depth']}"
          + (f" (grown by {change['grown_levels']})" if change["grown_levels"] else "")
          + f"; scorer vs base max |diff| {manifest['parity']['grown_vs_base_max_abs']:.1e}, top-"
            f"{manifest['parity']['topk']['k']} unchanged for {manifest['parity']['topk']['identical_lists']}/"
            f"{manifest['parity']['topk']['users']} sampled users")
    if args.publish:
        _publish(Path(args.out), Path(args.publish), args.redis_url)


def cmd_retire_items(args: argparse.Namespace) -> None:
    from trainer.catalogue.update import retire_items

    manifest = retire_items(Path(args.artifact), Path(args.items), Path(args.out))
    change = manifest["catalogue"]
    print(f"artifact {manifest['version']} written to {args.out}: {change['retired']} items retired "
          f"({change['retired_total']} in all); never served by this version")
    if args.publish:
        _publish(Path(args.out), Path(args.publish), args.redis_url)


def cmd_figure2(args: argparse.Namespace) -> None:
    from trainer.run import RunSpec, figure2_run

    spec = RunSpec(data=_data_config(args), method="jtm", seed=args.seed, valid_fraction=args.valid_fraction,
                   test_fraction=args.test_fraction, max_history=args.max_history, m=args.m,
                   exclude_seen=args.exclude_seen)
    result = figure2_run(spec, Path(args.out), _method_options(args))
    print(f"| iteration | {' | '.join(f'{n} R@{args.m} | {n} L/sample' for n in result)} |")
    print("|---" * (1 + 2 * len(result)) + "|")
    for i in range(len(next(iter(result.values()))["iterations"])):
        cells = []
        for history in result.values():
            record = history["iterations"][i]
            cells += [f"{100 * record['valid']['recall']:.2f}%", f"{record['global_loss']:.4f}"]
        print(f"| {i} | {' | '.join(cells)} |")
    print(f"wrote {Path(args.out) / 'figure2.png'} and figure2.json")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from trainer.run import evaluate_run

    exclude = True if args.exclude_seen else None
    metrics = evaluate_run(Path(args.run), args.m, exclude, args.beam, fidelity=not args.no_fidelity)
    print(_metrics_line(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
        print(f"wrote {args.json}")


def _metrics_line(m: dict) -> str:
    line = (f"P@{m['m']} {100 * m['precision']:.2f}%  R@{m['m']} {100 * m['recall']:.2f}% "
            f"(± {100 * m['user_se']['recall']:.2f} SE)  F@{m['m']} {100 * m['f_measure']:.2f}%  "
            f"on {m['users']} test users, {m['retrieval']}, filter: {'exclude seen' if m['exclude_seen'] else 'none'}")
    if "fidelity" in m:
        line += (f"\nbeam {m['beam']}: overlap with brute-force top-{m['m']} = {100 * m['fidelity']:.1f}%, "
                 f"brute-force R@{m['m']} {100 * m['brute_force_recall']:.2f}%")
    return line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = _Subcommands(commands)

    synth = sub.add_parser("synth", help="generate a synthetic interaction log with a planted hierarchy")
    synth.add_argument("--out", required=True, help="output file (.csv, .csv.gz or .parquet)")
    synth.add_argument("--items", type=int, default=10_000, help="catalogue size")
    synth.add_argument("--users", type=int, default=2_000, help="number of users")
    synth.add_argument("--interactions", type=int, default=None, help="number of interactions (default: 30 per user)")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--chunk-users", type=int, default=None,
                       help="write this many users at a time (default: whole log in memory up to 20M "
                            "interactions, ~10M-event chunks beyond)")
    synth.set_defaults(func=cmd_synth)

    prepare = sub.add_parser("prepare", help="read, filter and index a log once into memory-mapped arrays "
                                             "(large logs; torchrun ranks share them)")
    _add_data_arguments(prepare)
    prepare.add_argument("--out", required=True, help="directory to write")
    prepare.set_defaults(func=cmd_prepare)

    compare = sub.add_parser("compare", help="evaluate methods under the paper's protocol (Table 1)")
    _add_data_arguments(compare)
    compare.add_argument("--methods", default="pop,itemcf,youtube",
                         help="comma list of pop, itemcf, youtube, two-tower, " + TRAIN_METHODS)
    compare.add_argument("--seeds", type=int, default=1, help="number of seeds (splits) to average")
    compare.add_argument("--seed", type=int, default=0, help="first seed")
    _add_protocol_arguments(compare)
    compare.add_argument("--itemcf-neighbours", type=int, default=None,
                         help="Item-CF: only the K most similar items of each history item (default: all)")
    compare.add_argument("--reference", default=None, help="method for paired differences (default: first)")
    compare.add_argument("--json", default=None, help="also write the results here (default: print the table only)")
    compare.add_argument("--per-user", action="store_true",
                         help="keep per-user metrics in the JSON, so runs over other seeds can be merged")
    compare.add_argument("--plot", default=None, metavar="PNG",
                         help="also draw recall per method and paired differences against the reference "
                              "(default: no plot)")
    _add_model_arguments(compare)
    compare.set_defaults(func=cmd_compare)

    merge = sub.add_parser("merge", help="merge compare --per-user results (other seeds, or other methods "
                                            "of the same seeds) into one table")
    merge.add_argument("results", nargs="+", help="JSON files written by compare --per-user")
    merge.add_argument("--json", required=True, help="write the merged result here")
    merge.add_argument("--reference", default=None,
                       help="method the paired differences are taken against (default: the first part's)")
    merge.add_argument("--plot", default=None, metavar="PNG",
                       help="also draw recall per method and paired differences against the reference "
                            "(default: no plot)")
    merge.set_defaults(func=cmd_merge)

    train = sub.add_parser("train", help="train one method and write a run directory")
    _add_data_arguments(train)
    train.add_argument("--method", required=True,
                       help=f"one of {TRAIN_METHODS} (the baselines pop, itemcf, youtube, two-tower: use compare)")
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--seed", type=int, default=0, help="split and initialisation seed")
    _add_protocol_arguments(train)
    train.add_argument("--export", default=None, metavar="ARTIFACT_DIR",
                       help="also export an artifact here (default: no export)")
    train.add_argument("--publish", default=None, metavar="REGISTRY",
                       help="also export and publish it to this registry (default: not published)")
    train.add_argument("--start-from", default=None, metavar="RUN",
                       help="jtm/jtm-j on the run's own log: continue the joint loop from this tdm/jtm-h run (its "
                            "iteration 0); on a new log (--data NEW_LOG): continue this run's model on the new events "
                            "with its learnt tree (same --method; --epochs more; events of items it does not know "
                            "are dropped: add them with add-items) (default: train from scratch)")
    train.add_argument("--redis-url", default=None,
                       help="announce the published version on this Redis (default: the registry files only)")
    train.add_argument("--tree-step", action="store_true",
                       help="with --start-from on a new log: then one JTM tree-learning step and a retraining, "
                            "kept only when validation recall improves")
    train.add_argument("--exclude-items", default=None, metavar="LIST_OR_ARTIFACT",
                       help="drop these items' events first: an item list (item_id column), or an artifact "
                            "directory whose retired items they are (retire-items); default: keep every item")
    train.add_argument("--no-fidelity", action="store_true",
                       help="skip the brute-force comparison on test users (it scores every item per user)")
    _add_model_arguments(train)
    train.set_defaults(func=cmd_train)

    export = sub.add_parser("export", help="write a versioned ONNX + tree artifact from a run directory")
    export.add_argument("--run", required=True, help="run directory written by train")
    export.add_argument("--out", required=True, help="artifact directory to create (must not exist)")
    export.set_defaults(func=cmd_export)

    publish = sub.add_parser("publish", help="copy an artifact into a registry and make it current")
    publish.add_argument("--artifact", required=True, help="artifact directory written by export")
    publish.add_argument("--registry", required=True, help="registry directory (created when absent)")
    publish.add_argument("--redis-url", default=None,
                         help="also set the Redis key and announce on pub/sub (default: the registry files only)")
    publish.set_defaults(func=cmd_publish)

    add = sub.add_parser("add-items", help="place new items into an artifact's tree without retraining and "
                                           "write a new artifact")
    add.add_argument("--artifact", required=True, help="artifact directory to start from")
    add.add_argument("--items", required=True, help="CSV/TSV/Parquet of new items: item_id[,category_id]")
    add.add_argument("--events", default=None,
                     help="recent interactions (any log format) that place new items by co-consumption "
                          "(default: none; categories, then popularity, place them)")
    add.add_argument("--format", default="auto", choices=FORMATS, help="format of --events")
    add.add_argument("--window", type=int, default=50,
                     help="events either side of a new item's event that count as co-consumed")
    add.add_argument("--out", required=True, help="new artifact directory (must not exist)")
    add.add_argument("--publish", default=None, metavar="REGISTRY",
                     help="also publish it to this registry (default: not published)")
    add.add_argument("--redis-url", default=None, help="announce the published version here (default: none)")
    add.set_defaults(func=cmd_add_items)

    retire = sub.add_parser("retire-items", help="stop serving items: write a new artifact in which they are "
                                                 "retired")
    retire.add_argument("--artifact", required=True, help="artifact directory to start from")
    retire.add_argument("--items", required=True, help="CSV/TSV/Parquet of the item_id column to retire")
    retire.add_argument("--out", required=True, help="new artifact directory (must not exist)")
    retire.add_argument("--publish", default=None, metavar="REGISTRY",
                        help="also publish it to this registry (default: not published)")
    retire.add_argument("--redis-url", default=None, help="announce the published version here (default: none)")
    retire.set_defaults(func=cmd_retire_items)

    figure2 = sub.add_parser("figure2", help="JTM tree learning vs k-means re-clustering per iteration (paper Fig. 2)")
    _add_data_arguments(figure2)
    figure2.add_argument("--out", required=True, help="directory for figure2.png and figure2.json")
    figure2.add_argument("--seed", type=int, default=0, help="split and initialisation seed")
    _add_protocol_arguments(figure2)
    _add_model_arguments(figure2)
    figure2.set_defaults(func=cmd_figure2)

    evaluate = sub.add_parser("evaluate", help="evaluate a run directory on its test users")
    evaluate.add_argument("--run", required=True, help="run directory written by train")
    evaluate.add_argument("--m", type=int, default=None, help="M in P/R/F@M (default: the run's M)")
    evaluate.add_argument("--beam", type=int, default=None, help="beam width of the search (default: the run's beam)")
    evaluate.add_argument("--exclude-seen", action="store_true",
                          help="never recommend feature-half items (default: the run's own rule)")
    evaluate.add_argument("--no-fidelity", action="store_true", help="skip the brute-force comparison")
    evaluate.add_argument("--json", default=None, help="also write the metrics here (default: print only)")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


class _Subcommands:
    """add_parser with this module's HelpFormatter (subparsers do not inherit it)."""

    def __init__(self, action) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.action.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    from trainer.fit import distributed

    try:
        args.func(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0
