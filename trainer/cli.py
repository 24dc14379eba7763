"""Command line: `python -m trainer <command>`. Each command is a few lines over library calls.

The flags of the data, the protocol, the model and the joint loop come from the configurations
that use them (`trainer.config`): each default and its reason are written there, once, and
the help quotes them. Only the flags actually given reach a configuration; every method keeps
its own defaults for the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from trainer.config import Declared, add_options, collect, dest_of, given_options
from trainer.errors import DataError


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help shows its default: " (default: X)" is appended unless the help already
    says it in words (an option whose default is "each method's own" or "none" says which)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or action.required or "default" in text or unset:
            return text  # positionals and required options have none; a flag's is off
        return f"{text} (default: %(default)s)"


def data_flags(*flags: str) -> list[Declared]:
    from trainer.data.interactions import DataConfig

    return collect([("", DataConfig)], only=flags or ("--format", "--min-interactions", "--behaviors"))


def protocol_flags() -> list[Declared]:
    from trainer.evaluate.protocol import EvalProtocol

    return collect([("", EvalProtocol())])


def given_split_flags() -> list[Declared]:
    """The protocol's flags with what a published split (--train/--test) uses: its own
    validation default, and the share of a validation user's items held out."""
    from trainer.data.given_split import GivenSplitConfig
    from trainer.evaluate.protocol import EvalProtocol

    return collect([("", EvalProtocol()), ("with --train/--test", GivenSplitConfig())])


def model_flags() -> list[Declared]:
    """The model and training flags: the scorer methods' configuration first (its defaults are
    quoted first), then the baselines' own defaults for the flags they share."""
    from trainer.baselines.two_tower import TwoTowerConfig
    from trainer.baselines.youtube_dnn import YouTubeConfig
    from trainer.deep_retrieval import DeepConfig
    from trainer.fit.sampler import BeamAwareConfig

    joint = {entry.flag for entry in joint_flags()}
    flags = collect([("", DeepConfig()), ("", BeamAwareConfig()), ("youtube", YouTubeConfig()),
                     ("two-tower", TwoTowerConfig())])
    return [entry for entry in flags if entry.flag not in joint]


def joint_flags() -> list[Declared]:
    from trainer.joint import JointConfig

    return collect([("", JointConfig())])


# Method flags that no configuration field holds: --beam-aware turns BeamAwareConfig on,
# --equal-epochs changes the fixed-tree methods' budget (`methods.deep_config`).
SWITCHES = ("beam_aware", "equal_epochs")


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required,
                        help="interaction log (CSV/TSV/Parquet, .gz ok), or a directory written by `prepare`"
                        + ("" if required else " (default none: give --data, or --train and --test)"))
    add_options(parser, data_flags())


def _data_config(args: argparse.Namespace, *extra: str):
    from trainer.data.interactions import DataConfig

    flags = data_flags() + (data_flags(*extra) if extra else [])
    return DataConfig(path=args.data, **given_options(args, flags))


def _protocol(args: argparse.Namespace):
    from trainer.config import configure
    from trainer.evaluate.protocol import EvalProtocol

    return configure(EvalProtocol(), given_options(args, protocol_flags()))


def _add_split_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", default=None, help="a published split's train file instead of --data: lines of "
                        "'user_id item_id item_id ...' (.gz ok), line order as time; every user is trained on "
                        "(default none)")
    parser.add_argument("--test", default=None, help="with --train: the split's test file (same format); its users "
                        "are scored by recall@20/200 and NDCG@20/200, their train items never recommended "
                        "(default none)")


def _check_split_files(args: argparse.Namespace) -> None:
    """--train/--test (a published split) instead of --data: both files, and no --data flag."""
    if args.train is None or args.test is None:
        raise DataError("a published split needs both --train FILE and --test FILE")
    if args.data is not None:
        raise DataError("give either --data (our protocol) or --train/--test (a published split), not both")
    given = given_options(args, given_split_flags())
    refused = [flag for flag in ("test_fraction", "exclude_seen") if flag in given]
    if refused:
        raise DataError(f"--{refused[0].replace('_', '-')} does not apply to a published split: its test file is "
                        "the test set, and a user's train items are never recommended")
    if hasattr(args, "format") or hasattr(args, "min_interactions") or hasattr(args, "behaviors"):
        raise DataError("--format, --min-interactions and --behaviors apply to --data: a published split is read "
                        "as 'user item item ...' lines, every user kept")


