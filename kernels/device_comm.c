/*
 * device_comm.c - the CUDA backend's collectives (device_comm.h): NCCL when every rank of a group
 * has its own GPU, MPI through pinned host memory otherwise. Plain C: no kernels here, only CUDA
 * runtime, NCCL and MPI calls, each checked (CHECK_CUDA, CHECK_NCCL, CHECK_MPI: call, file, line,
 * rank).
 */
#include "device_comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "ops_cuda.h"
#include "util/common.h"

#ifdef PAFT_HAVE_NCCL
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 13, 0)
#error "paft needs NCCL 2.13 or newer (ncclBfloat16, ncclGetLastError); -DPAFT_NCCL=OFF builds MPI only"
#endif
#endif

/* Every transfer and every NCCL call goes on the legacy default stream: this file is compiled by
 * the C compiler without CUDA_API_PER_THREAD_DEFAULT_STREAM, and ops_cuda.cu launches its kernels
 * there (nvcc's default), so the reductions are ordered after the kernels that made the data. */
static const cudaStream_t default_stream = 0;

/* The MPI path moves at most this many elements per round trip: 4 Mi elements, at most 32 MiB of
 * pinned memory (fp64; bf16 needs 2 + 4 bytes per element). Big enough that the copies and the
 * all-reduce run at full speed, small enough to keep pinned memory modest, and far below INT_MAX
 * (MPI counts are int). */
#define STAGING_CHUNK ((size_t)1 << 22)

typedef enum { COMM_NONE, COMM_NCCL, COMM_MPI } CommImpl;

struct DeviceComm {
    CommImpl impl;
    int rank, size;
    MPI_Comm mpi;         /* MPI path: a duplicate of the group communicator; else MPI_COMM_NULL */
#ifdef PAFT_HAVE_NCCL
    ncclComm_t nccl;      /* NCCL path */
#endif
    void *staging;        /* MPI path: pinned host buffer (cudaMallocHost), grown as needed */
    size_t staging_bytes;
};

/* ---- names and pure helpers ---------------------------------------------------------------- */

int device_comm_kind_from_name(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "auto") == 0) return DEVICE_COMM_AUTO;
    if (strcmp(name, "nccl") == 0) return DEVICE_COMM_NCCL;
    if (strcmp(name, "mpi") == 0) return DEVICE_COMM_MPI;
    return -1;
}

const char *device_comm_name(const DeviceComm *dc) {
    switch (dc->impl) {
    case COMM_NCCL: return "nccl";
    case COMM_MPI: return "mpi";
    case COMM_NONE: break;
    }
    return "none";
}

/* The first pair of ranks (a < b) that share (node, device); 0 when there is none. Quadratic, but
 * n is a group size (at most a few thousand ranks) and this runs once per communicator. */
static int find_shared_pair(const uint64_t *node_ids, const uint64_t *device_ids, int n, int *a,
                            int *b) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (node_ids[i] == node_ids[j] && device_ids[i] == device_ids[j]) {
                *a = i;
                *b = j;
                return 1;
            }
    return 0;
}

int device_ids_shared(const uint64_t *node_ids, const uint64_t *device_ids, int n) {
    int a, b;
    return find_shared_pair(node_ids, device_ids, n, &a, &b);
}

void bf16_to_float_host(float *out, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)in[i] << 16; /* bf16 is the top half of an fp32: exact */
        memcpy(&out[i], &bits, sizeof bits);
    }
}

void float_to_bf16_host(uint16_t *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &in[i], sizeof bits);
        if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
            /* NaN: truncating could clear every mantissa bit left (giving inf); set the quiet bit */
            out[i] = (uint16_t)((bits >> 16) | 0x0040u);
        } else {
            /* Round to nearest, ties to even: add just under half an ulp of bf16, plus one when the
             * kept part is odd, and truncate. A carry into the exponent is right (the next binade,
             * or inf above the largest bf16); inf itself has a zero low half and stays inf. */
            bits += 0x7FFFu + ((bits >> 16) & 1u);
            out[i] = (uint16_t)(bits >> 16);
        }
    }
}

/* ---- device selection ------------------------------------------------------------------------ */

