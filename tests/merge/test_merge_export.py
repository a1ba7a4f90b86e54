#!/usr/bin/env python3
"""test_merge_export.py - `paft export MERGED.h5 OUTDIR` against the merged file, read back with a
pure-python safetensors reader (stage_files.py) and with paft's own reader (`paft inspect`).

usage: test_merge_export.py --paft PATH/paft --inputs DIR (make_merge_inputs' output) --workdir DIR
       [--mpiexec PATH]

Checks, on a bf16 merge (llama set: tokenizer files beside the base) and an fp32 merge (qwen set:
tied embeddings, biases, none):
  - one shard: model.safetensors, no index; every tensor BF16 at the merged dataset's shape with
    the merged file's bits (bf16), or numpy's round-to-nearest-even of its fp32 values;
    __metadata__ {"format": "pt"}; the header padded to 8 bytes; tensors back to back;
  - max_shard_size=20KB: model-0000i-of-0000N.safetensors (N > 2) and model.safetensors.index.json
    whose weight_map names every tensor's shard and whose total_size is the data size; no shard
    over the limit unless it holds one tensor; the same values;
  - under mpirun -np 3 (the ranks write the shards in turn): every file identical to one rank's;
  - config.json = the base's config.json; tokenizer_config.json and generation_config.json
    copied byte for byte; `paft inspect OUTDIR` reads the export (parameter count).
Needs numpy and h5py.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import stage_files  # noqa: E402

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
        print("FAIL", message)


def run(cmd, env=None):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        print(res.stdout, res.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed")
    return res.stdout


def merged_bits(path):
    """{name: uint16 bf16 bits the export must hold} from the merged file."""
    out = {}
    with h5py.File(path, "r") as f:
        for name, ds in f["weights"].items():
            if stage_files.is_paft_bf16(ds):
                out[name] = stage_files.bf16_bits(ds)
            else:
                out[name] = stage_files.f32_to_bf16(ds[()])
    return out


def check_layout(path, limit=None):
    """The safetensors layout rules: padded header, format pt, tensors back to back."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    check((8 + hlen) % 8 == 0, f"{path}: header not padded to 8 bytes")
    check(header.get("__metadata__") == {"format": "pt"}, f"{path}: __metadata__")
    spans = sorted(tuple(e["data_offsets"]) for k, e in header.items() if k != "__metadata__")
    check(spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and
          spans[-1][1] == len(data) - 8 - hlen, f"{path}: tensors not back to back")
    if limit is not None and len(spans) > 1:
        check(spans[-1][1] <= limit, f"{path}: {spans[-1][1]} bytes of data, limit {limit}")
    return len(spans)