def _add_seed(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=help)


def cmd_synth(args: argparse.Namespace) -> None:
    from trainer.config import configure
    from trainer.data.synth import SynthConfig, generate, generate_chunks, write, write_chunks

    config = configure(SynthConfig(seed=args.seed), given_options(args, collect([("", SynthConfig)])))
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

    if args.train is not None or args.test is not None:
        return _compare_given_split(args)
    if args.data is None:
        raise DataError("compare needs --data LOG (our protocol) or --train FILE --test FILE (a published split)")
    if hasattr(args, "valid_holdout"):
        raise DataError("--valid-holdout applies to a published split (--train/--test), not to --data")
    methods = parse_methods(args.methods)
    if args.reference is not None and args.reference not in methods:
        raise DataError(f"--reference {args.reference!r} is not among --methods {','.join(methods)}")
    if args.seeds < 1:
        raise DataError(f"--seeds must be >= 1, got {args.seeds}")
    if args.itemcf_neighbours is not None and args.itemcf_neighbours < 1:
        raise DataError(f"--itemcf-neighbours must be >= 1, got {args.itemcf_neighbours}")
    config = CompareConfig(methods=methods, protocol=_protocol(args),
                           seeds=tuple(range(args.seed, args.seed + args.seeds)), reference=args.reference,
                           per_user=args.per_user)
    options = method_options(args)  # checked before the (possibly long) read
    options["itemcf_neighbours"] = args.itemcf_neighbours
    data = load_interactions(_data_config(args))
    logging.getLogger("trainer").info(
        "data: %d users, %d items, %d interactions", data.n_users, data.n_items, len(data))
    save = None
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        save = partial(_write_json_atomically, Path(args.json))  # after every method: a stopped run keeps its rows
    result = run_compare(data, config, options, on_result=save)
    print(format_table(result))
    if args.json:
        print(f"\nwrote {args.json}")
    _plot(result, args.plot)