int cuda_select_device(MPI_Comm world) {
    int world_rank;
    CHECK_MPI(MPI_Comm_rank(world, &world_rank));
    MPI_Comm node;
    CHECK_MPI(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node));
    int local_rank, local_size;
    CHECK_MPI(MPI_Comm_rank(node, &local_rank));
    CHECK_MPI(MPI_Comm_size(node, &local_size));
    CHECK_MPI(MPI_Comm_free(&node));

    char host[MPI_MAX_PROCESSOR_NAME] = "";
    int host_len = 0;
    CHECK_MPI(MPI_Get_processor_name(host, &host_len));
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count == 0)
        PAFT_FATAL("no CUDA device for rank %d (local rank %d of %d on %s): %s; the CUDA backend "
                   "needs a GPU per node (check the job's GPU request and CUDA_VISIBLE_DEVICES)",
                   world_rank, local_rank, local_size, host,
                   rc != cudaSuccess ? cudaGetErrorString(rc) : "cudaGetDeviceCount found 0");
    const int device = local_rank % count;
    CHECK_CUDA(cudaSetDevice(device));
    return device;
}

void cuda_select_local_device(void) {
    static const char *const local_rank_vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID",
                                                  "MPI_LOCALRANKID", "PALS_LOCAL_RANKID"};
    if (cuda_device_count() == 0)
        PAFT_FATAL("device cuda (model.device or merge.device), but no CUDA device is visible to "
                   "this process (check CUDA_VISIBLE_DEVICES and the job's GPU request, e.g. "
                   "--gpus-per-task=1)");
    int world_size = 1;
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
    int local_rank = world_size == 1 ? 0 : -1;
    for (size_t i = 0; i < sizeof local_rank_vars / sizeof local_rank_vars[0] && local_rank < 0; i++) {
        const char *v = getenv(local_rank_vars[i]);
        if (v && *v) local_rank = atoi(v);
    }
    if (local_rank < 0) {
        cuda_select_device(MPI_COMM_WORLD);
        return;
    }
    CHECK_CUDA(cudaSetDevice(local_rank % cuda_device_count()));
}

/* ---- creation -------------------------------------------------------------------------------- */

#ifdef PAFT_HAVE_NCCL
/* FNV-1a, 64 bits: a stable hash of a name (host names and PCI bus ids are short). Two different
 * GPUs hashing alike would only make AUTO choose MPI, never make NCCL fail. */
static uint64_t hash_string(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Does any GPU serve two ranks of comm? Collective: each rank's (host name hash, PCI bus id hash of
 * its current device) is gathered over comm, so every rank gets the same answer. When it does,
 * `why` names the first such pair, for the error message of a forced NCCL. */
static int group_shares_a_gpu(MPI_Comm comm, int size, char *why, size_t why_cap) {
    char host[MPI_MAX_PROCESSOR_NAME + 1] = "", bus_id[64] = "";
    int host_len = 0;
    CHECK_MPI(MPI_Get_processor_name(host, &host_len));
    int device;
    CHECK_CUDA(cudaGetDevice(&device));
    CHECK_CUDA(cudaDeviceGetPCIBusId(bus_id, (int)sizeof bus_id, device));
    /* The PCI bus id, not the device index: two ranks with different CUDA_VISIBLE_DEVICES both see
     * "device 0", yet may sit on different GPUs. It is also what NCCL compares. */
    uint64_t mine[2] = {hash_string(host), hash_string(bus_id)};
    uint64_t *all = paft_malloc(2 * (size_t)size * sizeof(uint64_t));
    uint64_t *node_ids = paft_malloc((size_t)size * sizeof(uint64_t));
    uint64_t *device_ids = paft_malloc((size_t)size * sizeof(uint64_t));
    CHECK_MPI(MPI_Allgather(mine, 2, MPI_UINT64_T, all, 2, MPI_UINT64_T, comm));
    for (int i = 0; i < size; i++) {
        node_ids[i] = all[2 * i];
        device_ids[i] = all[2 * i + 1];
    }
    int a = 0, b = 0;
    const int shared = find_shared_pair(node_ids, device_ids, size, &a, &b);
    if (shared)
        snprintf(why, why_cap, "ranks %d and %d of this %d-rank group share one GPU (this rank: %s, "
                 "GPU %s)", a, b, size, host, bus_id);
    free(all);
    free(node_ids);
    free(device_ids);
    return shared;
}

