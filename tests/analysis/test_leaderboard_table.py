#!/usr/bin/env python3
"""analysis/leaderboard_table.py on fake lm-eval-harness result files with hand-chosen scores:
the leaderboard's metric per task (acc_norm vs acc, strict-match vs flexible-extract), MMLU as the
unweighted mean of its 57 subjects (not lm-eval's size-weighted group score), the newest of two
runs of a task, the older key format, a missing task, lm_eval/<task>.tmp/ folders skipped, and the
errors (wrong few-shot count, an incomplete MMLU, a missing metric, a missing folder, a non-finite
score, an output that cannot be written).

    usage: test_leaderboard_table.py SCRIPT WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys

from checks import check, finish

script, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)


def write(path, results, n_shot=None, date=None):
    """One lm-eval 0.4-style result file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    doc = {"results": results, "versions": {}, "config": {"model": "hf"}}
    if n_shot is not None:
        doc["n-shot"] = n_shot
    if date is not None:
        doc["date"] = date
    with open(path, "w") as f:
        json.dump(doc, f)


def run(*args):
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


SUBJECTS = """abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology
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
world_religions""".split()


def mmlu_results(skip=None):
    """Subject k scores 0.5 + 0.01 * (k mod 5); the group rows carry decoys (lm-eval's weighted
    mean, category means) that must not be used."""
    results = {"mmlu": {"acc,none": 0.70, "alias": "mmlu"},
               "mmlu_humanities": {"acc,none": 0.66, "alias": " - humanities"},
               "mmlu_stem": {"acc,none": 0.61, "alias": " - stem"}}
    n_shot = {"mmlu": 0}
    for k, s in enumerate(SUBJECTS):
        if s == skip:
            continue
        results[f"mmlu_{s}"] = {"acc,none": 0.5 + 0.01 * (k % 5), "acc_stderr,none": 0.04,
                                "alias": f"  - {s}"}
        n_shot[f"mmlu_{s}"] = 5
    return results, n_shot


# ---- model "paft": one folder per task, as jobs/eval-leaderboard.sbatch lays them out ----------
paft = os.path.join(work, "paft", "lm_eval")
write(f"{paft}/arc/m/results_2024-01-01T00-00-00.json",
      {"arc_challenge": {"acc,none": 0.40, "acc_norm,none": 0.50}}, {"arc_challenge": 25}, 1000.0)
write(f"{paft}/arc/m/results_2024-01-02T00-00-00.json",  # newer run: this one counts
      {"arc_challenge": {"acc,none": 0.59, "acc_norm,none": 0.6172}}, {"arc_challenge": 25}, 2000.0)
write(f"{paft}/hellaswag/m/results.json",
      {"hellaswag": {"acc,none": 0.63, "acc_norm,none": 0.8412}}, {"hellaswag": 10})
write(f"{paft}/mmlu/m/results.json", *mmlu_results())
write(f"{paft}/truthfulqa/m/results.json",
      {"truthfulqa_mc2": {"acc,none": 0.4521}}, {"truthfulqa_mc2": 0})
write(f"{paft}/winogrande/m/results.json",
      {"winogrande": {"acc,none": 0.7790}}, {"winogrande": 5})
write(f"{paft}/gsm8k/m/results.json",
      {"gsm8k": {"exact_match,strict-match": 0.3730, "exact_match,flexible-extract": 0.4010}},
      {"gsm8k": 5})
with open(f"{paft}/gsm8k/m/samples_gsm8k.json", "w") as f:  # not a result file: ignored
    json.dump([{"doc_id": 0}], f)

mmlu = 0.5 + 0.01 * (11 * (0 + 1 + 2 + 3 + 4) + 0 + 1) / 57  # 57 = 11 cycles of 5, then 0, 1
average = (0.6172 + 0.8412 + mmlu + 0.4521 + 0.7790 + 0.3730) / 6

# ---- model "base": the older key format (no ",filter"), one file, no GSM8K ----------------------
base = os.path.join(work, "base")
mmlu_old, _ = mmlu_results()
mmlu_old = {k: {"acc": v["acc,none"]} for k, v in mmlu_old.items()}
write(f"{base}/results.json", {"arc_challenge": {"acc_norm": 0.55}, "hellaswag": {"acc_norm": 0.80},
                               "truthfulqa_mc2": {"acc": 0.42}, "winogrande": {"acc": 0.75},
                               **mmlu_old})

# Regression: lm_eval/<task>.tmp/ holds a run being written or one that was interrupted (a newer
# date, a half-written file): skipped, not read (it used to count, or to fail the whole table).
write(f"{paft}/arc.tmp/m/results_2024-01-03T00-00-00.json",
      {"arc_challenge": {"acc,none": 0.11, "acc_norm,none": 0.12}}, {"arc_challenge": 25}, 3000.0)
