"""Readers of paft's output files shared by the analysis scripts (curves, sparsity, merge_table).

The formats are described in docs/FILE_FORMATS.md; this module only reads them:
  - <stage>/metrics.jsonl    one JSON object per optimizer step
  - <stage>/adapter.h5       /lora/<module>/A [r][in], /lora/<module>/B [out][r], attributes r, alpha, rslora
  - merged.h5                /stats/<tensor>, a compound scalar with the merge's sparsity numbers
  - results.json             the demo's (and `paft eval`'s) list of evaluated models

Third-party packages are imported through require(), so that a missing one stops the script with
one line that says what to install rather than a traceback.
"""
import contextlib
import importlib
import json
import math
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


def warn(message):
    print(f"{os.path.basename(sys.argv[0])}: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def atomic_output(path):
    """Write an output file under a temporary name and rename it into place when complete:

        with atomic_output(args.out) as tmp:
            fig.savefig(tmp, format="png")

    A reader never sees half a file, and a failure leaves an earlier file at path as it was. An
    OSError (no such folder, not writable, disk full) stops the script with one line naming path;
    the temporary is removed whatever happens."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            fail(f"{path}: cannot write: {e.strerror or e}")
        raise


def write_text(path, text):
    """Write a text file atomically (see atomic_output)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


# --- metrics.jsonl -------------------------------------------------------------------------------

# A bare nan / inf token as a value (C's printf("%g") of a non-finite number, which older paft
# versions wrote for a skipped step): not JSON, read as the float it means.
_BARE_NONFINITE = re.compile(r"([:\[,]\s*)(-?)(nan|inf(?:inity)?)(?=\s*[,}\]])", re.IGNORECASE)


def _parse_metrics_line(text):
    """One line of metrics.jsonl as a dict, accepting bare nan/inf values; raises ValueError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        fixed = _BARE_NONFINITE.sub(
            lambda m: m.group(1) + ("NaN" if m.group(3).lower() == "nan"
                                    else m.group(2) + "Infinity"), text)
        if fixed == text:
            raise
        return json.loads(fixed)


def read_metrics(path):
    """The records of one metrics.jsonl, in file order (one dict per optimizer step).

    A value may be null (a metric the step did not produce: read as None, i.e. missing) or a bare
    nan / inf (what older paft versions wrote for a skipped non-finite step: read as float nan /
    inf). A last line that does not parse is the record a killed job was writing: it is skipped
    with a warning. Any other bad line is an error naming the file and line."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        fail(f"{path}: cannot read: {e.strerror or e}")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    records = []
    for i, (line_no, raw) in enumerate(numbered):
        try:
            record = _parse_metrics_line(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 text (byte {e.start}: {e.reason})"
        except json.JSONDecodeError as e:
            problem = f"not a JSON object ({e.msg})"
        else:
            problem = None
        if problem is not None:
            if i == len(numbered) - 1:
                warn(f"{path}:{line_no}: skipping the last line, {problem}: a record cut short "
                     "(the job was stopped while writing it?)")
                break
            fail(f"{path}:{line_no}: {problem}")
        if not isinstance(record, dict) or "step" not in record or "stage" not in record:
            fail(f"{path}:{line_no}: expected an object with 'stage' and 'step'")
        step, stage = record["step"], record["stage"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            fail(f"{path}:{line_no}: 'step' must be a non-negative integer, not {step!r}")
        if not isinstance(stage, str):
            fail(f"{path}:{line_no}: 'stage' must be a string, not {stage!r}")
        records.append(record)
    return records


def is_finite_number(value):
    """True for an int or float that is finite (not None, nan, inf, a bool or a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def find_metrics(run_dirs):
    """Every metrics.jsonl under the given directories, as (run label, path) pairs, sorted.

    The layout is <run>/<stage>/metrics.jsonl, so the label is the name of the folder that holds
    the stage folder: runs/paft/sft/metrics.jsonl is labelled "paft". A directory given directly
    as a stage folder (one holding metrics.jsonl) still gets its run folder's name. Two run folders
    of the same name are labelled with their parents too (run_labels)."""
    found = []
    for top in run_dirs:
        if not os.path.isdir(top):
            fail(f"{top}: not a directory")
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            if "metrics.jsonl" in filenames:
                path = os.path.join(dirpath, "metrics.jsonl")
                found.append((os.path.dirname(os.path.abspath(dirpath)), path))
    labels = run_labels({run_dir for run_dir, _ in found})
    return sorted((labels[run_dir], path) for run_dir, path in found)


def run_labels(run_dirs):
    """{run folder: label}: the folder's name, or, where two different folders have the same
    name (a/paft and b/paft), as many of its last path components as tell them apart ("a/paft",
    "b/paft"): one label must not stand for two runs (one colour, one legend entry)."""
    parts = {d: d.strip(os.sep).split(os.sep) for d in run_dirs}
    labels = {}
    for d, p in parts.items():
        n = 1
        while n < len(p) and any(q != p and q[-n:] == p[-n:] for q in parts.values()):
            n += 1
        labels[d] = "/".join(p[-n:])
    return labels


# --- adapter.h5 ----------------------------------------------------------------------------------

def module_position(name):
    """(layer, projection) of an HF module path such as model.layers.3.self_attn.q_proj
    (a trailing ".weight", as in merged.h5's /stats names, is ignored); None for other names."""
    m = re.search(r"layers\.(\d+)\.(?:[A-Za-z_]+\.)*?([a-z_]+_proj)(?:\.weight)?$", name)
    if not m or m.group(2) not in PROJECTIONS:
        return None
    return int(m.group(1)), m.group(2)


def open_h5(path):
    """h5py.File(path, "r"), or one line naming the file when it is missing or not HDF5."""
    (h5py,) = require("h5py")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot open as HDF5 ({e})")


def adapter_scale(attrs, path="adapter.h5"):
    """LoRA's scale s of delta = s B A: alpha / r, or alpha / sqrt(r) for rslora."""
    missing = [k for k in ("r", "alpha") if k not in attrs]
    if missing:
        fail(f"{path}: no attribute {' or '.join(missing)} on the root group (expected a paft "
             "adapter.h5)")
    try:
        r = int(attrs["r"])
        alpha = float(attrs["alpha"])
        rslora = int(attrs.get("rslora", 0))
    except (TypeError, ValueError) as e:
        fail(f"{path}: attributes r, alpha, rslora must be numbers ({e})")
    if r <= 0 or not math.isfinite(alpha):
        fail(f"{path}: attribute r = {r} must be positive and alpha = {alpha} finite")
    return alpha / r ** 0.5 if rslora else alpha / r


def adapter_sparsity(path):
    """Per-module sparsity of an adapter's delta: {(layer, proj): (small, numel)}.

    delta = s B A is formed in fp32 like paft does (src/io/adapter.c), so that the counts of
    |delta| < 1e-5 agree with `paft inspect` element for element in practice."""
    np, h5py = require("numpy", "h5py")
    counts = {}
    f = open_h5(path)
    with f:
        if "lora" not in f:
            fail(f"{path}: no /lora group (expected a paft adapter.h5)")
        scale = np.float32(adapter_scale(f.attrs, path))
        for module in f["lora"]:
            where = module_position(module)
            if where is None:
                fail(f"{path}: /lora/{module}: not a model.layers.<i>.<...>.<proj> module name")
            group = f["lora"][module]
            missing = [k for k in ("A", "B")
                       if not isinstance(group, h5py.Group) or not isinstance(group.get(k), h5py.Dataset)]
            if missing:
                fail(f"{path}: /lora/{module}: no dataset {' or '.join(missing)} (expected A [r][in] "
                     "and B [out][r])")
            try:
                A = group["A"][()].astype(np.float32)  # [r][in]
                B = group["B"][()].astype(np.float32)  # [out][r]
            except (OSError, TypeError, ValueError) as e:
                fail(f"{path}: /lora/{module}: cannot read A and B as numbers ({e})")
            if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
                fail(f"{path}: /lora/{module}: A {A.shape} and B {B.shape} do not share the rank")
            delta = scale * (B @ A)
            counts[where] = (int(np.count_nonzero(np.abs(delta) < SPARSITY_THRESHOLD)), delta.size)
    return counts


def merged_sparsity(path, field="sparsity_merged"):
    """Per-module sparsity that `paft merge` recorded in merged.h5's /stats: {(layer, proj): (small, numel)}.

    field is sparsity_merged (the merged delta), sparsity_sft or sparsity_pref; the count is the
    matching small_* field, so that overall numbers can be weighted by element."""
    small_field = field.replace("sparsity_", "small_")
    counts = {}
    f = open_h5(path)
    with f:
        if "stats" not in f:
            fail(f"{path}: no /stats group (expected a paft merged.h5)")
        for tensor in f["stats"]:
            where = module_position(tensor)
            if where is None:
                fail(f"{path}: /stats/{tensor}: not a model.layers.<i>.<...>.<proj>.weight name")
            try:
                row = f["stats"][tensor][()]
            except (OSError, TypeError, AttributeError) as e:
                fail(f"{path}: /stats/{tensor}: cannot read ({e})")
            names = getattr(getattr(row, "dtype", None), "names", None) or ()
            for name in (small_field, "numel"):
                if name not in names:
                    fail(f"{path}: /stats/{tensor} has no field {name}")
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