def _compare_given_split(args: argparse.Namespace) -> None:
    """compare on a published split: recall@k and NDCG@k of the test file (`trainer.evaluate.given`)."""
    from trainer.config import configure
    from trainer.data.given_split import GivenSplitConfig, load_given_split
    from trainer.evaluate.given import GivenCompareConfig, format_given_table, run_given_compare
    from trainer.methods import parse_methods

    _check_split_files(args)
    given = given_options(args, given_split_flags())
    methods = parse_methods(args.methods)
    if args.reference is not None and args.reference not in methods:
        raise DataError(f"--reference {args.reference!r} is not among --methods {','.join(methods)}")
    if args.seeds < 1:
        raise DataError(f"--seeds must be >= 1, got {args.seeds}")
    protocol = _protocol(args)
    config = GivenCompareConfig(methods=methods, seeds=tuple(range(args.seed, args.seed + args.seeds)),
                                reference=args.reference, split=configure(GivenSplitConfig(), given),
                                m=protocol.m, max_history=protocol.max_history,
                                sample_history=protocol.sample_history, per_user=args.per_user)
    options = method_options(args)
    options["itemcf_neighbours"] = args.itemcf_neighbours
    split = load_given_split(Path(args.train), Path(args.test))
    logging.getLogger("trainer").info("published split: %d users, %d items, %d train interactions, %d test users",
                                      split.data.n_users, split.data.n_items, len(split.data), len(split.test))
    save = None
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        save = partial(_write_json_atomically, Path(args.json))
    result = run_given_compare(split, config, options, on_result=save)
    print(format_given_table(result))
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
    if any(part.get("protocol", {}).get("name") == "given split" for part in parts):
        from trainer.evaluate.given import format_given_table, merge_given

        result = merge_given(parts, args.reference)
        print(format_given_table(result))
    else:
        result = merge_results(parts, args.reference)
        print(format_table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomically(Path(args.json), result)
    print(f"\nwrote {args.json}")
    _plot(result, args.plot)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and training (defaults: each method's own)")
    flags = model_flags()
    add_options(group, [entry for entry in flags if not entry.flag.startswith("--beam-aware-")])
    group.add_argument("--beam-aware", action="store_true",
                       help="tree methods: draw part of each level's negatives from the nodes the model's own "
                            "beam search compares there, mined before every epoch (OTM)")
    add_options(group, [entry for entry in flags if entry.flag.startswith("--beam-aware-")])
    joint = parser.add_argument_group("joint learning (jtm, jtm-j, jtm-cluster)")
    add_options(joint, joint_flags())
    joint.add_argument("--equal-epochs", action="store_true",
                       help="dnn, tdm and jtm-h train the epochs a joint loop spends (epochs + iterations x "
                            "retrain-epochs), so methods compare at equal training")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every method flag by its key: the value given, or None where it was not (False for a
    switch). What `compare` records, and, without the Nones, what configures each method."""
    flags = model_flags() + joint_flags()
    given = given_options(args, flags)
    for switch in SWITCHES:
        given[switch] = bool(getattr(args, switch, False))
    if str(given.get("device", "")).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DataError(f"--device {given['device']} asked for, but no CUDA device is available")
    beam_aware_flags = [entry.flag for entry in flags if entry.flag.startswith("--beam-aware-")]
    if not given["beam_aware"] and {dest_of(flag) for flag in beam_aware_flags} & set(given):
        raise DataError(f"{', '.join(beam_aware_flags)} need --beam-aware")
    switches = {dest_of(f.flag) for f in flags if f.option.kind is None and isinstance(f.defaults[0][1], bool)}
    return {**{dest_of(f.flag): (False if dest_of(f.flag) in switches else None) for f in flags}, **given}


def method_flag_keys() -> set[str]:
    """The keys the method flags are known by (`method_options`, the results that record them)."""
    return {dest_of(entry.flag) for entry in model_flags() + joint_flags()} | set(SWITCHES)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def cmd_train(args: argparse.Namespace) -> None:
    from trainer.run import RunSpec, train_run

    if args.train is not None or args.test is not None:
        return _train_given_split(args)
    if args.data is None:
        raise DataError("train needs --data LOG (our protocol) or --train FILE --test FILE (a published split)")
    if hasattr(args, "valid_holdout"):
        raise DataError("--valid-holdout applies to a published split (--train/--test), not to --data")
    options = method_options(args)
    spec = RunSpec(data=_data_config(args, "--exclude-items"), method=args.method, seed=args.seed,
                   protocol=_protocol(args), start_from=args.start_from, fidelity=not args.no_fidelity,
                   tree_step=args.tree_step)
    metrics = train_run(spec, Path(args.out), _given(options))
    if not metrics:  # a torch.distributed worker rank: rank 0 reports and writes
        return
    print(_metrics_line(metrics))
    print(f"wrote run to {args.out}")
    _export_and_publish(args)


def _train_given_split(args: argparse.Namespace) -> None:
    """train on a published split: fit on its train file, score its test users as served."""
    from trainer.config import configure
    from trainer.data.given_split import GivenSplitConfig
    from trainer.evaluate.given import GivenRunSpec, metrics_line, train_given_run

    _check_split_files(args)
    refused = [flag for flag, value in (("--start-from", args.start_from), ("--tree-step", args.tree_step),
                                        ("--no-fidelity", args.no_fidelity)) if value]
    if hasattr(args, "exclude_items"):
        refused.append("--exclude-items")
    if refused:
        raise DataError(f"{refused[0]} applies to --data runs, not to a published split")
    protocol = _protocol(args)
    spec = GivenRunSpec(train=args.train, test=args.test, method=args.method, seed=args.seed,
                        split=configure(GivenSplitConfig(), given_options(args, given_split_flags())),
                        m=protocol.m, max_history=protocol.max_history, sample_history=protocol.sample_history)
    metrics = train_given_run(spec, Path(args.out), _given(method_options(args)))
    print(metrics_line(metrics))
    print(f"wrote run to {args.out}")
    _export_and_publish(args)


def _export_and_publish(args: argparse.Namespace) -> None:
    """train's --export / --publish: the run just written, as an artifact (and published)."""
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
    from trainer.catalogue.placement import PlacementConfig
    from trainer.catalogue.update import add_items
    from trainer.config import configure
    from trainer.data.interactions import DataConfig

    placement = configure(PlacementConfig(), given_options(args, collect([("", PlacementConfig)])))
    fmt = given_options(args, data_flags("--format")).get("format", DataConfig.format)
    manifest = add_items(Path(args.artifact), Path(args.items), Path(args.out), Path(args.events) if args.events
                         else None, fmt, placement)
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

    spec = RunSpec(data=_data_config(args), method="jtm", seed=args.seed, protocol=_protocol(args))
    result = figure2_run(spec, Path(args.out), _given(method_options(args)))
    m = spec.protocol.m
    print(f"| iteration | {' | '.join(f'{n} R@{m} | {n} L/sample' for n in result)} |")
    print("|---" * (1 + 2 * len(result)) + "|")
    for i in range(len(next(iter(result.values()))["iterations"])):
        cells = []
        for history in result.values():
            record = history["iterations"][i]
            cells += [f"{100 * record['valid']['recall']:.2f}%", f"{record['global_loss']:.4f}"]
        print(f"| {i} | {' | '.join(cells)} |")
    print(f"wrote {Path(args.out) / 'figure2.png'} and figure2.json")


def cmd_ingest(args: argparse.Namespace) -> None:
    from trainer.config import configure
    from trainer.online.ingest import Ingest, IngestConfig, IngestMetrics
    from trainer.online.sources import RedisStreamSource, SpoolSource

    if (args.redis_url is None) == (args.spool is None):
        raise DataError("give the event log to read: --redis-url URL (the service's Redis) or --spool DIR")
    config = configure(IngestConfig(), given_options(args, collect([("", IngestConfig)])))
    source = (RedisStreamSource(args.redis_url, args.redis_prefix) if args.redis_url is not None
              else SpoolSource(Path(args.spool)))
    metrics = IngestMetrics()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, registry=metrics.registry)
    ingest = Ingest(source, Path(args.log), config, metrics)
    try:
        if args.once:
            read = ingest.drain()
            print(f"ingested {read:,} events into {args.log} (log at segment {ingest.state.next_seq - 1}, "
                  f"{ingest.state.events:,} events in all)")
        else:
            import signal

            signal.signal(signal.SIGTERM, lambda *_: ingest.stop())
            ingest.run()
    finally:
        ingest.close()


def cmd_refresh(args: argparse.Namespace) -> None:
    from trainer.config import configure
    from trainer.online.refresh import RefreshConfig, RefreshMetrics, refresh

    config = configure(RefreshConfig(), given_options(args, collect([("", RefreshConfig)])))
    metrics = RefreshMetrics()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, registry=metrics.registry)
    while True:
        started = time.time()
        try:
            decision = refresh(Path(args.registry), Path(args.log), config, args.redis_url, args.seed)
        except Exception as exc:  # noqa: BLE001 - a loop keeps the served version and tries again later
            if args.interval is None:
                raise
            decision = {"decision": "error", "message": f"refresh failed: {type(exc).__name__}: {exc}"}
            logging.getLogger("trainer.online.refresh").error("refresh failed", exc_info=not isinstance(exc, DataError))
        metrics.observe(decision, time.time() - started)
        print(_decision_line(decision), flush=True)
        if args.interval is None:
            return
        time.sleep(max(0.0, args.interval - (time.time() - started)))