def check_export(paft, merged, model_dir, outdir, shard_limit=None, label=""):
    values, bits, files = stage_files.read_model_dir(outdir)
    want = merged_bits(merged)
    check(sorted(bits) == sorted(want) and sorted(values) == sorted(want),
          f"{label}: exported tensors {sorted(bits)} != merged {sorted(want)}")
    for name, b in want.items():
        got = bits.get(name)
        check(got is not None and got.shape == b.shape and np.array_equal(got, b),
              f"{label}: {name} differs from the merged file")
    index = os.path.join(outdir, "model.safetensors.index.json")
    if shard_limit is None:
        check(files == ["model.safetensors"] and not os.path.exists(index), f"{label}: one file")
        check_layout(os.path.join(outdir, "model.safetensors"))
    else:
        n = len(files)
        check(n > 2 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)],
              f"{label}: shard names {files}")
        with open(index) as f:
            idx = json.load(f)
        check(sorted(idx["weight_map"]) == sorted(want), f"{label}: index weight_map keys")
        check(idx["metadata"]["total_size"] == sum(b.size * 2 for b in want.values()),
              f"{label}: index total_size")
        for shard in files:
            header, _, _ = stage_files.read_safetensors(os.path.join(outdir, shard))
            names = [k for k in header if k != "__metadata__"]
            check(all(idx["weight_map"][k] == shard for k in names), f"{label}: index vs {shard}")
            check_layout(os.path.join(outdir, shard), shard_limit)
    with open(os.path.join(model_dir, "config.json")) as a, open(os.path.join(outdir, "config.json")) as b:
        check(a.read() == b.read(), f"{label}: config.json is not the base's")
    for name in ("tokenizer_config.json", "generation_config.json", "tokenizer.json"):
        src, dst = os.path.join(model_dir, name), os.path.join(outdir, name)
        if os.path.exists(src):
            check(os.path.exists(dst) and open(src, "rb").read() == open(dst, "rb").read(),
                  f"{label}: {name} not copied")
        else:
            check(not os.path.exists(dst), f"{label}: {name} appeared from nowhere")
    # paft's own reader validates the directory (index, shards, every header) and counts
    text = run([paft, "inspect", outdir])
    count = sum(b.size for b in want.values())
    check(f"parameters: {count} " in text, f"{label}: paft inspect of the export:\n{text}")
    print(f"ok   {label:<28} {len(files)} file(s), {len(want)} tensors, {count} parameters")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paft", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpiexec", default=shutil.which("mpiexec") or shutil.which("mpirun"))
    args = ap.parse_args()
    work = args.workdir
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    for model_set, dtype, method in (("llama", "bf16", "ties"), ("qwen", "fp32", "dare_ties")):
        ini = os.path.join(args.inputs, model_set, "merge.ini")
        model_dir = os.path.join(args.inputs, model_set, "model")
        merged = os.path.join(work, f"{model_set}.h5")
        run([args.paft, "merge", ini, f"merge.out={merged}", f"merge.dtype={dtype}",
             f"merge.method={method}", "merge.density=0.5,0.5"])
        one = os.path.join(work, f"{model_set}-one")
        run([args.paft, "export", merged, one])
        check_export(args.paft, merged, model_dir, one, None, f"{model_set} ({dtype}) one file")
        limit = 20000
        sharded = os.path.join(work, f"{model_set}-sharded")
        run([args.paft, "export", merged, sharded, "max_shard_size=20KB"])
        check_export(args.paft, merged, model_dir, sharded, limit, f"{model_set} ({dtype}) sharded")
        if args.mpiexec:
            env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                       OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
            ranks = os.path.join(work, f"{model_set}-np3")
            run([args.mpiexec, "-np", "3", "--oversubscribe", args.paft, "export", merged, ranks,
                 "max_shard_size=20KB"], env=env)
            names = sorted(os.listdir(sharded))
            check(sorted(os.listdir(ranks)) == names, f"{model_set}: np 3 wrote other files")
            for name in names:
                with open(os.path.join(sharded, name), "rb") as a, open(os.path.join(ranks, name), "rb") as b:
                    check(a.read() == b.read(), f"{model_set}: {name} differs under 3 ranks")
            print(f"ok   {model_set} ({dtype}) 3 ranks: {len(names)} files identical to 1 rank's")
    # A merged file paft cannot read to the end (its last tensor compressed with a filter libhdf5
    # lacks): export fails mid-way, and OUTDIR must not exist, half-written, afterwards; the files
    # written so far stay in the staging directory OUTDIR.tmp.PID.
    broken = os.path.join(work, "broken.h5")
    shutil.copy(os.path.join(work, "llama.h5"), broken)
    with h5py.File(broken, "r+") as f:
        name = sorted(f["weights"].keys())[-1]
        ds = f["weights"][name]
        data, attrs = ds[()], dict(ds.attrs)
        del f["weights"][name]
        new = f["weights"].create_dataset(name, data=data, compression="lzf")
        for key, value in attrs.items():
            new.attrs[key] = value
    outdir = os.path.join(work, "broken-export")
    res = subprocess.run([args.paft, "export", broken, outdir, "max_shard_size=20KB"],
                         capture_output=True, text=True)
    check(res.returncode != 0 and "paft: error" in res.stderr,
          f"export of an unreadable tensor: exit {res.returncode}, stderr {res.stderr!r}")
    check(not os.path.exists(outdir), "a failed export left OUTDIR behind")
    staged = [e for e in os.listdir(work) if e.startswith("broken-export.tmp.")]
    check(len(staged) == 1 and os.listdir(os.path.join(work, staged[0])),
          f"a failed export: expected its staging directory with the shards written, found {staged}")
    print("ok   a failed export leaves no OUTDIR")
    print(f"test_merge_export: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
