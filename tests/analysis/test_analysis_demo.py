#!/usr/bin/env python3
"""The analysis scripts (analysis/curves.py, sparsity.py, merge_table.py) on the output of
`paft demo`, checked against facts that do not come from the scripts themselves:

  curves       one summary row per <run>/<stage>/metrics.jsonl, labelled by the run's folder; the
               last step is the step count of demo.ini ([sft] steps, [pref] steps) and the last
               loss / nll / l1 / accuracy / margin are those of the file's last line.
  sparsity     every per-layer, per-module value and the overall sparsity equal what
               `paft inspect` prints for the same adapter.h5 (C code, computed independently) and,
               for --merged, the merged-delta table of `paft inspect merged.h5`; the CSV's counts
               of the PAFT SFT and preference adapters equal the small_sft / small_pref counts
               that `paft merge` stored in the merged file's /stats.
  merge_table  one row per entry of results.json, in order, each cell equal to the demo's own
               results.md (written by paft in C), the --out file equal to what is printed.

Every PNG must exist, start with the PNG signature, be of a sensible size and show a figure (not a
blank canvas). The scripts run without a display (DISPLAY unset: matplotlib's Agg backend).
numpy, h5py and matplotlib are required: a missing one FAILS the test, with the pip command.

    usage: test_analysis_demo.py {curves|sparsity|merge_table} PAFT ANALYSIS_DIR DEMO_DIR WORKDIR
"""
import configparser
import json
import os
import shutil
import struct
import subprocess
import sys

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")
    return cond


def require_packages():
    """The scripts need numpy, h5py and matplotlib; without them this test fails (not skips)."""
    missing = []
    for name in ("numpy", "h5py", "matplotlib"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"FAIL: the analysis scripts need the Python package(s) {', '.join(missing)}, "
              f"not installed for {sys.executable}: pip install numpy h5py matplotlib")
        sys.exit(1)


def run(args, what):
    """Run a command without a display; its stdout (the test fails when it fails)."""
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("MPLBACKEND", None)
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"FAIL: {what} exited {proc.returncode}\n  command: {' '.join(args)}\n"
              f"  stdout: {proc.stdout}\n  stderr: {proc.stderr}")
        sys.exit(1)
    return proc.stdout


