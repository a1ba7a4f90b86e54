#!/usr/bin/env python3
"""The merge table and the SFT / preference trade-off plot from an evaluation's results.json.

    merge_table.py RESULTS_JSON [--out table.md] [--png tradeoff.png]

RESULTS_JSON is the list that `paft demo` writes (`paft eval` prints one 'eval: {...}' line per
model instead): one entry per evaluated model
with model, path, sft_nll, pref_accuracy, pref_margin, sparsity_sft, sparsity_pref (-1 where not
applicable). The markdown table has one row per entry, in file order, with the same columns as the
demo's results.md: SFT NLL (lower is better), preference accuracy and margin, the sparsity of the
deltas the model was made from and, for a merged model whose merged.h5 still exists at its path,
the sparsity of the merged delta (its /stats small_merged over numel, as `paft inspect` sums it).
The table is printed, and written to --out. An entry whose model is not a name, whose NLL,
accuracy or margin is not a number, or whose sparsity is neither a number nor null, and a merged.h5
that cannot be read, stop the script with one line naming the file.

--png draws two scatter plots, SFT NLL against preference accuracy and against the reward margin,
one labelled point per model, coloured by group: the part of the model name before ", " ("PAFT",
"PAFT without L1") groups the merge methods of one pair of adapters; the other models are the
baselines. A good model sits to the left (low NLL) and high (high accuracy / margin), so the
trade-off each merge method makes is visible at a glance. An entry with a nan or infinite value
is left out of the plot with a warning; with none left, --png is an error. Both outputs are
written under a temporary name and renamed into place.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paft_io import (atomic_output, fail, is_finite_number, merged_sparsity, open_h5,  # noqa: E402
                     read_results, require, warn, write_text)

DASH = "–"  # what results.md prints for "not applicable"


def merged_delta_sparsity(path):
    """Overall sparsity of the merged delta of a merged.h5 (None for adapters, the base model, or
    a merged file that is gone): weighted by elements, as paft sums it."""
    if not path or not path.endswith(".h5") or not os.path.isfile(path):
        return None
    with open_h5(path) as f:  # a corrupt file stops the script with one line naming it
        if "stats" not in f:
            return None  # an adapter.h5
    counts = merged_sparsity(path, "sparsity_merged")
    numel = sum(c[1] for c in counts.values())
    return sum(c[0] for c in counts.values()) / numel if numel else None


NUMBER_FIELDS = ["sft_nll", "pref_accuracy", "pref_margin"]
SPARSITY_FIELDS = ["sparsity_sft", "sparsity_pref"]


def check_rows(rows, path):
    """Every entry's cells are of the type the table prints: a model name, numbers (nan allowed,
    as a failed evaluation may record it) and sparsities that are numbers or null (= not
    applicable)."""
    for i, row in enumerate(rows):
        if not isinstance(row["model"], str):
            fail(f"{path}: entry {i}: model is {row['model']!r}, not a name")
        where = f"{path}: entry {i} ({row['model']})"
        for key in NUMBER_FIELDS:
            value = row[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                fail(f"{where}: {key} is {value!r}, not a number")
        for key in SPARSITY_FIELDS:
            value = row[key]
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                fail(f"{where}: {key} is {value!r}, not a number (or null for not applicable)")
        if row.get("path") is not None and not isinstance(row["path"], str):
            fail(f"{where}: path is {row['path']!r}, not a file name")


def plottable(rows, path):
    """The rows whose NLL, accuracy and margin are all finite (the others cannot be placed on the
    scatter plot: each is named in a warning); an error when none is left."""
    good = []
    for i, row in enumerate(rows):
        bad = [k for k in NUMBER_FIELDS if not is_finite_number(row[k])]
        if bad:
            warn(f"{path}: entry {i} ({row['model']}): {', '.join(f'{k} = {row[k]}' for k in bad)}; "
                 "left out of the plot")
        else:
            good.append(row)
    if not good:
        fail(f"{path}: no entry with a finite sft_nll, pref_accuracy and pref_margin: nothing to plot "
             "for --png")
    return good


def fraction(value):
    """A sparsity cell: 3 decimals, or a dash for "not applicable" (negative in results.json)."""
    return DASH if value is None or value < 0 else f"{value:.3f}"


def markdown_table(rows):
    """The table as results.md lays it out, one line per model."""
    lines = ["| model | SFT NLL (lower is better) | preference accuracy | margin | sparsity of delta_sft "
             "| of delta_pref | of merged delta |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['sft_nll']:.4f} | {row['pref_accuracy']:.3f} | "
                     f"{row['pref_margin']:.4f} | {fraction(row['sparsity_sft'])} | "
                     f"{fraction(row['sparsity_pref'])} | {fraction(row['sparsity_merged'])} |")
    return "\n".join(lines) + "\n"


def group_of(model):
    """("PAFT", "ties") for "PAFT, ties"; ("baselines", name) for a model without a method."""
    if ", " in model:
        group, method = model.split(", ", 1)
        return group, method
    return "baselines", model


def place_labels(ax, points):
    """Label each point, moving a label up or down when it would cover one already placed.

    points: (x, y, text, colour); the text takes its group's colour, so that "ties" of one group
    is told from "ties" of another. Positions are compared in axes fractions, so the rule is the same at any
    scale; a label moved away from its point gets a thin leader line."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    placed = []
    for x, y, text, colour in sorted(points, key=lambda p: (-p[1], p[0])):
        fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
        for k in [0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6]:
            ly = fy + 0.02 + 0.045 * k
            if all(abs(ly - py) > 0.04 or abs(fx - px) > 0.22 for px, py in placed):
                break
        placed.append((fx, ly))
        ax.annotate(text, (x, y), xytext=(fx + 0.012, ly), textcoords="axes fraction", fontsize=7.5, color=colour,
                    va="center", arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if k else None)


