"""stage_files.py - file readers for the merge-stage tests, independent of paft's C code.

- read_safetensors(path): a small pure-python safetensors reader (header JSON + numpy), returning
  {name: float32 array} (BF16 widened exactly) and, for BF16 tensors, the raw uint16 bits;
- read_model_dir(path): the same over model.safetensors or a sharded index;
- bf16 helpers: round-to-nearest-even fp32 -> bf16 bits, and bits -> fp32;
- bf16_bits(dataset): the stored bits of an h5py bf16 dataset, read without any conversion.

Needs numpy (and h5py for bf16_bits).
"""
import json
import os
import struct

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype("<u2"), "F16": np.dtype("<f2"),
          "F64": np.dtype("<f8")}


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16(x):
    """Round to nearest, ties to even (NaN kept a quiet NaN): numpy's own, not paft's."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = ((u[nan] >> np.uint64(16)) | np.uint64(0x40)).astype(np.uint16)
    return out


def read_safetensors(path):
    """Returns (header, values, bits): values[name] float32 (or wider) arrays at their shapes,
    bits[name] the uint16 patterns of BF16 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    values, bits = {}, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dt = DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        raw = np.frombuffer(data[base + begin:base + end], dtype=dt).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            bits[name] = raw.copy()
            values[name] = bf16_to_f32(raw)
        else:
            values[name] = raw.astype(np.float32) if dt.itemsize < 4 else raw.copy()
    return header, values, bits


def read_model_dir(path):
    """(values, bits, files) of a model directory: model.safetensors or the index's shards."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    values, bits = {}, {}
    for name in files:
        _, v, b = read_safetensors(os.path.join(path, name))
        values.update(v)
        bits.update(b)
    return values, bits, files


def bf16_bits(ds):
    """The uint16 bit patterns an h5py dataset of paft's bf16 type stores: read with the file's
    own type as the memory type, so HDF5 converts nothing."""
    import h5py
    out = np.empty(ds.shape, dtype=np.uint16)
    ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, out, mtype=ds.id.get_type())
    return out


def is_paft_bf16(ds):
    """Does the dataset have exactly paft's bf16 type (sign bit 15, exponent 7-14 bias 127,
    mantissa 0-6)?"""
    t = ds.id.get_type()
    return (t.get_class() == 1 and t.get_size() == 2 and t.get_fields() == (15, 7, 8, 0, 7)
            and t.get_ebias() == 127)
