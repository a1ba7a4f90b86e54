#!/usr/bin/env python3
"""Open LLM Leaderboard (v1) table from lm-eval-harness result files.

    leaderboard_table.py [--out FILE.md] [--json FILE.json] [NAME=]DIR ...

Each DIR holds one model's lm-eval-harness output (searched recursively for JSON files with a
"results" object: lm_eval writes one per run, and jobs/eval-leaderboard.sbatch runs one per task).
The table has one row per model and the six tasks of the leaderboard's first version, scored the
way it scored them, plus their mean:

    column      lm-eval task     shots  metric
    ARC         arc_challenge    25     acc_norm
    HellaSwag   hellaswag        10     acc_norm
    MMLU        mmlu_* (57)      5      acc, the unweighted mean over the 57 subjects
    TruthfulQA  truthfulqa_mc2   0      acc (the mc2 score)
    Winogrande  winogrande       5      acc
    GSM8K       gsm8k            5      exact_match of the "strict-match" filter (the answer
                                        after "####", as the leaderboard's harness read it;
                                        "flexible-extract" takes the last number and scores higher)

MMLU: lm-eval's own "mmlu" group score weights the subjects by their number of questions; the
leaderboard averaged the 57 subject accuracies, so this script does too, from the subject rows,
and requires all 57. A task run with another few-shot count than the leaderboard's is an error
(when the file records it). A task without results is shown as "-" and leaves the average empty.
When a task appears in several files of one model, the newest run (its "date", else the file's
modification time) counts. Folders whose name ends in ".tmp" (lm_eval/<task>.tmp/: a run still
being written, or interrupted) are skipped. A score that is not a finite number is an error, so
--json always writes valid JSON; --out and --json are written under a temporary name and renamed
into place. Standard library only.
"""
import argparse
import json
import math
import os
import sys

# (column, lm-eval task, metric, filter, few-shot count)
TASKS = [
    ("ARC", "arc_challenge", "acc_norm", "none", 25),
    ("HellaSwag", "hellaswag", "acc_norm", "none", 10),
    ("MMLU", "mmlu", "acc", "none", 5),
    ("TruthfulQA", "truthfulqa_mc2", "acc", "none", 0),
    ("Winogrande", "winogrande", "acc", "none", 5),
    ("GSM8K", "gsm8k", "exact_match", "strict-match", 5),
]

MMLU_SUBJECTS = """
abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology
college_chemistry college_computer_science college_mathematics college_medicine college_physics
computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics
formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science
high_school_european_history high_school_geography high_school_government_and_politics
high_school_macroeconomics high_school_mathematics high_school_microeconomics high_school_physics
high_school_psychology high_school_statistics high_school_us_history high_school_world_history
human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning
management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition
philosophy prehistory professional_accounting professional_law professional_medicine
professional_psychology public_relations security_studies sociology us_foreign_policy virology
world_religions
""".split()
assert len(MMLU_SUBJECTS) == 57


class TableError(Exception):
    pass