def plot(rows, out):
    require("matplotlib")  # switches it to Agg before pyplot is imported
    import matplotlib.pyplot as plt

    groups = []
    for row in rows:
        group, _ = group_of(row["model"])
        if group not in groups:
            groups.append(group)
    markers = ["s", "o", "^", "D", "v", "P", "X"]
    palette = plt.get_cmap("tab10")

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2))
    for ax, key, ylabel in [(axes[0], "pref_accuracy", "preference accuracy (higher is better)"),
                            (axes[1], "pref_margin", "preference reward margin (higher is better)")]:
        for g, group in enumerate(groups):
            members = [r for r in rows if group_of(r["model"])[0] == group]
            ax.scatter([r["sft_nll"] for r in members], [r[key] for r in members], s=45,
                       marker=markers[g % len(markers)], color=palette(g % 10), label=group, zorder=3)
        # Some room around the points for their labels, then the labels themselves.
        xs = [r["sft_nll"] for r in rows]
        ys = [r[key] for r in rows]
        xpad = 0.08 * (max(xs) - min(xs) or 1.0)
        ypad = 0.10 * (max(ys) - min(ys) or 1.0)
        ax.set_xlim(min(xs) - xpad, max(xs) + 4 * xpad)
        ax.set_ylim(min(ys) - ypad, max(ys) + 2 * ypad)
        place_labels(ax, [(r["sft_nll"], r[key], group_of(r["model"])[1],
                           palette(groups.index(group_of(r["model"])[0]) % 10)) for r in rows])
        ax.set_xlabel("SFT NLL, held-out (lower is better)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.text(0.01, 0.99, "better: up and left", transform=ax.transAxes, fontsize=8, va="top", color="0.4")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(groups), fontsize=9, bbox_to_anchor=(0.5, 0.955))
    fig.suptitle("SFT quality against preference alignment: every model of the evaluation", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", metavar="RESULTS_JSON")
    parser.add_argument("--out", help="write the markdown table to this file too")
    parser.add_argument("--png", help="write the trade-off scatter plot to this PNG file")
    args = parser.parse_args()

    rows = read_results(args.results)
    check_rows(rows, args.results)
    points = plottable(rows, args.results) if args.png else []  # before anything is written
    for row in rows:
        # The demo records absolute paths; a relative one is taken relative to results.json.
        path = row.get("path") or ""
        if path and not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(args.results)), path)
        row["sparsity_merged"] = merged_delta_sparsity(path)
    table = markdown_table(rows)
    print(table, end="")
    if args.out:
        write_text(args.out, table)
    if args.png:
        plot(points, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
