"""Readers of paft's output files shared by the analysis scripts (curves, sparsity, merge_table).

The formats are described in docs/FILE_FORMATS.md; this module only reads them:
  - <stage>/metrics.jsonl    one JSON object per optimizer step
  - <stage>/adapter.h5       /lora/<module>/A [r][in], /lora/<module>/B [out][r], attributes r, alpha, rslora
  - merged.h5                /stats/<tensor>, a compound scalar with the merge's sparsity numbers
  - results.json             the demo's (and `paft eval`'s) list of evaluated models

Third-party packages are imported through require(), so that a missing one stops the script with
one line that says what to install rather than a traceback.
"""
import importlib
import json
import os
import re
import sys

# The paper's Figure 2 measure, as in src/loss/lora_delta.h: an element is "zero" when |delta| < 1e-5.
SPARSITY_THRESHOLD = 1e-5

# The projections a LoRA adapter may target, in the order `paft inspect` prints them.
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def require(*names):
    """Import the named packages, or exit 1 naming the ones that are missing.

    matplotlib is switched to the Agg backend before pyplot is imported: the scripts only write
    PNG files and must run without a display (CI, cluster nodes)."""
    missing = []
    modules = []
    for name in names:
        if name == "matplotlib":
            os.environ.setdefault("MPLBACKEND", "Agg")
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: missing Python package(s) "
                 f"{', '.join(missing)} (pip install numpy h5py matplotlib)")
    if "matplotlib" in names:
        modules[names.index("matplotlib")].use("Agg")
    return modules


def fail(message):
    """Stop with an error message that names the file and the problem (like paft's PAFT_FATAL)."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: error: {message}")


# --- metrics.jsonl -------------------------------------------------------------------------------

def read_metrics(path):
    """The records of one metrics.jsonl, in file order (one dict per optimizer step)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{line_no}: not a JSON object ({e.msg})")
            if not isinstance(record, dict) or "step" not in record or "stage" not in record:
                fail(f"{path}:{line_no}: expected an object with 'stage' and 'step'")
            records.append(record)
    return records


def find_metrics(run_dirs):
    """Every metrics.jsonl under the given directories, as (run label, path) pairs, sorted.

    The layout is <run>/<stage>/metrics.jsonl, so the label is the name of the folder that holds
    the stage folder: runs/paft/sft/metrics.jsonl is labelled "paft". A directory given directly
    as a stage folder (one holding metrics.jsonl) still gets its run folder's name."""
    found = []
    for top in run_dirs:
        if not os.path.isdir(top):
            fail(f"{top}: not a directory")
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            if "metrics.jsonl" in filenames:
                path = os.path.join(dirpath, "metrics.jsonl")
                run = os.path.basename(os.path.dirname(os.path.abspath(dirpath)))
                found.append((run, path))
    return sorted(found)


# --- adapter.h5 ----------------------------------------------------------------------------------

def module_position(name):
    """(layer, projection) of an HF module path such as model.layers.3.self_attn.q_proj
    (a trailing ".weight", as in merged.h5's /stats names, is ignored); None for other names."""
    m = re.search(r"layers\.(\d+)\.(?:[A-Za-z_]+\.)*?([a-z_]+_proj)(?:\.weight)?$", name)
    if not m or m.group(2) not in PROJECTIONS:
        return None
    return int(m.group(1)), m.group(2)


def adapter_scale(attrs):
    """LoRA's scale s of delta = s B A: alpha / r, or alpha / sqrt(r) for rslora."""
    r = int(attrs["r"])
    alpha = float(attrs["alpha"])
    return alpha / r ** 0.5 if int(attrs.get("rslora", 0)) else alpha / r


def adapter_sparsity(path):
    """Per-module sparsity of an adapter's delta: {(layer, proj): (small, numel)}.

    delta = s B A is formed in fp32 like paft does (src/io/adapter.c), so that the counts of
    |delta| < 1e-5 agree with `paft inspect` element for element in practice."""
    np, h5py = require("numpy", "h5py")
    counts = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        fail(f"{path}: cannot open as HDF5 ({e})")
    with f:
        if "lora" not in f:
            fail(f"{path}: no /lora group (expected a paft adapter.h5)")
        scale = np.float32(adapter_scale(f.attrs))
        for module in f["lora"]:
            where = module_position(module)
            if where is None:
                fail(f"{path}: /lora/{module}: not a model.layers.<i>.<...>.<proj> module name")
            A = f["lora"][module]["A"][()].astype(np.float32)  # [r][in]
            B = f["lora"][module]["B"][()].astype(np.float32)  # [out][r]
            if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
                fail(f"{path}: /lora/{module}: A {A.shape} and B {B.shape} do not share the rank")
            delta = scale * (B @ A)
            counts[where] = (int(np.count_nonzero(np.abs(delta) < SPARSITY_THRESHOLD)), delta.size)
    return counts


def merged_sparsity(path, field="sparsity_merged"):
    """Per-module sparsity that `paft merge` recorded in merged.h5's /stats: {(layer, proj): (small, numel)}.

    field is sparsity_merged (the merged delta), sparsity_sft or sparsity_pref; the count is the
    matching small_* field, so that overall numbers can be weighted by element."""
    (h5py,) = require("h5py")
    small_field = field.replace("sparsity_", "small_")
    counts = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        fail(f"{path}: cannot open as HDF5 ({e})")
    with f:
        if "stats" not in f:
            fail(f"{path}: no /stats group (expected a paft merged.h5)")
        for tensor in f["stats"]:
            where = module_position(tensor)
            if where is None:
                fail(f"{path}: /stats/{tensor}: not a model.layers.<i>.<...>.<proj>.weight name")
            row = f["stats"][tensor][()]
            if small_field not in row.dtype.names:
                fail(f"{path}: /stats/{tensor} has no field {small_field}")
            counts[where] = (int(row[small_field]), int(row["numel"]))
    return counts


# --- results.json --------------------------------------------------------------------------------

RESULT_FIELDS = ["model", "sft_nll", "pref_accuracy", "pref_margin", "sparsity_sft", "sparsity_pref"]


def read_results(path):
    """The list of evaluated models of results.json, each checked to have RESULT_FIELDS."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: cannot read as JSON ({e})")
    if not isinstance(rows, list):
        fail(f"{path}: expected a JSON list of models")
    for i, row in enumerate(rows):
        missing = [k for k in RESULT_FIELDS if not isinstance(row, dict) or k not in row]
        if missing:
            fail(f"{path}: entry {i} lacks {', '.join(missing)}")
    return rows
