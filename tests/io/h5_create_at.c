/*
 * h5_create_at.c - create (and finish) an empty parallel-HDF5 file at PATH through h5file.c, as
 * every writer of paft does: for the test that a file that cannot be created is named with the
 * reason (its directory gone, say), without HDF5's own error stack.
 *
 * usage: h5_create_at PATH
 */
#include <mpi.h>
#include <stdio.h>

#include "io/h5file.h"
#include "util/common.h"

int main(int argc, char **argv) {
    h5_prepare_mpi_io(); /* as paft's main() */
    CHECK_MPI(MPI_Init(&argc, &argv));
    if (argc != 2) PAFT_FATAL("usage: h5_create_at PATH");
    H5File f;
    h5_create(&f, argv[1], MPI_COMM_WORLD);
    h5_finish(&f);
    printf("h5_create_at: wrote %s\n", argv[1]);
    CHECK_MPI(MPI_Finalize());
    return 0;
}