os.makedirs(f"{paft}/hellaswag.tmp/m")
with open(f"{paft}/hellaswag.tmp/m/results.json", "w") as f:
    f.write('{"results": {"hellaswag": {"acc_norm,none": 0.')

# An earlier table, to be replaced whole (the new file appears by rename, no temporary is left).
with open(f"{work}/table.md", "w") as f:
    f.write("old table\n")
rc, out, err = run("--json", f"{work}/table.json", "--out", f"{work}/table.md",
                   f"paft={paft}", base)
check(not [n for n in os.listdir(work) if ".tmp." in n], f"temporary files left: {os.listdir(work)}")
check(rc == 0, f"status {rc}: {err}")
table = json.load(open(f"{work}/table.json"))
p = table["paft"]
check(abs(p["ARC"] - 0.6172) < 1e-12, f"ARC: the newest run's acc_norm, got {p['ARC']}")
check(abs(p["HellaSwag"] - 0.8412) < 1e-12, f"HellaSwag acc_norm, got {p['HellaSwag']}")
check(abs(p["MMLU"] - mmlu) < 1e-12, f"MMLU: mean of 57 subjects {mmlu}, got {p['MMLU']}")
check(abs(p["TruthfulQA"] - 0.4521) < 1e-12, f"TruthfulQA mc2, got {p['TruthfulQA']}")
check(abs(p["Winogrande"] - 0.7790) < 1e-12, f"Winogrande acc, got {p['Winogrande']}")
check(abs(p["GSM8K"] - 0.3730) < 1e-12, f"GSM8K strict-match, got {p['GSM8K']}")
check(abs(p["Average"] - average) < 1e-12, f"average {average}, got {p['Average']}")
b = table["base"]
check(abs(b["ARC"] - 0.55) < 1e-12 and abs(b["MMLU"] - mmlu) < 1e-12, f"old keys: {b}")
check("GSM8K" not in b and b["Average"] is None, f"base has no GSM8K, so no average: {b}")
row = (f"| paft | 0.6172 | 0.8412 | {mmlu:.4f} | 0.4521 | 0.7790 | 0.3730 | {average:.4f} |")
check(row in out, f"markdown row {row!r} not in:\n{out}")
check("| base | 0.5500 | 0.8000 | " in out and out.rstrip().endswith("| - | - |"),
      f"base row with '-' for GSM8K and the average:\n{out}")
check(open(f"{work}/table.md").read() == out, "--out writes the printed table")
check(out.startswith("| model | ARC (25) | HellaSwag (10) | MMLU (5) | TruthfulQA (0) | "
                     "Winogrande (5) | GSM8K (5) | Average |"), f"header:\n{out}")
check("base has no results for GSM8K" in err, f"a note for the missing task: {err}")

# ---- errors ------------------------------------------------------------------------------------
def expect_error(name, args, message):
    rc, out, err = run(*args)
    check(rc == 1 and message in err, f"{name}: status {rc}, stderr {err!r} (wanted {message!r})")


bad = os.path.join(work, "bad_shots")
write(f"{bad}/results.json", {"arc_challenge": {"acc_norm,none": 0.6}}, {"arc_challenge": 0})
expect_error("wrong few-shot count", [bad],
             "arc_challenge ran 0-shot; the Open LLM Leaderboard v1 uses 25-shot")

bad = os.path.join(work, "bad_mmlu")
write(f"{bad}/results.json", *mmlu_results(skip="virology"))
expect_error("incomplete MMLU", [bad], "MMLU has 56 of the 57 subjects (missing mmlu_virology)")

bad = os.path.join(work, "bad_gsm8k")
write(f"{bad}/results.json", {"gsm8k": {"exact_match,flexible-extract": 0.4}}, {"gsm8k": 5})
expect_error("no strict-match", [bad], "no 'exact_match,strict-match' score")

expect_error("missing folder", [os.path.join(work, "nowhere")], "nowhere: no such directory")

# A non-finite score (json.dump writes NaN): an error naming it, not a results.json with NaN in it
# (invalid JSON) or a table of nan.
bad = os.path.join(work, "bad_nan")
write(f"{bad}/results.json", {"arc_challenge": {"acc_norm,none": float("nan")}}, {"arc_challenge": 25})
expect_error("NaN score", ["--json", f"{work}/nan.json", bad],
             "arc_challenge: acc_norm,none is nan, not a finite score")
check(not os.path.exists(f"{work}/nan.json"), "no --json file for a table with an error")

# Outputs that cannot be written: one line naming the file, status 1, no traceback.
for option in ("--out", "--json"):
    target = os.path.join(work, "no_such_dir", "table.out")
    rc, out, err = run(option, target, base)
    check(rc == 1 and f"{target}: cannot write" in err and "Traceback" not in err,
          f"unwritable {option}: status {rc}, stderr {err!r}")

finish()
