"""A picture of a compare result: recall@M (recall@20 on a published split) per method and paired
differences against the reference.

The table has every number; the plot shows at a glance which differences are larger than their
noise. Left: recall@M per method, mean over seeds, with the spread over seeds (std) when there
are several and the per-user standard error otherwise. Right: each method's paired per-user
recall difference against the reference method with a 95% interval (± 1.96 SE), the number the
paper's comparisons rest on.
"""

from __future__ import annotations

from pathlib import Path


def plot_table(result: dict, path: Path) -> None:
    """Write the recall / paired-difference figure of a `compare` or `merge` result to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    names = list(rows)
    reference = result["reference"]
    if result["protocol"].get("name") == "given split":  # a published split: recall@20, as the peers report
        seeds, metric, label = result["protocol"]["seeds"], "recall@20", "recall@20"
        recall = [100 * rows[n][metric] for n in names]
        spread = [100 * rows[n]["std"][metric] for n in names]
        diffs = [rows[n].get("vs_reference", {}).get(metric) for n in names]
    else:
        seeds, label = result["seeds"], f"recall@{result['m']}"
        recall = [100 * rows[n]["recall"] for n in names]
        spread = [100 * (rows[n]["std"]["recall"] if len(seeds) > 1 else rows[n]["user_se"]["recall"]) for n in names]
        diffs = [rows[n].get("recall_vs_reference") for n in names]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 2), sharey=True)
    positions = list(range(len(names)))[::-1]
    left.barh(positions, recall, xerr=spread, color="#4c72b0", alpha=0.85, capsize=3)
    for y, value in zip(positions, recall, strict=True):
        left.text(0.5, y, f"{value:.2f}", va="center", ha="left", fontsize=8, color="white")
    left.set_yticks(positions, names)
    spread_label = "± std over seeds" if len(seeds) > 1 else ("" if "recall@20" in label else "± per-user SE")
    left.set(xlabel=f"{label} (%)", title=f"{label[0].upper()}{label[1:]}, {len(seeds)} seed(s) {spread_label}")
    for y, diff in zip(positions, diffs, strict=True):
        if diff is None:
            continue
        mean, half = 100 * diff["mean"], 196 * diff["se"]
        color = "#55a868" if mean - half > 0 else "#c44e52" if mean + half < 0 else "#8c8c8c"
        right.errorbar(mean, y, xerr=half, fmt="o", color=color, capsize=3)
    right.axvline(0, color="black", linewidth=0.8)
    right.set(xlabel=f"{label} minus {reference}'s, paired per user (points, 95% interval)",
              title=f"Difference from {reference}")
    for axis in (left, right):
        axis.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