static void nccl_init(DeviceComm *dc, MPI_Comm comm) {
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (dc->rank == 0) CHECK_NCCL(ncclGetUniqueId(&id));
    CHECK_MPI(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, comm));
    /* Blocks until every rank of comm has joined: all ranks create their communicators in the
     * same order (TP group, then DP group), as MPI requires of its own collectives anyway. */
    CHECK_NCCL(ncclCommInitRank(&dc->nccl, dc->size, id, dc->rank));
}
#endif

DeviceComm *device_comm_create(MPI_Comm comm, DeviceCommKind want) {
    if (want != DEVICE_COMM_AUTO && want != DEVICE_COMM_NCCL && want != DEVICE_COMM_MPI)
        PAFT_FATAL("device_comm_create: unknown collectives kind %d (expected auto, nccl or mpi)",
                   (int)want);
#ifndef PAFT_HAVE_NCCL
    /* A configuration error whatever the group size: caught on one GPU, not first at scale. */
    if (want == DEVICE_COMM_NCCL)
        PAFT_FATAL("collectives: NCCL requested, but paft was built without NCCL (CMake found no "
                   "nccl.h / libnccl: set NCCL_ROOT and reconfigure, or ask for auto or mpi)");
#endif
    DeviceComm *dc = paft_calloc(1, sizeof *dc);
    dc->mpi = MPI_COMM_NULL;
    CHECK_MPI(MPI_Comm_rank(comm, &dc->rank));
    CHECK_MPI(MPI_Comm_size(comm, &dc->size));
    if (dc->size == 1) {
        dc->impl = COMM_NONE; /* a sum over one rank is the identity: nothing to set up */
        return dc;
    }

    dc->impl = COMM_MPI;
#ifdef PAFT_HAVE_NCCL
    if (want != DEVICE_COMM_MPI) {
        char why[512] = "";
        const int shared = group_shares_a_gpu(comm, dc->size, why, sizeof why);
        /* Every rank has the same answer, so every rank takes the same branch (and reports the
         * same error): no rank can wait in an NCCL init that the others skip. */
        if (want == DEVICE_COMM_NCCL && shared)
            PAFT_FATAL("collectives: NCCL requested, but %s, and NCCL refuses two ranks on one GPU: "
                       "give every rank its own GPU (e.g. srun --gpus-per-task=1) or ask for auto "
                       "or mpi", why);
        if (!shared) dc->impl = COMM_NCCL;
    }
    if (dc->impl == COMM_NCCL) {
        nccl_init(dc, comm);
        return dc;
    }
#endif
    /* The MPI path: its own duplicate, so its all-reduces never match the caller's messages. */
    CHECK_MPI(MPI_Comm_dup(comm, &dc->mpi));
    return dc;
}

void device_comm_free(DeviceComm *dc) {
    if (!dc) return;
#ifdef PAFT_HAVE_NCCL
    if (dc->impl == COMM_NCCL) CHECK_NCCL(ncclCommDestroy(dc->nccl));
#endif
    if (dc->mpi != MPI_COMM_NULL) CHECK_MPI(MPI_Comm_free(&dc->mpi));
    if (dc->staging) CHECK_CUDA(cudaFreeHost(dc->staging));
    free(dc);
}

/* ---- the reductions -------------------------------------------------------------------------- */

typedef enum { ELEM_BF16, ELEM_F32, ELEM_F64 } ElemType;

static size_t elem_bytes(ElemType type) {
    return type == ELEM_BF16 ? sizeof(uint16_t) : type == ELEM_F32 ? sizeof(float) : sizeof(double);
}

/* bf16 chunks are converted into an fp32 area placed after the bf16 bits, 16-byte aligned. */
static size_t f32_area_offset(size_t chunk) { return (chunk * sizeof(uint16_t) + 15) & ~(size_t)15; }

