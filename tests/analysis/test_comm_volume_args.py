#!/usr/bin/env python3
"""analysis/comm_volume.py's argument checks (the formulas themselves are checked against a
measurement by tests/parallel/test_comm_volume.sh): a model and layout paft would refuse is an
error with one line, not a traceback (--hidden without --heads divided by zero) or a wrong number
(a --tp that does not divide the heads rounded the shard sizes down).

    usage: test_comm_volume_args.py SCRIPT
"""
import subprocess
import sys

from checks import check, finish

script = sys.argv[1]


def run(*args):
    p = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


# The layout of tests/parallel/test_comm_volume.sh: still accepted, same numbers as before.
GOOD = ["--hidden", 32, "--layers", 2, "--ffn", 64, "--heads", 4, "--kv-heads", 2, "--vocab", 64,
        "--r", 4, "--tp", 2, "--dp", 2, "--batch", 8, "--micro-batch", 2, "--seq", 13]
rc, out, err = run(*GOOD, "--stage", "sft")
check(rc == 0 and out.split() == ["78112", "11792"], f"good layout: {rc} {out!r} {err!r}")
rc, out, err = run()
check(rc == 0 and "| llama-70b | dpo | 8 x 2 |" in out, f"the default table: {rc} {err!r}")


def expect_error(what, args, message):
    rc, out, err = run(*args)
    check(rc == 2 and message in err and "Traceback" not in err and not out,
          f"{what}: status {rc}, stdout {out!r}, stderr {err!r} (wanted {message!r})")


def with_(**changes):
    args = list(GOOD)
    for name, value in changes.items():
        args[args.index("--" + name.replace("_", "-")) + 1] = value
    return args


expect_error("--hidden alone", ["--hidden", 32], "--layers must be positive, not 0")
expect_error("--hidden without --heads",
             GOOD[:6] + GOOD[8:], "--heads must be positive, not 0")
expect_error("--tp not dividing the heads", with_(tp=3, dp=1, batch=6), "--tp 3 does not divide --heads 4")
expect_error("--tp not dividing the KV heads", with_(tp=4, dp=1), "--tp 4 does not divide --kv-heads 2")
expect_error("--tp not dividing ffn", with_(ffn=63), "--tp 2 does not divide --ffn 63")
expect_error("--tp not dividing vocab", with_(vocab=65), "--tp 2 does not divide --vocab 65")
expect_error("hidden not heads x head_dim", with_(hidden=30), "--hidden 30 is not a multiple of --heads 4")
expect_error("batch not a multiple", with_(batch=6), "--batch 6 is not a multiple of --dp 2 x --micro-batch 2")
expect_error("model sizes without --hidden", ["--heads", 4], "--heads describes a model")

finish()
