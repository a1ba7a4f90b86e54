"""paft token data files (*.bin): the one Python writer, and a validating reader for tests.

The layout is documented byte by byte in docs/DATA_FORMAT.md and read by src/data/token_data.c.
In short, all integers little-endian:

    header   64 bytes   magic "PAFTTOK1", u32 version = 1, u32 kind (1 sft, 2 pref),
                        u64 records, u64 tokens, u32 vocab size, u32 flags = 0,
                        u32 payload CRC-32, 16 reserved zero bytes, u32 header CRC-32
    offsets  u64[S+1]   segment boundaries; S = records (sft) or 3 * records (pref)
    tokens   u32[T]
    mask     u8[T]      sft only: 1 = loss target

The writer streams: tokens and mask go to side files as records arrive (only the offsets, 8 bytes
a segment, stay in memory), and finish() assembles PATH.tmp.<pid> (seal()) and renames it to PATH
(commit()), so preparing a multi-gigabyte shard needs little memory and a reader never sees half a
file. Several files that belong together (train and val) are sealed first and committed after.

Needs numpy. Standard library otherwise.
"""

import os
import shutil
import struct
import zlib

import numpy as np

MAGIC = b"PAFTTOK1"
VERSION = 1
HEADER_BYTES = 64
KIND_SFT = 1
KIND_PREF = 2
KIND_NAMES = {KIND_SFT: "sft", KIND_PREF: "pref"}
KIND_FROM_NAME = {"sft": KIND_SFT, "pref": KIND_PREF}

# <  8s  I       I    Q        Q       I      I      I            16s       I
#    magic version kind records tokens vocab flags payload_crc reserved header_crc
_HEADER = struct.Struct("<8sIIQQIII16sI")
assert _HEADER.size == HEADER_BYTES

_COPY_CHUNK = 1 << 24


class TokenDataError(ValueError):
    """A token data file is malformed; the message names the file."""


def _kind_code(kind):
    if isinstance(kind, str):
        if kind not in KIND_FROM_NAME:
            raise ValueError(f"kind must be 'sft' or 'pref', not {kind!r}")
        return KIND_FROM_NAME[kind]
    if kind not in KIND_NAMES:
        raise ValueError(f"kind must be 1 (sft) or 2 (pref), not {kind!r}")
    return kind


def _pack_header(kind, num_records, num_tokens, vocab_size, payload_crc):
    head = _HEADER.pack(MAGIC, VERSION, kind, num_records, num_tokens, vocab_size, 0,
                        payload_crc, bytes(16), 0)
    return head[:60] + struct.pack("<I", zlib.crc32(head[:60]))


