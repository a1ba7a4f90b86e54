#!/usr/bin/env python3
"""Sparsity of the LoRA deltas per layer and module: the paper's Figure 2.

    sparsity.py --sft ADAPTER [--sft-l1 ADAPTER] --pref ADAPTER [--merged MERGED.h5]
                --out sparsity.png [--csv sparsity.csv]

For each adapter.h5 the delta of every adapted module is formed as delta = s B A (s = alpha/r, or
alpha/sqrt(r) with rslora; docs/FILE_FORMATS.md) and its sparsity is the fraction of elements with
|delta| < 1e-5, the measure of the paper's Figure 2 and of `paft inspect`. The series:

    delta_sft          --sft      an SFT adapter trained without the L1 penalty
    delta_sft + L1     --sft-l1   an SFT adapter trained with it (PAFT's sparse SFT)
    delta_pref         --pref     a preference (DPO, ...) adapter
    merged delta       --merged   a merged.h5 of `paft merge`: the sparsity_merged that the merge
                                  recorded in /stats (theta_merged - theta_pre), not recomputed

The figure has one panel per projection (q_proj ... down_proj) plus one for all modules of a layer
together, the layers on the x axis and one bar per series. The same numbers are printed as tables
(layout of `paft inspect`) with each series' overall sparsity (weighted by elements), and written
as CSV rows (series, path, layer, module, small, numel, sparsity) with --csv. Both outputs are
written under a temporary name and renamed into place.
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paft_io import (PROJECTIONS, SPARSITY_THRESHOLD, adapter_sparsity, atomic_output,  # noqa: E402
                     fail, merged_sparsity, require)

np, _ = require("numpy", "matplotlib")  # (switches matplotlib to Agg first)
import matplotlib.pyplot as plt  # noqa: E402

# A fixed colour per kind of series, so that figures of different runs compare at a glance.
COLORS = {"delta_sft": "tab:blue", "delta_sft + L1": "tab:orange", "delta_pref": "tab:green",
          "merged delta": "tab:purple"}


def per_layer(counts, n_layers, module=None):
    """Sparsity per layer of one module (or of all modules of the layer when module is None);
    NaN where the series has no such module."""
    values = []
    for layer in range(n_layers):
        cells = [counts[(layer, p)] for p in PROJECTIONS
                 if (layer, p) in counts and (module is None or p == module)]
        small = sum(c[0] for c in cells)
        numel = sum(c[1] for c in cells)
        values.append(small / numel if numel else float("nan"))
    return np.array(values)


def overall(counts):
    """Fraction of all elements of all modules below the threshold (as paft prints it)."""
    small = sum(c[0] for c in counts.values())
    numel = sum(c[1] for c in counts.values())
    return small / numel if numel else float("nan")


def print_table(label, path, counts, n_layers):
    """One series as `paft inspect` prints an adapter: a row per layer, a column per projection."""
    print(f"{label}: {path}")
    print(f"  {'layer':>5}" + "".join(f" {p:>9}" for p in PROJECTIONS))
    for layer in range(n_layers):
        cells = []
        for p in PROJECTIONS:
            if (layer, p) in counts:
                small, numel = counts[(layer, p)]
                cells.append(f" {small / numel:9.4f}")
            else:
                cells.append(f" {'-':>9}")
        print(f"  {layer:5d}" + "".join(cells))
    numel = sum(c[1] for c in counts.values())
    print(f"\n  {len(counts)} modules, {numel} delta elements, overall sparsity {overall(counts):.4f}\n")


def plot(series, n_layers, out):
    """Grouped bars: panel "all modules" then one per projection present; x = layer, bar = series."""
    modules = [None] + [p for p in PROJECTIONS if any((l, p) in c for _, _, c in series for l in range(n_layers))]
    # A shallow model fits four panels a row; a deep one gets two wider ones (about 0.3 inch per
    # layer, at most 10 inches a panel, so that the figure stays printable).
    ncols = 4 if n_layers <= 8 else 2
    nrows = (len(modules) + ncols - 1) // ncols
    panel_w = min(max(4.0, 0.3 * n_layers), 10.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, 3.3 * nrows), squeeze=False)
    layers = np.arange(n_layers)
    bar_w = 0.8 / len(series)
    for ax, module in zip(axes.flat, modules):
        for i, (label, _, counts) in enumerate(series):
            bars = ax.bar(layers - 0.4 + bar_w * (i + 0.5), per_layer(counts, n_layers, module), bar_w,
                          color=COLORS[label], label=label)
            if n_layers <= 4:
                # Few layers: print each value over its bar, so a sparsity of 0 reads as "0.00"
                # rather than as a missing bar.
                ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_title("all modules" if module is None else module, fontsize=10)
        ax.set_ylim(0, 1.12)
        ax.set_xticks(layers if n_layers <= 16 else layers[:: max(1, n_layers // 8)])
        ax.set_xlabel("layer")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(modules):]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel(f"fraction |delta| < {SPARSITY_THRESHOLD:g}")
    # One legend for the figure, with each series' overall sparsity.
    handles, _ = axes.flat[0].get_legend_handles_labels()
    names = [f"{label}{' of ' + os.path.basename(path) if label == 'merged delta' else ''} "
             f"(overall {overall(c):.4f})" for label, path, c in series]
    fig.legend(handles, names,
               loc="upper center", ncol=len(series), fontsize=9, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("sparsity of the weight deltas per layer and module", y=1.04, fontsize=12)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", help="adapter.h5 of SFT without L1")
    parser.add_argument("--sft-l1", help="adapter.h5 of SFT with the L1 penalty")
    parser.add_argument("--pref", help="adapter.h5 of the preference stage")
    parser.add_argument("--merged", help="merged.h5 of paft merge (its /stats sparsity_merged)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--csv", help="also write the numbers as CSV")
    args = parser.parse_args()

    series = []  # (label, path, {(layer, proj): (small, numel)})
    for label, path in [("delta_sft", args.sft), ("delta_sft + L1", args.sft_l1), ("delta_pref", args.pref)]:
        if path:
            series.append((label, path, adapter_sparsity(path)))
    if args.merged:
        series.append(("merged delta", args.merged, merged_sparsity(args.merged, "sparsity_merged")))
    if not series:
        fail("nothing to plot: give at least one of --sft, --sft-l1, --pref, --merged")
    for label, path, counts in series:
        if not counts:
            fail(f"{path}: no adapted modules")

    n_layers = 1 + max(layer for _, _, counts in series for layer, _ in counts)
    for label, path, counts in series:
        print_table(label, path, counts, n_layers)

    if args.csv:
        with atomic_output(args.csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["series", "path", "layer", "module", "small", "numel", "sparsity"])
            for label, path, counts in series:
                for (layer, proj), (small, numel) in sorted(counts.items(),
                                                            key=lambda kv: (kv[0][0], PROJECTIONS.index(kv[0][1]))):
                    writer.writerow([label, path, layer, proj, small, numel, f"{small / numel:.6f}"])

    plot(series, n_layers, args.out)
    print(f"wrote {args.out}" + (f" and {args.csv}" if args.csv else ""))


if __name__ == "__main__":
    main()
