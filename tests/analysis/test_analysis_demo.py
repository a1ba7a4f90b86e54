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


def run_status(args):
    """Run a command without a display: (status, stdout, stderr), whatever the status."""
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("MPLBACKEND", None)
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def expect_error(what, args, message):
    """The command fails with status 1 and a last stderr line that holds message, no traceback."""
    rc, out, err = run_status(args)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    check(rc == 1 and message in last and "Traceback" not in err,
          f"{what}: status {rc}, stderr {err!r} (wanted a line with {message!r})")


def no_temporaries(directory):
    left = [n for n in os.listdir(directory) if ".tmp." in n]
    check(not left, f"{directory}: temporary files left behind: {left}")


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
    test_curves_damaged(analysis, demo, work)
    test_curves_same_run_names(analysis, demo, work)


def test_curves_damaged(analysis, demo, work):
    """Regression: a skipped non-finite step logged as `"loss": nan` (not JSON), a null value, or
    a last line cut short by a killed job made curves.py refuse the whole run. Now nan / inf / null
    are read (and left out of the curves) and the cut last line is skipped with a warning; any
    other bad line, a non-integer step, non-UTF-8 text and an unwritable --out stay errors."""
    import re
    script = os.path.join(analysis, "curves.py")
    runs = os.path.join(work, "runs_damaged")
    shutil.copytree(os.path.join(demo, "runs"), runs)
    metrics = os.path.join(runs, "sft", "sft", "metrics.jsonl")
    with open(metrics) as f:
        lines = f.read().splitlines()
    good = list(lines)
    lines[3] = re.sub(r'"loss": [^,}]+', '"loss": nan', lines[3])
    lines[4] = re.sub(r'"grad_norm": [^,}]+', '"grad_norm": -inf', lines[4])
    lines[5] = re.sub(r'"nll": [^,}]+', '"nll": null', lines[5])
    check(lines[3:6] != good[3:6], "the test must change lines 4-6")
    with open(metrics, "w") as f:
        f.write("\n".join(lines) + "\n" + lines[-1][:25])  # a last record cut short
    png = os.path.join(work, "curves_damaged.png")
    rc, out, err = run_status([sys.executable, script, runs, "--out", png])
    check(rc == 0, f"curves.py on nan / null / a cut last line: status {rc}, stderr {err}")
    check(f"metrics.jsonl:{len(lines) + 1}: skipping the last line" in err,
          f"a warning for the cut last line: {err!r}")
    check_png(png)
    last = json.loads(lines[-1])
    row = next((l.split() for l in out.splitlines() if l.split()[:2] == ["sft", "sft"]), None)
    check(row is not None and int(row[2]) == last["step"] and row[3] == f"{last['loss']:.4f}",
          f"the summary row of sft/sft is the last complete record: {row}")
    no_temporaries(work)

    def damaged(what, line_no, text, message):
        bad = list(good)
        bad[line_no - 1] = text
        with open(metrics, "wb") as f:
            f.write("\n".join(bad).encode("utf-8", "surrogateescape") + b"\n")
        expect_error(what, [sys.executable, script, runs, "--out", png], message)

    damaged("a bad line before the last", 7, good[6][:20], f"{metrics}:7: not a JSON object")
    damaged("a string step", 3, good[2].replace('"step": 3', '"step": "3"'),
            f"{metrics}:3: 'step' must be a non-negative integer, not '3'")
    damaged("non-UTF-8", 2, good[1].replace('"sft"', '"s\udce9ft"'), f"{metrics}:2: not UTF-8 text")
    with open(metrics, "w") as f:
        f.write("\n".join(good) + "\n")
    expect_error("unwritable --out", [sys.executable, script, runs, "--out",
                                      os.path.join(work, "no_such_dir", "c.png")],
                 "no_such_dir/c.png: cannot write")