class TokenDataWriter:
    """Write one token data file.

        with TokenDataWriter("train.bin", "sft", vocab_size) as w:
            w.add_sft(tokens, mask)
        # finish() runs on leaving the block without an exception

    Every record is checked as it is added: ids in [0, vocab_size), mask values 0/1 and as long
    as the tokens, no empty segment. An exception inside the block discards the partial output.
    """

    def __init__(self, path, kind, vocab_size):
        self.path = str(path)
        self.kind = _kind_code(kind)
        self.vocab_size = int(vocab_size)
        if not 0 < self.vocab_size < 2**32:
            raise ValueError(f"{self.path}: vocab size must be in 1..2^32-1, not {vocab_size}")
        self.num_records = 0
        self.num_tokens = 0
        self._offsets = [0]
        self._tmp = f"{self.path}.tmp.{os.getpid()}"
        self._tokens_file = open(self._tmp + ".tokens", "wb")
        self._mask_file = open(self._tmp + ".mask", "wb") if self.kind == KIND_SFT else None
        self._sealed = False
        self._finished = False

    def _ids(self, ids, what):
        a = np.asarray(ids)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{self.path}: record {self.num_records} {what}: need a non-empty "
                             f"1-D list of token ids, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{self.path}: record {self.num_records} {what}: token ids must be "
                             f"integers, got {a.dtype}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{self.path}: record {self.num_records} {what}: token id {bad} is "
                             f"outside the vocabulary [0, {self.vocab_size})")
        return a.astype("<u4")

    def _segment(self, ids):
        self._tokens_file.write(ids.tobytes())
        self.num_tokens += ids.size
        self._offsets.append(self.num_tokens)

    def add_sft(self, tokens, mask):
        if self.kind != KIND_SFT:
            raise ValueError(f"{self.path}: add_sft on a {KIND_NAMES[self.kind]} file")
        ids = self._ids(tokens, "tokens")
        m = np.asarray(mask)
        if m.shape != ids.shape:
            raise ValueError(f"{self.path}: record {self.num_records}: mask has {m.size} entries "
                             f"for {ids.size} tokens")
        if m.size and (int(m.min()) < 0 or int(m.max()) > 1):
            raise ValueError(f"{self.path}: record {self.num_records}: mask values must be 0 or 1")
        self._segment(ids)
        self._mask_file.write(m.astype(np.uint8).tobytes())
        self.num_records += 1

    def add_pref(self, prompt, chosen, rejected):
        if self.kind != KIND_PREF:
            raise ValueError(f"{self.path}: add_pref on a {KIND_NAMES[self.kind]} file")
        segments = [self._ids(prompt, "prompt"), self._ids(chosen, "chosen"),
                    self._ids(rejected, "rejected")]
        for ids in segments:
            self._segment(ids)
        self.num_records += 1

    def finish(self):
        """seal() then commit(): PATH appears, complete, in one rename."""
        self.seal()
        self.commit()

    def seal(self):
        """Assemble the complete file under its temporary name (PATH.tmp.<pid>), not yet at PATH.

        A caller writing several files seals them all, then commits them all, so that a failure
        while assembling one leaves every PATH as it was (abort() removes the temporaries)."""
        if self._finished or self._sealed:
            return
        self._tokens_file.close()
        if self._mask_file:
            self._mask_file.close()
        offsets = np.asarray(self._offsets, dtype="<u8").tobytes()
        side_files = [self._tmp + ".tokens"] + ([self._tmp + ".mask"] if self._mask_file else [])
        crc = zlib.crc32(offsets)
        for name in side_files:
            with open(name, "rb") as f:
                while chunk := f.read(_COPY_CHUNK):
                    crc = zlib.crc32(chunk, crc)
        with open(self._tmp, "wb") as out:
            out.write(_pack_header(self.kind, self.num_records, self.num_tokens,
                                   self.vocab_size, crc))
            out.write(offsets)
            for name in side_files:
                with open(name, "rb") as f:
                    shutil.copyfileobj(f, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        for name in side_files:
            os.remove(name)
        self._sealed = True

    def commit(self):
        """Rename the sealed temporary to PATH (seal() first if needed)."""
        if self._finished:
            return
        self.seal()
        os.replace(self._tmp, self.path)
        self._finished = True

    def abort(self):
        """Drop everything written so far (no file appears at PATH; one already there stays)."""
        if self._finished:
            return
        for f in (self._tokens_file, self._mask_file):
            if f:
                f.close()
        for name in (self._tmp + ".tokens", self._tmp + ".mask", self._tmp):
            if os.path.exists(name):
                os.remove(name)
        self._finished = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.abort()
        return False


class TokenData:
    """A token data file opened read-only with numpy memmap and validated like the C reader.

    Attributes: path, kind ('sft' or 'pref'), vocab_size, num_records, num_tokens, offsets,
    tokens, mask (None for pref). Records: sft(i) -> (tokens, mask); pref(i) -> (prompt, chosen,
    rejected); records() iterates over them.
    """

    def __init__(self, path, expected_kind=None, model_vocab=0):
        self.path = path = str(path)
        size = os.path.getsize(path)
        fail = lambda msg: TokenDataError(f"{path}: {msg}")  # noqa: E731
        if size == 0:
            raise fail("file is empty")
        if size < HEADER_BYTES:
            raise fail(f"truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        (magic, version, kind, records, tokens, vocab, flags, payload_crc, reserved,
         header_crc) = _HEADER.unpack(head)
        if magic != MAGIC:
            raise fail(f"bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise fail(f"version {version} is not supported (this reader knows {VERSION})")
        if zlib.crc32(head[:60]) != header_crc:
            raise fail("header checksum mismatch")
        if kind not in KIND_NAMES:
            raise fail(f"unknown kind {kind}")
        if flags != 0 or reserved != bytes(16):
            raise fail("flags and reserved header bytes must be zero")
        if vocab == 0:
            raise fail("vocab size is 0")
        self.kind = KIND_NAMES[kind]
        if expected_kind is not None and self.kind != expected_kind:
            raise fail(f"holds {self.kind} data, expected {expected_kind}")
        if model_vocab and vocab > model_vocab:
            raise fail(f"tokenized for a vocabulary of {vocab} ids, the model has {model_vocab}")
        segments = records * (3 if kind == KIND_PREF else 1)
        per_token = 5 if kind == KIND_SFT else 4
        expected = HEADER_BYTES + 8 * (segments + 1) + per_token * tokens
        if expected != size:
            raise fail(f"file is {size} bytes, the header needs {expected}")
        self.vocab_size, self.num_records, self.num_tokens = vocab, records, tokens
        self.offsets = np.memmap(path, dtype="<u8", mode="r", offset=HEADER_BYTES,
                                 shape=(segments + 1,))
        tokens_at = HEADER_BYTES + 8 * (segments + 1)
        self.tokens = (np.memmap(path, dtype="<u4", mode="r", offset=tokens_at, shape=(tokens,))
                       if tokens else np.zeros(0, "<u4"))
        self.mask = None
        if kind == KIND_SFT:
            self.mask = (np.memmap(path, dtype=np.uint8, mode="r", offset=tokens_at + 4 * tokens,
                                   shape=(tokens,)) if tokens else np.zeros(0, np.uint8))
        off = np.asarray(self.offsets, dtype=np.int64)
        if off[0] != 0 or off[-1] != tokens:
            raise fail(f"offsets run from {off[0]} to {off[-1]}, expected 0 to {tokens}")
        if segments and np.any(np.diff(off) <= 0):
            raise fail("offsets must increase strictly (no empty segment)")
        if tokens and int(self.tokens.max()) >= vocab:
            raise fail(f"token id {int(self.tokens.max())} is not below the vocab size {vocab}")
        if self.mask is not None and tokens and int(self.mask.max()) > 1:
            raise fail("mask bytes must be 0 or 1")
        crc = 0
        with open(path, "rb") as f:
            f.seek(HEADER_BYTES)
            while chunk := f.read(_COPY_CHUNK):
                crc = zlib.crc32(chunk, crc)
        if crc != payload_crc:
            raise fail("data checksum mismatch")

    def _segment(self, s):
        return np.asarray(self.tokens[self.offsets[s]:self.offsets[s + 1]], dtype=np.int64)

    def sft(self, i):
        if self.kind != "sft" or not 0 <= i < self.num_records:
            raise IndexError(f"{self.path}: no sft record {i}")
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return (np.asarray(self.tokens[lo:hi], dtype=np.int64),
                np.asarray(self.mask[lo:hi], dtype=np.int64))

    def pref(self, i):
        if self.kind != "pref" or not 0 <= i < self.num_records:
            raise IndexError(f"{self.path}: no pref record {i}")
        return tuple(self._segment(3 * i + k) for k in range(3))

    def records(self):
        get = self.sft if self.kind == "sft" else self.pref
        for i in range(self.num_records):
            yield get(i)


def read_token_data(path, expected_kind=None, model_vocab=0):
    return TokenData(path, expected_kind, model_vocab)


# ---- the shuffle order, as src/data/token_data.c computes it (used to cross-check the C code) --

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def splitmix64_mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def permutation(n, seed, epoch):
    """The record order of epoch `epoch` for seed `seed` (docs/DATA_FORMAT.md, "Shuffling")."""
    order = list(range(n))
    state = (seed ^ splitmix64_mix((epoch + _GOLDEN) & _MASK64)) & _MASK64
    for i in range(n - 1, 0, -1):
        m = i + 1
        limit = _MASK64 - _MASK64 % m
        while True:
            state = (state + _GOLDEN) & _MASK64
            r = splitmix64_mix(state)
            if r < limit:
                break
        j = r % m
        order[i], order[j] = order[j], order[i]
    return order