def _decision_line(decision: dict) -> str:
    if decision["decision"] in ("nothing", "error"):
        return decision["message"]
    paired = decision["paired_difference"]
    return (f"{decision['decision']} {decision['candidate']} ({decision['mode']}, {decision['new_events']} new events, "
            f"{decision['new_items']['added']} new items): held-out recall@{decision['k']} "
            f"{decision['served_recall']:.4f} -> {decision['candidate_recall']:.4f}, paired {paired['mean']:+.4f} "
            f"+- {paired['se']:.4f} over {paired['users']} users (tolerance {decision['tolerance']})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from trainer.evaluate.given import evaluate_given_run, is_given_run, metrics_line
    from trainer.run import evaluate_run

    exclude = True if args.exclude_seen else None
    if is_given_run(Path(args.run)):
        metrics = evaluate_given_run(Path(args.run), args.m, args.beam, exclude)
        print(metrics_line(metrics))
    else:
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. With `command`, only that subcommand's options are built (the others
    keep their one-line help): the model flags come from configurations in modules that import
    torch, which `--help` and the commands that train nothing need not load."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (summary, add_arguments, run) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, formatter_class=HelpFormatter)  # subparsers don't inherit it
        if command in (None, name):
            add_arguments(sub)
        sub.set_defaults(func=run)
    return parser


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer.data.synth import SynthConfig

    parser.add_argument("--out", required=True, help="output file (.csv, .csv.gz or .parquet)")
    add_options(parser, collect([("", SynthConfig)]))
    _add_seed(parser, "random seed")
    parser.add_argument("--chunk-users", type=int, default=None,
                       help="write this many users at a time (default: whole log in memory up to 20M "
                            "interactions, ~10M-event chunks beyond)")


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="directory to write")


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer.methods import METHODS

    _add_data_arguments(parser, required=False)
    _add_split_files(parser)
    parser.add_argument("--methods", default="pop,itemcf,youtube", help="comma list of " + ", ".join(METHODS))
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (splits) to average")
    _add_seed(parser, "first seed")
    add_options(parser, given_split_flags())
    parser.add_argument("--itemcf-neighbours", type=int, default=None,
                         help="Item-CF: only the K most similar items of each history item (default: all)")
    parser.add_argument("--reference", default=None, help="method for paired differences (default: first)")
    parser.add_argument("--json", default=None, help="also write the results here (default: print the table only)")
    parser.add_argument("--per-user", action="store_true",
                         help="keep per-user metrics in the JSON, so runs over other seeds can be merged")
    _add_plot(parser)
    _add_model_arguments(parser)