def metric_value(row, metric, filt, where):
    """A metric from one task's row: lm-eval 0.4 keys "metric,filter"; older ones "metric"."""
    for key in (f"{metric},{filt}", metric if filt == "none" else None):
        if key and key in row:
            value = row[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TableError(f"{where}: {key} is {value!r}, not a number")
            if not math.isfinite(value):
                raise TableError(f"{where}: {key} is {value}, not a finite score (a failed or "
                                 "interrupted evaluation? run the task again)")
            return float(value)
    raise TableError(f"{where}: no '{metric},{filt}' score (keys: {', '.join(sorted(row))})")


def shots_recorded(doc, task):
    """The few-shot count a result file records for a task, or None when it does not say."""
    n_shot = doc.get("n-shot") or {}
    if task in n_shot:
        return n_shot[task]
    config = (doc.get("configs") or {}).get(task) or {}
    return config.get("num_fewshot")


def result_files(directory):
    """(time, path, document) of every lm-eval result file under directory, oldest first."""
    found = []
    for root, dirs, names in os.walk(directory):
        # lm_eval/<task>.tmp/ (and any *.tmp) is a run still being written, or one that was
        # interrupted: its files are not results yet.
        dirs[:] = sorted(d for d in dirs if not d.endswith(".tmp"))
        for name in names:
            if not name.endswith(".json") or ".tmp" in name:
                continue
            path = os.path.join(root, name)
            try:
                with open(path, encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
                raise TableError(f"{path}: cannot read it as JSON ({e})")
            if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
                continue  # another JSON file (samples, configuration)
            when = doc.get("date")
            if not isinstance(when, (int, float)):
                when = os.path.getmtime(path)
            found.append((when, path, doc))
    return sorted(found, key=lambda t: (t[0], t[1]))


def model_scores(directory):
    """{column: score} for one model (missing tasks absent)."""
    if not os.path.isdir(directory):
        raise TableError(f"{directory}: no such directory")
    rows = {}  # lm-eval task -> (row, file, document): the newest wins
    for _, path, doc in result_files(directory):
        for task, row in doc["results"].items():
            if isinstance(row, dict):
                rows[task] = (row, path, doc)
    scores = {}
    for column, task, metric, filt, shots in TASKS:
        if task == "mmlu":
            subjects = [f"mmlu_{s}" for s in MMLU_SUBJECTS]
            present = [s for s in subjects if s in rows]
            if not present:
                continue
            missing = [s for s in subjects if s not in rows]
            if missing:
                raise TableError(f"{directory}: MMLU has {len(present)} of the 57 subjects "
                                 f"(missing {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
            values = []
            for s in subjects:
                row, path, doc = rows[s]
                check_shots(doc, s, shots, path)
                values.append(metric_value(row, metric, filt, f"{path}: {s}"))
            scores[column] = sum(values) / len(values)
        elif task in rows:
            row, path, doc = rows[task]
            check_shots(doc, task, shots, path)
            scores[column] = metric_value(row, metric, filt, f"{path}: {task}")
    return scores


def check_shots(doc, task, shots, path):
    recorded = shots_recorded(doc, task)
    if recorded is not None and int(recorded) != shots:
        raise TableError(f"{path}: {task} ran {recorded}-shot; the Open LLM Leaderboard v1 "
                         f"uses {shots}-shot")


def average(scores):
    if len(scores) != len(TASKS):
        return None
    return sum(scores[c] for c, *_ in TASKS) / len(TASKS)


def markdown(table):
    header = ["model"] + [f"{c} ({shots})" for c, _, _, _, shots in TASKS] + ["Average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, scores in table:
        cells = [f"{scores[c]:.4f}" if c in scores else "-" for c, *_ in TASKS]
        avg = average(scores)
        cells.append(f"{avg:.4f}" if avg is not None else "-")
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path, text):
    """Write path under a temporary name, then rename it into place: a reader never sees half a
    file and a failure leaves an earlier file as it was. Raises TableError naming path."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise TableError(f"{path}: cannot write: {e.strerror or e}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="[NAME=]DIR",
                   help="a model's lm-eval output folder (NAME defaults to the folder's name)")
    p.add_argument("--out", help="write the markdown table here (it is printed in any case)")
    p.add_argument("--json", help="write {model: {column: score, 'Average': mean}} here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    table = []
    try:
        for spec in args.models:
            name, directory = spec.split("=", 1) if "=" in spec else ("", spec)
            name = name or os.path.basename(os.path.normpath(directory))
            table.append((name, model_scores(directory)))
        text = markdown(table)
        sys.stdout.write(text)
        if args.out:
            write_atomic(args.out, text)
        if args.json:
            doc = {name: {**scores, "Average": average(scores)} for name, scores in table}
            write_atomic(args.json, json.dumps(doc, indent=2, allow_nan=False))
    except TableError as e:
        print(f"leaderboard_table.py: error: {e}", file=sys.stderr)
        return 1
    for name, scores in table:
        missing = [c for c, *_ in TASKS if c not in scores]
        if missing:
            print(f"leaderboard_table.py: note: {name} has no results for {', '.join(missing)}",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
