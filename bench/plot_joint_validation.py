"""Validation recall per joint iteration, one line per compare result: does the tree step pay?

    python -m bench.plot_joint_validation --method jtm \\
        --run "seed 0, guard off=bench/results/converged/ciao-catrand-guardoff-s0.json" \\
        --run "seed 2, auto=bench/results/converged/ciao-catrand-auto-s2.json" \\
        --out bench/results/converged/ciao-jtm-validation.png

Reads the joint history `compare --per-user` records for `--method` (iteration 0 is the model on
the starting tree, each later point the model retrained after one tree step) and draws each run
as a line, so a step the guard rejected shows as a flat segment and a kept one as a rise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def validation_per_iteration(path: Path, method: str) -> list[float]:
    """Validation recall (%) of iteration 0..T of the first seed of `method` in a compare result."""
    result = json.loads(path.read_text())
    runs = result.get("per_seed", {}).get(method)
    if not runs or not runs[0].get("joint"):
        raise SystemExit(f"{path}: no joint history for {method} (run compare with --per-user)")
    return [100 * record["valid"]["recall"] for record in runs[0]["joint"]["iterations"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="jtm", help="joint method whose history to plot (default jtm)")
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=RESULT.json",
                        help="a compare result and its legend label; repeat for each line")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for run in args.run:
        label, sep, path = run.partition("=")
        if not sep:
            raise SystemExit(f"--run wants LABEL=RESULT.json, got {run!r}")
        values = validation_per_iteration(Path(path), args.method)
        ax.plot(range(len(values)), values, marker="o", label=label)
        print(f"{label}: " + " -> ".join(f"{v:.2f}" for v in values))
    ax.set_xlabel("joint iteration (0: trained on the starting tree)")
    ax.set_ylabel("validation recall@200 (%)")
    ax.set_title(f"{args.method}: validation recall per tree step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