def check_png(path, min_width=600, min_height=300):
    """A real PNG with a figure on it: signature, IHDR size, file size, and enough ink."""
    if not check(os.path.isfile(path), f"{path} was not written"):
        return
    with open(path, "rb") as f:
        data = f.read()
    check(data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: no PNG signature")
    check(data[12:16] == b"IHDR", f"{path}: first chunk is not IHDR")
    width, height = struct.unpack(">II", data[16:24])
    check(width >= min_width and height >= min_height, f"{path}: {width} x {height} pixels, too small")
    check(len(data) > 20000, f"{path}: only {len(data)} bytes")
    # Decode it (matplotlib reads PNG itself): a figure has axes, text and lines, so a fair share of
    # pixels is not background and there are many distinct colours.
    import matplotlib.image
    import numpy as np
    pixels = matplotlib.image.imread(path)[..., :3]
    ink = np.mean(np.any(pixels < 0.9, axis=-1))
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    check(ink > 0.02, f"{path}: {ink:.1%} of the pixels are not background (blank figure?)")
    check(colours > 50, f"{path}: only {colours} distinct colours (blank figure?)")


# --- curves --------------------------------------------------------------------------------------

def test_curves(paft, analysis, demo, work):
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",))
    ini.read(os.path.join(demo, "demo.ini"))
    steps_of = {"sft": int(ini["sft"]["steps"]), "pref": int(ini["pref"]["steps"])}

    png = os.path.join(work, "curves.png")
    out = run([sys.executable, os.path.join(analysis, "curves.py"), os.path.join(demo, "runs"), "--out", png],
              "curves.py")
    check_png(png)

    # The summary rows: run stage step loss nll l1 accuracy margin.
    rows = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8:
            rows[(fields[0], fields[1])] = fields[2:]

    # What the rows must say, from the files themselves.
    expected = {}
    for dirpath, _, files in os.walk(os.path.join(demo, "runs")):
        if "metrics.jsonl" in files:
            with open(os.path.join(dirpath, "metrics.jsonl")) as f:
                last = json.loads(f.read().strip().splitlines()[-1])
            run_name = os.path.basename(os.path.dirname(dirpath))
            kind = "sft" if last["stage"] == "sft" else "pref"
            check(os.path.basename(dirpath) == kind, f"{dirpath}: unexpected stage folder")
            expected[(run_name, last["stage"])] = (steps_of[kind], last)
    check(len(expected) == 6, f"the demo wrote {len(expected)} metrics.jsonl, expected 6 (3 SFT, 3 preference)")
    check(set(rows) == set(expected), f"curves.py summarised {sorted(rows)}, expected {sorted(expected)}")
    for key, (steps, last) in expected.items():
        if key not in rows:
            continue
        row = rows[key]
        check(int(row[0]) == steps, f"curves.py: {key} ends at step {row[0]}, demo.ini says {steps}")
        for value, name in zip(row[1:], ["loss", "nll", "l1", "rewards/accuracies", "rewards/margins"]):
            want = f"{last[name]:.4f}" if name in last else "-"
            check(value == want, f"curves.py: {key} {name} is {value}, the last line of metrics.jsonl says {want}")


# --- sparsity ------------------------------------------------------------------------------------

def parse_tables(text):
    """Tables of the `paft inspect` layout: {heading: {layer: [cells]}}, the heading being the
    non-empty line before each "layer q_proj ..." header."""
    tables = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:2] == ["layer", "q_proj"]:
            heading = next(lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()).strip()
            rows = {}
            for row in lines[i + 1:]:
                fields = row.split()
                if not fields or not fields[0].isdigit():
                    break
                rows[int(fields[0])] = fields[1:]
            tables[heading] = rows
    return tables


def overall_of(text, marker):
    """The number after `marker` in the first line that contains it."""
    for line in text.splitlines():
        if marker in line:
            return float(line.split(marker)[1].split()[0])
    return None


def same_table(ours, theirs, what):
    """Equal cell by cell; a cell may differ by one element of its module (fp32 rounding at the
    threshold may count one element differently; the smallest module of the demo has 512)."""
    check(sorted(ours) == sorted(theirs), f"{what}: layers {sorted(ours)} vs paft's {sorted(theirs)}")
    for layer in theirs:
        for a, b in zip(ours.get(layer, []), theirs[layer]):
            if a == "-" or b == "-":
                check(a == b, f"{what}: layer {layer}: {a} vs paft's {b}")
            else:
                check(abs(float(a) - float(b)) <= 1.0 / 512 + 1e-9,
                      f"{what}: layer {layer}: {a} vs paft inspect's {b}")


