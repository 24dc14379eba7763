"""Adding items to a large artifact: how long `add-items` takes, and a hot swap under load.

Builds (or reuses) a synthetic artifact of `--items` items (`bench.synthetic_artifact`: random
weights, real export path), makes `--new` new items and recent events for them (each new item
consumed by a few users next to a handful of old items of one "neighbourhood"; a share listed
with a category only, a share with nothing), times `trainer add-items` end to end (reading,
placement, the grown table, ONNX rewrite, both parity checks, the written artifact read back
as `publish` does), then serves the base and the grown artifact alternately from a registry
under open-loop load (`bench.swap_under_load`) and counts failed requests. Prints a table and
writes JSON.

    .venv/bin/python -m bench.bench_catalogue --items 1000000 --new 10000 --json bench/results/catalogue/add_1m.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench import command_line


def make_inputs(artifact: Path, n_new: int, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """new.csv (item_id, category_id: 80% with events, 10% category only, 10% nothing) and
    events.csv (user_id, item_id, timestamp): 5 users per new item with events, each touching
    the new item between 6 old items of one random neighbourhood of 64 consecutive ids."""
    with np.load(artifact / "items.npz") as archive:
        old_ids, categories = archive["item_ids"], archive["category_ids"]
    rng = np.random.default_rng(seed)
    new_ids = int(old_ids.max()) + 1 + np.arange(n_new)
    kind = rng.choice(3, size=n_new, p=[0.8, 0.1, 0.1])  # 0 events, 1 category only, 2 nothing
    category = np.where(kind == 2, "", rng.choice(categories, size=n_new).astype(str))
    pd.DataFrame({"item_id": new_ids, "category_id": category}).to_csv(out / "new.csv", index=False)
    with_events = np.flatnonzero(kind == 0)
    users_per_item, old_per_user = 5, 6
    n_users = len(with_events) * users_per_item
    item_of_user = np.repeat(with_events, users_per_item)
    start = rng.integers(0, len(old_ids) - 64, size=len(with_events))
    neighbourhood = np.repeat(start, users_per_item)[:, None] + rng.integers(0, 64, size=(n_users, old_per_user))
    olds = old_ids[neighbourhood]
    events = np.concatenate([olds[:, :3], new_ids[item_of_user][:, None], olds[:, 3:]], axis=1)
    frame = pd.DataFrame({"user_id": np.repeat(np.arange(n_users), events.shape[1]), "item_id": events.ravel(),
                          "timestamp": np.tile(np.arange(events.shape[1]), n_users)})
    frame.to_csv(out / "events.csv", index=False)
    return out / "new.csv", out / "events.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--cache", default="bench/.cache", help="where the base artifact is built once")
    parser.add_argument("--rate", type=float, default=40, help="swap under load: requests/s")
    parser.add_argument("--duration", type=float, default=40, help="swap under load: seconds")
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--no-swap", action="store_true", help="time add-items only")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    from bench.synthetic_artifact import build
    from trainer.catalogue.update import add_items

    base = Path(args.cache) / f"artifact-{args.items}"
    if not (base / "manifest.json").exists():
        started = time.perf_counter()
        build(args.items, base, parity_users=4)
        print(f"built {base} in {time.perf_counter() - started:.0f}s")
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        work = Path(tmp)
        items, events = make_inputs(base, args.new, work)
        started = time.perf_counter()
        manifest = add_items(base, items, work / "grown", events=events)
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        change = manifest["catalogue"]
        result = {
            "command": command_line(), "items": args.items, "new": args.new,
            "events": int(sum(1 for _ in open(events)) - 1), "add_items_seconds": seconds, "peak_rss_mb": peak_mb,
            "placed_by": change["placed_by"], "grown_levels": change["grown_levels"],
            "far_from_anchor": change["far_from_anchor"], "depth": manifest["tree"]["depth"],
            "rows": manifest["scorer"]["n_rows"], "scorer_bytes": manifest["files"]["scorer.onnx"]["bytes"],
            "parity": manifest["parity"],
        }
        if not args.no_swap:
            from bench.swap_under_load import run

            swap_dir = work / "swap"
            swap_dir.mkdir()
            result["swap"] = {k: v for k, v in run([base, work / "grown"], args.rate, args.duration, args.swaps, 3.0,
                                                   swap_dir).items() if k != "loadtest_output"}
        shutil.rmtree(work / "grown", ignore_errors=True)
    print("| items | new items | events | add-items | placed (co-consumed / category / popularity) | levels "
          "grown | scorer vs base | swap: sent | failed | p99 during swaps | p99 steady |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    swap = result.get("swap", {})
    placed = result["placed_by"]
    print(f"| {args.items:,} | {args.new:,} | {result['events']:,} | {seconds:.1f} s | {placed['co_consumed']:,} / "
          f"{placed['category']:,} / {placed['popularity']:,} | {result['grown_levels']} | "
          f"{result['parity']['grown_vs_base_max_abs']:.1e} | {swap.get('sent', '-')} | {swap.get('failed', '-')} | "
          + (f"{swap['p99_ms_during_swaps']:.1f} ms | {swap['p99_ms_steady']:.1f} ms |" if swap else "- | - |"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
