#!/usr/bin/env python3
"""Training curves of paft runs: SFT loss, NLL and L1, and the preference stage's loss and rewards.

    curves.py RUN_DIR [RUN_DIR ...] --out curves.png [--smooth N]

Every <run>/<stage>/metrics.jsonl under the given directories is read (paft train / run / demo
write one per stage; see docs/FILE_FORMATS.md). One line per run, labelled by the run's folder
name (runs/paft/sft/metrics.jsonl -> "paft"; exp1/paft and exp2/paft when two runs share a name).
The figure has one row per kind of stage found:

    SFT          loss | nll (cross-entropy) | l1 (lambda * sum |delta|) | grad_norm
    preference   loss | rewards/accuracies | rewards/margins | rewards/chosen (solid) and
                                                                 rewards/rejected (dashed)

A metric that is null, or a bare nan / inf (a skipped non-finite step, as older paft versions wrote
it), is left out of its curve; a last line cut short (a job killed while writing it) is skipped with
a warning. The PNG is written under a temporary name and renamed into place.

Per-step values of small batches are noisy: each curve is drawn as a moving average over N steps
(--smooth, default: about 1/30 of the run) over the raw values in a faint line. A summary table of
the last step of every run and stage is printed.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paft_io import atomic_output, fail, find_metrics, is_finite_number, read_metrics, require  # noqa: E402

np, _ = require("numpy", "matplotlib")  # (switches matplotlib to Agg first)
import matplotlib.pyplot as plt  # noqa: E402

SFT_PANELS = [("loss", "loss"), ("nll", "NLL (cross-entropy)"), ("l1", "L1 penalty (lambda * sum |delta|)"),
              ("grad_norm", "gradient norm")]
PREF_PANELS = [("loss", "loss"), ("rewards/accuracies", "reward accuracy"),
               ("rewards/margins", "reward margin"), ("rewards/chosen", "rewards: chosen (-), rejected (--)")]
PREF_STAGES = {"dpo", "ipo", "hinge", "orpo"}


def moving_average(values, window):
    """Mean of the last `window` values at each step (fewer at the start), so the curve starts at step 1."""
    values = np.asarray(values, dtype=float)
    if window <= 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def column(records, key):
    """(steps, values) of one metric, skipping records that lack it or where it is not finite
    (null, or nan / inf of a skipped step: one such value would poison the moving average)."""
    pairs = [(r["step"], r[key]) for r in records if is_finite_number(r.get(key))]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=float)


def plot_row(axes, series, panels, smooth, color_of):
    """One row of panels: every (run, records) of one stage kind, one line per run.

    Runs with the same data and settings give nearly the same curve (the demo's "paft" and
    "sft_l1", "paft" and "dpo"): the earlier runs are drawn wider, so a curve hidden under another
    still shows at its edges."""
    for ax, (key, title) in zip(axes, panels):
        for i, (run, records) in enumerate(series):
            width = 1.3 + 1.7 * (len(series) - 1 - i) / max(len(series) - 1, 1)
            keys = [key, "rewards/rejected"] if key == "rewards/chosen" else [key]
            for k, style in zip(keys, ["-", "--"]):
                steps, values = column(records, k)
                if len(steps) == 0:
                    continue
                window = smooth if smooth is not None else max(1, len(steps) // 30)
                if window > 1:
                    ax.plot(steps, values, style, color=color_of[run], alpha=0.2, linewidth=0.8)
                ax.plot(steps, moving_average(values, window), style, color=color_of[run],
                        linewidth=width, label=run if style == "-" else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--smooth", type=int, default=None,
                        help="moving-average window in steps (1 = raw; default: steps/30)")
    args = parser.parse_args()

    found = find_metrics(args.run_dirs)
    if not found:
        fail(f"no metrics.jsonl under {', '.join(args.run_dirs)} (expected <run>/<stage>/metrics.jsonl)")

    # Split by kind of stage (the records' own "stage" field, not the folder name).
    sft, pref = [], []
    summary = []
    for run, path in found:
        records = read_metrics(path)
        if not records:
            continue
        stage = records[0]["stage"]
        if stage == "sft":
            sft.append((run, records))
        elif stage in PREF_STAGES:
            pref.append((run, records))
        else:
            fail(f"{path}: stage '{stage}' is neither sft nor a preference stage ({', '.join(sorted(PREF_STAGES))})")
        summary.append((run, stage, records[-1]))

    rows = [(name, series, panels) for name, series, panels in
            [("SFT", sft, SFT_PANELS), ("preference", pref, PREF_PANELS)] if series]
    if not rows:
        fail("the metrics.jsonl files found hold no records")

    # One colour per run, the same in every panel.
    runs = sorted({run for _, series, _ in rows for run, _ in series})
    palette = plt.get_cmap("tab10")
    color_of = {run: palette(i % 10) for i, run in enumerate(runs)}

    fig, axes = plt.subplots(len(rows), 4, figsize=(17, 3.8 * len(rows)), squeeze=False)
    for row_axes, (name, series, panels) in zip(axes, rows):
        plot_row(row_axes, series, panels, args.smooth, color_of)
        row_axes[0].set_ylabel(name, fontsize=12, fontweight="bold")
        row_axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("paft training curves (" + ", ".join(os.path.basename(os.path.abspath(d)) for d in args.run_dirs)
                 + ")", fontsize=12)
    fig.tight_layout()
    with atomic_output(args.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

    # The last step of every run and stage (unsmoothed), for the log and for checking.
    print(f"{'run':<14} {'stage':<6} {'step':>6} {'loss':>10} {'nll':>10} {'l1':>10} {'accuracy':>9} {'margin':>9}")
    for run, stage, last in summary:
        def fmt(key, width):
            value = last.get(key)
            return f"{value:>{width}.4f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"
        print(f"{run:<14} {stage:<6} {last['step']:>6d} {fmt('loss', 10)} {fmt('nll', 10)} {fmt('l1', 10)} "
              f"{fmt('rewards/accuracies', 9)} {fmt('rewards/margins', 9)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
