/*
 * device_comm.h - the collectives of the CUDA backend: sums (and a max) over a group of ranks of
 * buffers that live on the GPU, with one of two implementations chosen once per communicator.
 *
 *   NCCL  when every rank of the group has its own GPU. NCCL reduces device memory directly over
 *         NVLink / PCIe / InfiniBand; it refuses two ranks on one GPU ("Duplicate GPU detected").
 *   MPI   when ranks share a GPU (tests, small machines) or paft was built without NCCL: each
 *         buffer is copied to a pinned host buffer, reduced with MPI_Allreduce, copied back.
 *
 * MPI alone sets things up (which GPU a rank uses, the NCCL unique id); the tensors then move by
 * NCCL where it can. One DeviceComm per group communicator (the TP group, the DP group), created
 * collectively after cuda_select_device. This is the device-side twin of src/parallel/collectives.h
 * (host buffers, MPI only). Every reduction here is in place and synchronous: it returns when the
 * result is in the buffer, so callers never have to think about streams.
 */
#ifndef PAFT_DEVICE_COMM_H
#define PAFT_DEVICE_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct DeviceComm DeviceComm;

/* AUTO lets device_comm_create pick (NCCL when it can, else MPI); NCCL and MPI force one, so a
 * configuration that cannot use NCCL fails loudly instead of silently running slower. */
typedef enum { DEVICE_COMM_AUTO, DEVICE_COMM_NCCL, DEVICE_COMM_MPI } DeviceCommKind;

/* parse "auto" | "nccl" | "mpi" (exactly, lower case); -1 for anything else, NULL included */
int device_comm_kind_from_name(const char *name);

/* Bind this process to a GPU: its rank among the ranks of `world` on the same node
 * (MPI_Comm_split_type MPI_COMM_TYPE_SHARED) modulo the node's device count; cudaSetDevice; returns
 * the device index. Collective over world. PAFT_FATAL (naming the rank and the node) when there is
 * no GPU. Why local rank: mpirun and srun number ranks node by node, so the local rank spreads the
 * ranks of a node over its GPUs; with more ranks than GPUs, ranks share GPUs (round robin) and the
 * collectives fall back to MPI. If CUDA_VISIBLE_DEVICES leaves one device per rank (Slurm
 * --gpus-per-task=1), the count is 1 and local rank % 1 = 0 is right too. Call it before any other
 * CUDA call of the process. */
int cuda_select_device(MPI_Comm world);

/* One GPU per rank by node-local rank, without a collective where it can: the launchers say which
 * rank of the node a process is (Open MPI's mpirun, Slurm's srun, MPICH's Hydra, Cray PALS), so a
 * model can go onto the GPU on some ranks only (one group evaluating, another not). Only under an
 * unknown launcher does it fall back to cuda_select_device's collective split over
 * MPI_COMM_WORLD, which every rank must then reach. PAFT_FATAL when no GPU is visible. Used by the
 * device model and the merge stage (model.device = cuda). */
void cuda_select_local_device(void);

/* Pure, testable without a GPU: n ranks, rank i described by a node id and a device id (hashes of
 * the host name and of the GPU's PCI bus id); 1 when any two ranks share (node, device), 0
 * otherwise (n <= 1 included). NCCL needs 0. */
int device_ids_shared(const uint64_t *node_ids, const uint64_t *device_ids, int n);

/* Collective over comm (every rank calls it, with the same `want`), after cuda_select_device.
 * AUTO: NCCL when paft was built with NCCL and no two ranks of comm share a GPU (decided from the
 * gathered host name hash + cudaDeviceGetPCIBusId hash, so the decision is identical on every
 * rank), else MPI. NCCL requested but impossible (built without NCCL, or ranks share a GPU) ->
 * PAFT_FATAL with the reason. A communicator of size 1 (MPI_COMM_SELF, a TP group of one rank)
 * gives a trivial DeviceComm whose reductions are no-ops: no NCCL communicator, no copies. For
 * NCCL, rank 0 makes the ncclUniqueId and MPI_Bcasts it. The MPI path works on a duplicate of
 * comm, so its messages never mix with the caller's. Free it before MPI_Finalize. */
DeviceComm *device_comm_create(MPI_Comm comm, DeviceCommKind want);
void device_comm_free(DeviceComm *dc); /* NULL is fine */

/* "nccl", "mpi" or "none" (size 1): for logs and tests. */
const char *device_comm_name(const DeviceComm *dc);

/* In-place sums over the group of DEVICE buffers, on the default (legacy) stream, returning when
 * the result is in buf: earlier work on the default stream is finished first, and callers may read
 * buf or launch kernels on the default stream right away.
 * NCCL: ncclAllReduce with ncclBfloat16 / ncclFloat32 / ncclFloat64 (NCCL's bf16 ring sums round
 * to bf16 between hops).
 * MPI: staged through a pinned host buffer kept in the DeviceComm (grown as needed up to a fixed
 * chunk, so a huge n never needs a huge host buffer and no MPI count exceeds INT_MAX); bf16 is
 * converted to fp32 on the host, summed by MPI_Allreduce in fp32 and rounded back to bf16 (to
 * nearest even) once. */
void device_allreduce_sum_bf16(DeviceComm *dc, void *buf /* floatX */, size_t n);
void device_allreduce_sum_f32(DeviceComm *dc, float *buf, size_t n);
void device_allreduce_sum_f64(DeviceComm *dc, double *buf, size_t n);
/* In-place max (the vocab-parallel log-probability's row max). */
void device_allreduce_max_f32(DeviceComm *dc, float *buf, size_t n);

/* Host conversions between bf16 bit patterns and fp32, used by the MPI path (and its test).
 * bf16 -> fp32 is exact. fp32 -> bf16 rounds to nearest, ties to even (as __float2bfloat16 does),
 * overflows to +-inf, keeps inf as inf and NaN as a (quiet) NaN of the same sign. */
void bf16_to_float_host(float *out, const uint16_t *in, size_t n);
void float_to_bf16_host(uint16_t *out, const float *in, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* PAFT_DEVICE_COMM_H */