def _merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="JSON files written by compare --per-user")
    parser.add_argument("--json", required=True, help="write the merged result here")
    parser.add_argument("--reference", default=None,
                       help="method the paired differences are taken against (default: the first part's)")
    _add_plot(parser)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer.methods import METHODS, TRAINABLE

    baselines = ", ".join(name for name in METHODS if name not in TRAINABLE)
    _add_data_arguments(parser, required=False)
    _add_split_files(parser)
    add_options(parser, data_flags("--exclude-items"))
    parser.add_argument("--method", required=True,
                       help=f"one of {', '.join(TRAINABLE)} (the baselines {baselines}: use compare)")
    parser.add_argument("--out", required=True, help="run directory to write")
    _add_seed(parser, "split and initialisation seed")
    add_options(parser, given_split_flags())
    parser.add_argument("--export", default=None, metavar="ARTIFACT_DIR",
                       help="also export an artifact here (default: no export)")
    parser.add_argument("--publish", default=None, metavar="REGISTRY",
                       help="also export and publish it to this registry (default: not published)")
    parser.add_argument("--start-from", default=None, metavar="RUN",
                       help="jtm/jtm-j on the run's own log: continue the joint loop from this tdm/jtm-h run (its "
                            "iteration 0); on a new log (--data NEW_LOG): continue this run's model on the new events "
                            "with its learnt tree (same --method; --epochs more; events of items it does not know "
                            "are dropped: add them with add-items) (default: train from scratch)")
    parser.add_argument("--redis-url", default=None,
                       help="announce the published version on this Redis (default: the registry files only)")
    parser.add_argument("--tree-step", action="store_true",
                       help="with --start-from on a new log: then one JTM tree-learning step and a retraining, "
                            "kept only when validation recall improves")
    parser.add_argument("--no-fidelity", action="store_true",
                       help="skip the brute-force comparison on test users (it scores every item per user)")
    _add_model_arguments(parser)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by train")
    parser.add_argument("--out", required=True, help="artifact directory to create (must not exist)")


def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", required=True, help="artifact directory written by export")
    parser.add_argument("--registry", required=True, help="registry directory (created when absent)")
    parser.add_argument("--redis-url", default=None,
                         help="also set the Redis key and announce on pub/sub (default: the registry files only)")


def _add_items_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer.catalogue.placement import PlacementConfig

    _add_catalogue_update(parser, "CSV/TSV/Parquet of new items: item_id[,category_id]")
    parser.add_argument("--events", default=None,
                     help="recent interactions (any log format) that place new items by co-consumption "
                          "(default: none; categories, then popularity, place them)")
    add_options(parser, data_flags("--format"))
    add_options(parser, collect([("", PlacementConfig)]))


def _retire_items_arguments(parser: argparse.ArgumentParser) -> None:
    _add_catalogue_update(parser, "CSV/TSV/Parquet of the item_id column to retire")