def test_sparsity(paft, analysis, demo, work):
    import h5py
    sft = os.path.join(demo, "runs/sft/sft/adapter.h5")        # SFT without L1
    sft_l1 = os.path.join(demo, "runs/paft/sft/adapter.h5")    # PAFT's SFT branch, with L1
    pref = os.path.join(demo, "runs/paft/pref/adapter.h5")     # PAFT's DPO branch
    merged = os.path.join(demo, "merged/paft-ties.h5")         # the merge of those two
    png, csv_path = os.path.join(work, "sparsity.png"), os.path.join(work, "sparsity.csv")
    out = run([sys.executable, os.path.join(analysis, "sparsity.py"), "--sft", sft, "--sft-l1", sft_l1,
               "--pref", pref, "--merged", merged, "--out", png, "--csv", csv_path], "sparsity.py")
    check_png(png)
    ours = parse_tables(out)

    # Each adapter against `paft inspect ADAPTER`.
    for label, path in [("delta_sft", sft), ("delta_sft + L1", sft_l1), ("delta_pref", pref)]:
        inspect = run([paft, "inspect", path], f"paft inspect {path}")
        theirs = parse_tables(inspect)
        heading = f"{label}: {path}"
        if check(heading in ours, f"sparsity.py printed no table '{heading}'") and check(len(theirs) == 1, "inspect table"):
            same_table(ours[heading], next(iter(theirs.values())), f"sparsity.py {label}")
        # The overall numbers: the line after the table, "overall sparsity X".
        section = out.split(heading, 1)[1]
        mine, paft_overall = overall_of(section, "overall sparsity"), overall_of(inspect, "overall sparsity")
        check(mine is not None and paft_overall is not None and abs(mine - paft_overall) <= 1e-4 + 1e-9,
              f"sparsity.py {label}: overall sparsity {mine}, paft inspect says {paft_overall}")

    # The merged delta against `paft inspect merged.h5` (its "merged delta" table and summary line).
    inspect = run([paft, "inspect", merged], f"paft inspect {merged}")
    theirs = parse_tables(inspect)
    merged_heading = next((h for h in theirs if h.startswith("merged delta")), None)
    heading = f"merged delta: {merged}"
    if check(merged_heading and heading in ours, "merged delta tables"):
        same_table(ours[heading], theirs[merged_heading], "sparsity.py --merged")
    mine = overall_of(out.split(heading, 1)[1], "overall sparsity")
    paft_overall = overall_of(inspect, "merged delta  sparsity")
    check(mine is not None and paft_overall is not None and abs(mine - paft_overall) <= 1e-4 + 1e-9,
          f"sparsity.py merged: overall {mine}, paft inspect says {paft_overall}")

    # The CSV's counts of the two PAFT adapters equal the counts the merge stored (same deltas).
    import csv
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    check(len(rows) == 4 * 14, f"{csv_path}: {len(rows)} rows, expected 4 series x 14 modules")
    with h5py.File(merged, "r") as f:
        for series, field in [("delta_sft + L1", "small_sft"), ("delta_pref", "small_pref")]:
            for row in (r for r in rows if r["series"] == series):
                name = next(n for n in f["stats"] if f".layers.{row['layer']}." in n and row["module"] in n)
                stored = int(f["stats"][name][()][field])
                check(abs(int(row["small"]) - stored) <= 1 and int(row["numel"]) == int(f["stats"][name][()]["numel"]),
                      f"{csv_path}: {series} layer {row['layer']} {row['module']}: {row['small']} of "
                      f"{row['numel']}, the merge counted {stored}")


# --- merge_table ---------------------------------------------------------------------------------

def markdown_rows(text):
    """The body rows of a markdown table, as lists of cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return rows[2:]  # header and separator


def test_merge_table(paft, analysis, demo, work):
    results = os.path.join(demo, "results.json")
    md, png = os.path.join(work, "merge_table.md"), os.path.join(work, "tradeoff.png")
    out = run([sys.executable, os.path.join(analysis, "merge_table.py"), results, "--out", md, "--png", png],
              "merge_table.py")
    check_png(png)
    with open(results) as f:
        entries = json.load(f)
    ours = markdown_rows(out)
    check(len(ours) == len(entries), f"merge_table.py: {len(ours)} rows, results.json has {len(entries)} entries")
    check([r[0] for r in ours] == [e["model"] for e in entries], "merge_table.py: models not in results.json's order")
    with open(md) as f:
        check(markdown_rows(f.read()) == ours, f"{md} differs from the printed table")
    # The demo's results.md, written by paft itself, has the same columns.
    with open(os.path.join(demo, "results.md")) as f:
        theirs = markdown_rows(f.read())
    check(len(theirs) == len(ours), "results.md row count")
    for a, b in zip(ours, theirs):
        check(a == b, f"merge_table.py row {a} differs from results.md's {b}")


def main():
    require_packages()
    which, paft, analysis, demo, work = sys.argv[1:6]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    {"curves": test_curves, "sparsity": test_sparsity, "merge_table": test_merge_table}[which](
        paft, analysis, demo, work)
    if failures:
        print(f"{which}: {failures} check(s) failed")
        sys.exit(1)
    print(f"{which}: all checks passed (figures in {work})")


if __name__ == "__main__":
    main()
