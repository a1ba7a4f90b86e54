/*
 * safetensors.h - Hugging Face safetensors files and checkpoints (a directory of shards).
 *
 * File layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
 * H, H bytes of JSON {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {str: str}}, then the data; offsets are relative to the end of the header.
 *
 * Opening validates everything before anything is trusted: the header length against the file
 * size, the JSON, every entry's dtype, shape and offsets (within the data, byte size equal to
 * numel * dtype size, no two tensors overlapping). Any problem is a fatal error that names the
 * file and the tensor. Reading converts BF16/F16/F32/F64 to `real`.
 */
#ifndef PAFT_SAFETENSORS_H
#define PAFT_SAFETENSORS_H

#include <stdint.h>

#include "util/common.h"

typedef enum {
    DTYPE_F32,
    DTYPE_F16,
    DTYPE_BF16,
    DTYPE_F64,
    DTYPE_I64,
    DTYPE_I32,
    DTYPE_I16,
    DTYPE_I8,
    DTYPE_U8,
    DTYPE_BOOL,
} Dtype;

const char *dtype_name(Dtype dtype); /* "F32", "BF16", ... as safetensors spells them */
int dtype_size(Dtype dtype);         /* bytes per element */
/* The dtype spelled `name` ("BF16", ...): 1 and *dtype set, or 0 when the name is unknown. */
int dtype_from_name(const char *name, Dtype *dtype);

#define TENSOR_MAX_DIMS 8

typedef struct {
    char *name;
    Dtype dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t numel;
    uint64_t file_offset; /* absolute offset of the first byte in the file */
    uint64_t nbytes;
    int shard; /* index of the file in its Checkpoint (0 for a single file) */
} TensorInfo;

/* A model checkpoint: one .safetensors file, or a directory with model.safetensors or the shards
 * named by model.safetensors.index.json. Tensors are kept sorted by name. */
typedef struct {
    char *path;          /* what was opened (file or directory) */
    int n_shards;
    char **shard_paths;
    int *shard_fds;
    int n_tensors;
    TensorInfo *tensors; /* sorted by name */
    /* the "__metadata__" entries of every file (a key of two shards: the first one's wins) */
    int n_metadata;
    char **metadata_keys, **metadata_values;
} Checkpoint;

/* Open and validate a .safetensors file or an HF model directory. Fatal error on any problem.
 * Beyond the per-tensor checks above, the tensors of a file must tile its data section exactly (no
 * gap, nothing after the last one: the reference implementation refuses those files too), and
 * for a sharded directory the index and the shards must agree: every index entry present in the
 * shard it names, every shard tensor listed, no tensor in two shards, shard names plain file
 * names inside the directory (no '/' or '..'). Only headers are read here; data is read with
 * pread on demand, so opening a 100 GB checkpoint costs a few MB. */
void checkpoint_open(Checkpoint *ckpt, const char *path);
void checkpoint_close(Checkpoint *ckpt);
/* The value of a "__metadata__" key, or NULL when no file of the checkpoint has it. */
const char *checkpoint_metadata(const Checkpoint *ckpt, const char *key);
/* The tensor of that name, or NULL. */
const TensorInfo *checkpoint_find(const Checkpoint *ckpt, const char *name);
/* The tensor of that name; fatal error "PATH: missing tensor NAME" when absent, and when its shape
 * differs from the expected one (ndim entries of shape; pass ndim = 0 to skip the shape check). */
const TensorInfo *checkpoint_require(const Checkpoint *ckpt, const char *name, int ndim,
                                     const int64_t *shape);
/* Read rows [row0, row0+nrows) x columns [col0, col0+ncols) of a tensor viewed as 2-D, shape[0]
 * rows of numel/shape[0] columns (a 1-D tensor of n elements is n rows of 1 column), into out
 * (nrows x ncols, row-major), converted to `real`. Each rank of a tensor-parallel group reads only
 * its block this way; rows outside the tensor are a fatal error. */
void checkpoint_read_block(const Checkpoint *ckpt, const TensorInfo *t, int64_t row0,
                           int64_t nrows, int64_t col0, int64_t ncols, real *out);
/* The 2-D view used by checkpoint_read_block: rows = shape[0], cols = the product of the other
 * extents (1 for a 1-D tensor; a 0-D scalar is 1 x 1). */
void tensor_as_2d(const TensorInfo *t, int64_t *rows, int64_t *cols);
/* "[4096, 128]" into buf. */
void tensor_shape_string(const TensorInfo *t, char *buf, int buflen);
/* Read the whole tensor (numel values) converted to `real`. */
void checkpoint_read(const Checkpoint *ckpt, const TensorInfo *t, real *out);
/* Read an integer tensor (I32 or I64, values within 32 bits) such as token ids. */
void checkpoint_read_int32(const Checkpoint *ckpt, const TensorInfo *t, int32_t *out);
/* The sum of numel over all tensors (the exact parameter count of a model checkpoint). */
int64_t checkpoint_parameter_count(const Checkpoint *ckpt);

/* ---- writing ---------------------------------------------------------------------------------
 * A tensor to write: `data` holds numel values of `real`, stored converted to `dtype` (F32, BF16
 * with round-to-nearest-even, or F16). */
typedef struct {
    const char *name;
    Dtype dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    const real *data;
} TensorToWrite;

/* Write a .safetensors file atomically (PATH.tmp.<pid>, fsync, rename). metadata_json is a JSON
 * object of string values for "__metadata__" (may be NULL). The header is padded with spaces to a
 * multiple of 8 bytes; tensors are packed back to back (the reference reader refuses gaps), wider
 * dtypes first and otherwise in the given order, so each tensor's data is aligned to its element
 * size, as the reference implementation lays them out. F64 may be written too. */
void safetensors_write(const char *path, const TensorToWrite *tensors, int n,
                       const char *metadata_json);

/* fp32 <-> bf16 / fp16, rounding to nearest even (fp16 incl. subnormals; too large -> inf; NaN
 * stays NaN). The widening conversions are exact. */
uint16_t fp32_to_bf16(float x);
float bf16_to_fp32(uint16_t x);
uint16_t fp32_to_fp16(float x);
float fp16_to_fp32(uint16_t x);

#endif /* PAFT_SAFETENSORS_H */