def test_curves_same_run_names(analysis, demo, work):
    """Regression: two runs in folders of the same name (exp1/paft and exp2/paft, comparing two
    studies) were both labelled "paft": one colour, two legend entries and summary rows nobody
    could tell apart. Now such labels carry the parent folders that tell them apart."""
    for exp, source in (("exp1", "paft"), ("exp2", "sft")):
        shutil.copytree(os.path.join(demo, "runs", source), os.path.join(work, "same", exp, "paft"))
    png = os.path.join(work, "curves_same.png")
    out = run([sys.executable, os.path.join(analysis, "curves.py"),
               os.path.join(work, "same", "exp1", "paft"), os.path.join(work, "same", "exp2", "paft"),
               "--out", png], "curves.py")
    rows = sorted(tuple(l.split()[:2]) for l in out.splitlines()[1:] if "/" in l.split()[0])
    check(rows == [("exp1/paft", "dpo"), ("exp1/paft", "sft"), ("exp2/paft", "sft")],
          f"runs of the same folder name get the labels exp1/paft and exp2/paft:\n{out}")
    check_png(png)


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
    test_sparsity_errors(analysis, work, sft)
    with h5py.File(merged, "r") as f:
        for series, field in [("delta_sft + L1", "small_sft"), ("delta_pref", "small_pref")]:
            for row in (r for r in rows if r["series"] == series):
                name = next(n for n in f["stats"] if f".layers.{row['layer']}." in n and row["module"] in n)
                stored = int(f["stats"][name][()][field])
                check(abs(int(row["small"]) - stored) <= 1 and int(row["numel"]) == int(f["stats"][name][()]["numel"]),
                      f"{csv_path}: {series} layer {row['layer']} {row['module']}: {row['small']} of "
                      f"{row['numel']}, the merge counted {stored}")


def test_sparsity_errors(analysis, work, adapter):
    """An adapter without attribute r or a dataset B, and outputs that cannot be written: one line
    naming the file (they were a KeyError traceback and an OSError traceback)."""
    import h5py
    script = os.path.join(analysis, "sparsity.py")
    png = os.path.join(work, "sparsity_err.png")
    no_r, no_b = os.path.join(work, "no_r.h5"), os.path.join(work, "no_b.h5")
    shutil.copy(adapter, no_r)
    shutil.copy(adapter, no_b)
    with h5py.File(no_r, "r+") as f:
        del f.attrs["r"]
    with h5py.File(no_b, "r+") as f:
        module = sorted(f["lora"])[0]
        del f["lora"][module]["B"]
    expect_error("adapter without r", [sys.executable, script, "--sft", no_r, "--out", png],
                 f"{no_r}: no attribute r")
    expect_error("adapter without B", [sys.executable, script, "--sft", no_b, "--out", png],
                 f"{no_b}: /lora/{module}: no dataset B")
    nowhere = os.path.join(work, "no_such_dir")
    expect_error("unwritable --csv", [sys.executable, script, "--sft", adapter, "--out", png,
                                      "--csv", os.path.join(nowhere, "s.csv")], "s.csv: cannot write")
    expect_error("unwritable --out", [sys.executable, script, "--sft", adapter, "--out",
                                      os.path.join(nowhere, "s.png")], "s.png: cannot write")
    no_temporaries(work)


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
    no_temporaries(work)
    test_merge_table_errors(analysis, work, entries)


def test_merge_table_errors(analysis, work, entries):
    """Regression: a corrupt merged.h5 at an entry's path, a null or string value, NaN or no entry
    with --png, and an unwritable --out each gave a traceback (or, for NaN, a broken figure)."""
    script = os.path.join(analysis, "merge_table.py")
    results = os.path.join(work, "results_bad.json")

    def with_entries(rows):
        with open(results, "w") as f:
            json.dump(rows, f)

    corrupt = os.path.join(work, "corrupt-merged.h5")
    with open(corrupt, "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"garbage" * 20)
    with_entries([dict(entries[0], path=corrupt)])
    expect_error("corrupt merged.h5", [sys.executable, script, results], f"{corrupt}: cannot open as HDF5")
    with_entries([dict(entries[0], sft_nll=None)])
    expect_error("null sft_nll", [sys.executable, script, results], "entry 0 (base model): sft_nll is None, not a number")
    with_entries([dict(entries[0], pref_margin="0.5")])
    expect_error("string margin", [sys.executable, script, results], "pref_margin is '0.5', not a number")
    with_entries([dict(entries[0], sparsity_sft="high")])
    expect_error("string sparsity", [sys.executable, script, results], "sparsity_sft is 'high'")
    png = os.path.join(work, "tradeoff_nan.png")
    with_entries([dict(entries[0], sft_nll=float("nan"))] + entries[1:])
    rc, out, err = run_status([sys.executable, script, results, "--png", png])
    check(rc == 0 and "entry 0 (base model): sft_nll = nan; left out of the plot" in err,
          f"NaN with --png: status {rc}, stderr {err!r}")
    check_png(png)
    with_entries([dict(entries[0], sft_nll=float("nan"))])
    expect_error("only NaN with --png", [sys.executable, script, results, "--png", png], "nothing to plot")
    with_entries([])
    expect_error("empty list with --png", [sys.executable, script, results, "--png", png], "nothing to plot")
    with_entries(entries)
    expect_error("unwritable --out", [sys.executable, script, results, "--out",
                                      os.path.join(work, "no_such_dir", "t.md")], "t.md: cannot write")
    no_temporaries(work)


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
