/*
 * paft - one MPI program for PAFT: SFT (with an L1-sparse delta) in parallel with preference
 * alignment (DPO/ORPO), both with LoRA, then a collective merge into one parallel-HDF5 file.
 *
 *   paft CMD [args]      see `paft --help` and `paft CMD --help`
 *
 * main() only sets up MPI and hands the arguments to the subcommand (src/cli/).
 */
#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "io/h5file.h"
#include "util/common.h"

static void print_usage(FILE *out) {
    fprintf(out,
            "paft %s - parallel fine-tuning (SFT || DPO/ORPO with LoRA) and merging, with MPI\n\n"
            "usage: paft COMMAND [ARGS...]        (under mpirun -np N or srun; N = 1 works)\n\n"
            "commands:\n",
            PAFT_VERSION);
    for (const Command *c = paft_commands(); c->name; c++) fprintf(out, "  %-8s %s\n", c->name, c->summary);
    fprintf(out, "\n`paft COMMAND --help` describes a command; `paft --version` prints the version.\n"
                 "Documentation: README.md, docs/.\n");
}

int main(int argc, char **argv) {
    /* No HDF5 clean-up at exit(): a fatal error (PAFT_FATAL exits) may leave a file open for
     * writing, and closing it from the exit handler after a failed write (a full disk) crashes
     * inside HDF5; the .tmp file it leaves is not used anyway. Normal runs close every file. */
    CHECK_H5(H5dont_atexit());
    h5_prepare_mpi_io(); /* before MPI_Init: long file paths under Open MPI */
    CHECK_MPI(MPI_Init(&argc, &argv));
    int status = 0;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        if (paft_world_rank() == 0) print_usage(stdout);
        status = argc < 2 ? 2 : 0;
    } else if (strcmp(argv[1], "--version") == 0) {
        paft_log("paft %s\n", PAFT_VERSION);
    } else {
        const Command *command = NULL;
        for (const Command *c = paft_commands(); c->name; c++)
            if (strcmp(c->name, argv[1]) == 0) command = c;
        if (!command) {
            if (paft_world_rank() == 0) print_usage(stderr);
            PAFT_FATAL("unknown command '%s' (see the list above)", argv[1]);
        }
        if (cli_wants_help(argc - 1, argv + 1)) {
            paft_log("%s", command->usage);
        } else {
            status = command->run(argc - 1, argv + 1);
        }
    }
    CHECK_MPI(MPI_Finalize());
    return status;
}