def _figure2_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="directory for figure2.png and figure2.json")
    _add_seed(parser, "split and initialisation seed")
    add_options(parser, protocol_flags())
    _add_model_arguments(parser)


def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer.online.ingest import IngestConfig

    parser.add_argument("--log", required=True, help="the Parquet event log directory to write")
    parser.add_argument("--redis-url", default=None, help="read the service's event Stream on this Redis "
                                                          "(default: --spool)")
    parser.add_argument("--redis-prefix", default="jtm", help="the service's JTM_REDIS_PREFIX")
    parser.add_argument("--spool", default=None, metavar="DIR",
                        help="read the spool of a service without Redis (its JTM_SPOOL_DIR; default: --redis-url)")
    parser.add_argument("--once", action="store_true", help="drain what is there, then exit (default: run until "
                                                            "SIGTERM)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (default: none)")
    add_options(parser, collect([("", IngestConfig)]))


def _refresh_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer.online.refresh import RefreshConfig

    parser.add_argument("--registry", required=True, help="the registry whose current version is refreshed")
    parser.add_argument("--log", required=True, help="the Parquet event log `ingest` writes")
    parser.add_argument("--redis-url", default=None, help="announce a published version on this Redis "
                                                          "(default: the registry files only)")
    parser.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                        help="refresh every this many seconds until stopped (default: once)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (default: none)")
    _add_seed(parser, "hold-out and training seed")
    add_options(parser, collect([("", RefreshConfig)]))


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by train")
    parser.add_argument("--m", type=int, default=None, help="M in P/R/F@M (default: the run's M)")
    parser.add_argument("--beam", type=int, default=None, help="beam width of the search (default: the run's beam)")
    parser.add_argument("--exclude-seen", action="store_true",
                          help="never recommend feature-half items (default: the run's own rule)")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the brute-force comparison")
    parser.add_argument("--json", default=None, help="also write the metrics here (default: print only)")


def _add_plot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw recall per method and paired differences against the reference "
                             "(default: no plot)")


def _add_catalogue_update(parser: argparse.ArgumentParser, items: str) -> None:
    """add-items and retire-items: an artifact and an item list in, a new artifact out."""
    parser.add_argument("--artifact", required=True, help="artifact directory to start from")
    parser.add_argument("--items", required=True, help=items)
    parser.add_argument("--out", required=True, help="new artifact directory (must not exist)")
    parser.add_argument("--publish", default=None, metavar="REGISTRY",
                        help="also publish it to this registry (default: not published)")
    parser.add_argument("--redis-url", default=None, help="announce the published version here (default: none)")


# name -> (one-line help, the function adding its options, the function running it)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "synth": ("generate a synthetic interaction log with a planted hierarchy", _synth_arguments, cmd_synth),
    "prepare": ("read, filter and index a log once into memory-mapped arrays (large logs; torchrun ranks share "
                "them)", _prepare_arguments, cmd_prepare),
    "compare": ("evaluate methods under the paper's protocol (Table 1)", _compare_arguments, cmd_compare),
    "merge": ("merge compare --per-user results (other seeds, or other methods of the same seeds) into one table",
              _merge_arguments, cmd_merge),
    "train": ("train one method and write a run directory", _train_arguments, cmd_train),
    "export": ("write a versioned ONNX + tree artifact from a run directory", _export_arguments, cmd_export),
    "publish": ("copy an artifact into a registry and make it current", _publish_arguments, cmd_publish),
    "add-items": ("place new items into an artifact's tree without retraining and write a new artifact",
                  _add_items_arguments, cmd_add_items),
    "retire-items": ("stop serving items: write a new artifact in which they are retired", _retire_items_arguments,
                     cmd_retire_items),
    "figure2": ("JTM tree learning vs k-means re-clustering per iteration (paper Fig. 2)", _figure2_arguments,
                cmd_figure2),
    "evaluate": ("evaluate a run directory on its test users", _evaluate_arguments, cmd_evaluate),
    "ingest": ("read the service's event log into the Parquet log, exactly once", _ingest_arguments, cmd_ingest),
    "refresh": ("bring the served model up to date with the logged traffic, behind a quality gate",
                _refresh_arguments, cmd_refresh),
}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_of(argv) or "").parse_args(argv)  # "": no command, no options to build
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
