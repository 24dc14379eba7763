"""Time to the validation plateau: training schedules side by side, from `compare` results.

Each configuration is one or more `compare --per-user` results (seeds run as separate processes
are pooled); every scorer run records its validation curve (recall per epoch and per joint
iteration, with the seconds spent so far, validation and tree steps included). Per
configuration: the seconds until the run first reached its best validation (the plateau), the
seconds the run spent in all (a constant rate also spends its early-stopping patience), the best
validation, the test metric, and against the reference configuration the paired per-user test
difference (same seeds, same test users) and the ratio of the times.

    .venv/bin/python -m bench.convergence \\
        default=ab-default-s0.json:jtm,ab-default-s1.json:jtm \\
        cosine=ab-cos-s0.json:jtm,ab-cos-s1.json:jtm \\
        --json bench/results/convergence/amazon-book.json --plot bench/results/convergence/amazon-book.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from trainer.evaluate.metrics import paired_difference


def load(spec: str) -> dict[int, dict]:
    """seed -> {"curve", "seconds", "test": per-user test metric, "metric", "fingerprint"}."""
    runs: dict[int, dict] = {}
    for part in spec.split(","):
        path, _, method = part.rpartition(":")
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such result file")
        result = json.loads(Path(path).read_text())
        if method not in result.get("per_seed", {}):
            raise SystemExit(f"{path}: no per-user results for {method!r} (run compare with --per-user)")
        for record in result["per_seed"][method]:
            users = record["users"]
            metric = "recall@20" if "recall@20" in users else "recall"
            if record["seed"] in runs:
                raise SystemExit(f"{part}: seed {record['seed']} given twice")
            runs[record["seed"]] = {"curve": record.get("curve") or [], "seconds": record["seconds"],
                                    "test": np.asarray(users[metric]), "metric": metric,
                                    "fingerprint": result["dataset"]["fingerprint"]}
    return runs


def plateau(curve: list[dict]) -> tuple[float, float, int]:
    """(seconds to the best validation, the best validation, points run) of one curve."""
    scored = [p for p in curve if p.get("valid") is not None]
    if not scored:
        return math.nan, math.nan, 0
    best = max(scored, key=lambda p: p["valid"])  # the first of equal maxima
    return best["seconds"], best["valid"], len(scored)


def summarize(configs: dict[str, dict[int, dict]], reference: str) -> dict:
    ref = configs[reference]
    rows = {}
    for label, runs in configs.items():
        seeds = sorted(runs)
        times = [plateau(runs[s]["curve"]) for s in seeds]
        row = {
            "seeds": seeds, "metric": runs[seeds[0]]["metric"],
            "seconds_to_plateau": float(np.mean([t[0] for t in times])),
            "seconds_per_seed_to_plateau": [t[0] for t in times],
            "seconds_run": float(np.mean([runs[s]["curve"][-1]["seconds"] if runs[s]["curve"] else math.nan
                                          for s in seeds])),
            "best_validation": float(np.mean([t[1] for t in times])),
            "test": float(np.mean([runs[s]["test"].mean() for s in seeds])),
            "test_per_seed": [float(runs[s]["test"].mean()) for s in seeds],
            "curves": {str(s): runs[s]["curve"] for s in seeds},
        }
        shared = [s for s in seeds if s in ref]
        if label != reference and shared:
            if any(runs[s]["fingerprint"] != ref[s]["fingerprint"] for s in shared):
                raise SystemExit(f"{label} and {reference} ran on different data")
            row["vs_reference"] = paired_difference(np.concatenate([runs[s]["test"] for s in shared]),
                                                    np.concatenate([ref[s]["test"] for s in shared]))
            row["plateau_speedup"] = float(np.mean([plateau(ref[s]["curve"])[0] / plateau(runs[s]["curve"])[0]
                                                    for s in shared]))
        rows[label] = row
    return {"reference": reference, "configurations": rows}


def format_table(summary: dict) -> str:
    reference = summary["reference"]
    lines = [f"| configuration | seeds | min to plateau | min run | best validation | test | "
             f"vs {reference} (paired) | plateau speed-up |", "|---" * 8 + "|"]
    for label, row in summary["configurations"].items():
        paired = row.get("vs_reference")
        diff = "-" if paired is None else f"{paired['mean']:+.4f} ± {paired['se']:.4f} (z {paired['z']:+.1f})"
        speedup = f"{row['plateau_speedup']:.2f}x" if "plateau_speedup" in row else "-"
        lines.append(f"| {label} | {len(row['seeds'])} | {row['seconds_to_plateau'] / 60:.1f} | "
                     f"{row['seconds_run'] / 60:.1f} | {row['best_validation']:.4f} | {row['metric']} "
                     f"{row['test']:.4f} | {diff} | {speedup} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for index, (label, row) in enumerate(summary["configurations"].items()):
        color = f"C{index}"
        for seed_index, curve in enumerate(row["curves"].values()):
            points = [p for p in curve if p.get("valid") is not None]
            axis.plot([p["seconds"] / 60 for p in points], [p["valid"] for p in points], "-o", color=color,
                      markersize=3, alpha=0.8, label=label if seed_index == 0 else None)
            iterations = [p for p in points if p["phase"] == "iteration"]
            axis.plot([p["seconds"] / 60 for p in iterations], [p["valid"] for p in iterations], "s", color=color,
                      markersize=5)
    axis.set_xlabel("minutes of training (validation and tree steps included)")
    axis.set_ylabel("validation recall")
    axis.set_title(title + " (squares: after a tree step)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configurations", nargs="+", help="LABEL=RESULT.json:method[,RESULT.json:method...]")
    parser.add_argument("--reference", default=None, help="label the others are compared with (default: the first)")
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--plot", default=None, metavar="PNG", help="validation recall against minutes")
    parser.add_argument("--title", default="validation recall during training")
    args = parser.parse_args()
    configs = {}
    for entry in args.configurations:
        label, sep, spec = entry.partition("=")
        if not sep or not spec:
            raise SystemExit(f"{entry}: expected LABEL=RESULT.json:method")
        configs[label] = load(spec)
    reference = args.reference or next(iter(configs))
    if reference not in configs:
        raise SystemExit(f"--reference {reference} is not one of {', '.join(configs)}")
    summary = summarize(configs, reference)
    print(format_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        plot(summary, Path(args.plot), args.title)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