static void ensure_staging(DeviceComm *dc, size_t bytes) {
    if (dc->staging_bytes >= bytes) return;
    if (dc->staging) CHECK_CUDA(cudaFreeHost(dc->staging));
    dc->staging = NULL;
    dc->staging_bytes = 0;
    /* Pinned: the copies run at full PCIe speed, and the host-to-device copy is complete when
     * cudaMemcpyAsync + cudaStreamSynchronize return, so the buffer can be reused at once. */
    CHECK_CUDA(cudaMallocHost(&dc->staging, bytes));
    dc->staging_bytes = bytes;
}

/* The MPI path: device -> pinned host, MPI_Allreduce (fp32 for bf16), host -> device, per chunk. */
static void mpi_allreduce_staged(DeviceComm *dc, void *buf, size_t n, ElemType type, MPI_Op op) {
    const size_t esize = elem_bytes(type);
    const size_t chunk = PAFT_MIN(n, STAGING_CHUNK);
    const size_t f32_offset = f32_area_offset(chunk);
    ensure_staging(dc, type == ELEM_BF16 ? f32_offset + chunk * sizeof(float) : chunk * esize);
    char *host = dc->staging;
    for (size_t start = 0; start < n; start += chunk) {
        const size_t count = PAFT_MIN(chunk, n - start);
        char *device = (char *)buf + start * esize;
        CHECK_CUDA(cudaMemcpyAsync(host, device, count * esize, cudaMemcpyDeviceToHost,
                                   default_stream));
        CHECK_CUDA(cudaStreamSynchronize(default_stream));
        if (type == ELEM_BF16) {
            /* MPI has no bf16 type, and summing in fp32 then rounding once is the more accurate */
            float *values = (float *)(host + f32_offset);
            bf16_to_float_host(values, (const uint16_t *)host, count);
            CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, values, (int)count, MPI_FLOAT, op, dc->mpi));
            float_to_bf16_host((uint16_t *)host, values, count);
        } else {
            CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, host, (int)count,
                                    type == ELEM_F32 ? MPI_FLOAT : MPI_DOUBLE, op, dc->mpi));
        }
        CHECK_CUDA(cudaMemcpyAsync(device, host, count * esize, cudaMemcpyHostToDevice,
                                   default_stream));
        CHECK_CUDA(cudaStreamSynchronize(default_stream));
    }
}

#ifdef PAFT_HAVE_NCCL
static void nccl_allreduce(DeviceComm *dc, void *buf, size_t n, ElemType type, ncclRedOp_t op) {
    const ncclDataType_t nccl_type =
        type == ELEM_BF16 ? ncclBfloat16 : type == ELEM_F32 ? ncclFloat32 : ncclFloat64;
    /* NCCL counts are size_t: no chunking. Enqueued on the default stream, after the kernels that
     * produced buf; the synchronise makes the call blocking like the MPI path. */
    CHECK_NCCL(ncclAllReduce(buf, buf, n, nccl_type, op, dc->nccl, default_stream));
    CHECK_CUDA(cudaStreamSynchronize(default_stream));
}
#endif

typedef enum { REDUCE_SUM, REDUCE_MAX } ReduceOp;

static void device_allreduce(DeviceComm *dc, void *buf, size_t n, ElemType type, ReduceOp op) {
    if (n == 0 || dc->impl == COMM_NONE) return;
    if (dc->impl == COMM_MPI) {
        mpi_allreduce_staged(dc, buf, n, type, op == REDUCE_SUM ? MPI_SUM : MPI_MAX);
        return;
    }
#ifdef PAFT_HAVE_NCCL
    nccl_allreduce(dc, buf, n, type, op == REDUCE_SUM ? ncclSum : ncclMax);
#endif
}

void device_allreduce_sum_bf16(DeviceComm *dc, void *buf, size_t n) {
    device_allreduce(dc, buf, n, ELEM_BF16, REDUCE_SUM);
}

void device_allreduce_sum_f32(DeviceComm *dc, float *buf, size_t n) {
    device_allreduce(dc, buf, n, ELEM_F32, REDUCE_SUM);
}

void device_allreduce_sum_f64(DeviceComm *dc, double *buf, size_t n) {
    device_allreduce(dc, buf, n, ELEM_F64, REDUCE_SUM);
}

void device_allreduce_max_f32(DeviceComm *dc, float *buf, size_t n) {
    device_allreduce(dc, buf, n, ELEM_F32, REDUCE_MAX);
}
