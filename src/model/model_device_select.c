/*
 * model_device_select.c - choosing a device backend by name, and the stand-in for the CUDA
 * backend in builds without it (so that asking for it is a clear error, not a link failure).
 */
#include <mpi.h>
#include <string.h>

#include "merge/merge_kernels.h"
#include "model/model_device.h"

#ifndef PAFT_WITH_CUDA
static ModelDevice *cuda_not_built(struct Model *m, const DeviceOptions *opt) {
    (void)m;
    (void)opt;
    PAFT_FATAL("model.device = cuda, but this paft was built without the CUDA backend (no nvcc "
               "when it was configured, or -DPAFT_CUDA=OFF; configure with -DPAFT_CUDA=ON on a "
               "machine with the CUDA toolkit)");
    return NULL;
}
static int no_devices(void) { return 0; }
const DeviceBackend device_backend_cuda = {.name = "cuda", .available = 0,
                                           .device_count = no_devices, .create = cuda_not_built};

static MergeKernelState *merge_cuda_not_built(void) {
    PAFT_FATAL("merge.device = cuda, but this paft was built without the CUDA backend "
               "(configure with -DPAFT_CUDA=ON on a machine with the CUDA toolkit, or merge with "
               "merge.device = cpu or auto: the merged file is the same)");
    return NULL;
}
const MergeKernels merge_kernels_cuda = {.name = "cuda", .available = 0,
                                         .device_count = no_devices,
                                         .create = merge_cuda_not_built};
#endif

const DeviceBackend *device_backend_by_name(const char *name, const char *origin) {
    if (strcmp(name, "cpu") == 0) return NULL;
    if (strcmp(name, "cuda") == 0) return &device_backend_cuda;
    if (strcmp(name, "emulate") == 0) return &device_backend_emulate;
    PAFT_FATAL("%s: device '%s' is not cpu, cuda or emulate", origin, name);
    return NULL;
}

/* Where the backend is compiled in but this process sees no device, say so by host: before the
 * rank-0 checks existed, a GPU job on a node without one trained nothing and failed in the model's
 * set-up, one message per rank; the merge's only after training. */
static void require_devices(const char *origin, const char *name, int count) {
    if (count > 0) return;
    char host[MPI_MAX_PROCESSOR_NAME] = "";
    int len = 0;
    CHECK_MPI(MPI_Get_processor_name(host, &len));
    PAFT_FATAL("%s = %s, but no CUDA device is visible on %s (check the job's GPU request and "
               "CUDA_VISIBLE_DEVICES)", origin, name, host);
}

int device_backend_check_built(const char *name, const char *origin) {
    const DeviceBackend *b = device_backend_by_name(name, origin);
    if (!b) return 0;
    if (!b->available) b->create(NULL, NULL); /* the stand-in ends the job saying how to build it */
    return b->device_count();
}

void device_backend_check_usable(const char *name, const char *origin) {
    if (device_backend_by_name(name, origin))
        require_devices(origin, name, device_backend_check_built(name, origin));
}

int merge_kernels_check_built(const char *name) {
    if (strcmp(name, "cuda") != 0) return 0; /* cpu; auto falls back to the CPU by itself */
    if (!merge_kernels_cuda.available) merge_kernels_cuda.create(); /* ends the job, saying why */
    return merge_kernels_cuda.device_count();
}

void merge_kernels_check_usable(const char *name, const char *origin) {
    if (strcmp(name, "cuda") == 0) require_devices(origin, name, merge_kernels_check_built(name));
}
